"""nnU-Net's normalisation schemes, transposition and crop to non-zero, against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from focusseg.errors import ImageError
from focusseg.nnunet.preprocess import (
    crop_to_nonzero,
    normalize,
    normalize_channel,
    transpose_backward,
    transpose_forward,
)

CT = {"mean": 100.0, "std": 50.0, "percentile_00_5": -100.0, "percentile_99_5": 300.0}


def test_ct_normalisation_clips_then_standardises():
    image = np.array([-1000.0, -100.0, 100.0, 200.0, 300.0, 3000.0])
    before = image.copy()
    got = normalize_channel(image, "CTNormalization", properties=CT)
    # clip to [-100, 300], minus 100, divided by 50
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [-4.0, -4.0, 0.0, 2.0, 4.0, 4.0])
    np.testing.assert_array_equal(image, before)  # the input is never modified


def test_zscore_without_mask():
    got = normalize_channel(np.array([1.0, 2.0, 3.0, 4.0]), "ZScoreNormalization")
    std = np.sqrt(1.25)  # population std of 1..4 around 2.5
    np.testing.assert_allclose(got, [(-1.5) / std, -0.5 / std, 0.5 / std, 1.5 / std], rtol=1e-6)


def test_zscore_with_mask_leaves_the_outside_alone():
    image = np.array([0.0, 2.0, 4.0, 0.0])
    seg = np.array([-1, 0, 0, -1], dtype=np.int8)
    got = normalize_channel(image, "ZScoreNormalization", use_mask=True, seg=seg)
    np.testing.assert_allclose(got, [0.0, -1.0, 1.0, 0.0])  # inside: mean 3, std 1


def test_constant_image_does_not_divide_by_zero():
    got = normalize_channel(np.full(5, 7.0), "ZScoreNormalization")
    np.testing.assert_array_equal(got, np.zeros(5, np.float32))


def test_rescale_and_rgb_and_none():
    np.testing.assert_allclose(normalize_channel(np.array([2.0, 4.0, 6.0]), "RescaleTo01Normalization"),
                               [0.0, 0.5, 1.0])
    np.testing.assert_allclose(normalize_channel(np.array([0.0, 51.0, 255.0]), "RGBTo01Normalization"),
                               [0.0, 0.2, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(normalize_channel(np.array([-3, 5]), "NoNormalization"), [-3.0, 5.0])
    with pytest.raises(ImageError):
        normalize_channel(np.array([-1.0, 300.0]), "RGBTo01Normalization")


def test_nan_and_unknown_schemes_are_refused():
    with pytest.raises(ImageError, match="NaN"):
        normalize_channel(np.array([1.0, np.nan]), "NoNormalization", source="img.nii.gz")
    with pytest.raises(ImageError, match="Bogus"):
        normalize_channel(np.array([1.0]), "Bogus")
    with pytest.raises(ImageError, match="mask"):
        normalize_channel(np.array([1.0]), "ZScoreNormalization", use_mask=True)


def test_normalize_per_channel_and_channel_count():
    data = np.stack([np.array([[-1000.0, 300.0]]), np.array([[1.0, 3.0]])])
    got = normalize(data, ["CTNormalization", "ZScoreNormalization"], [False, False], {"0": CT})
    np.testing.assert_allclose(got[0], [[-4.0, 4.0]])
    np.testing.assert_allclose(got[1], [[-1.0, 1.0]])
    with pytest.raises(ImageError, match="channel"):
        normalize(data[:1], ["CTNormalization", "ZScoreNormalization"], [False, False], {"0": CT})


def test_transpose_round_trip():
    data = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    fwd = transpose_forward(data, [2, 0, 1])
    assert fwd.shape == (2, 5, 3, 4)
    assert fwd[1, 4, 2, 3] == data[1, 2, 3, 4]
    np.testing.assert_array_equal(transpose_backward(fwd, [1, 2, 0]), data)


def test_crop_to_nonzero_box_and_mask():
    data = np.zeros((2, 6, 6, 6))
    data[0, 1:4, 1:4, 1:4] = 1.0
    data[0, 2, 2, 2] = 0.0  # an enclosed hole, filled in the mask
    data[1, 4, 1, 1] = 5.0
    before = data.copy()
    cropped, seg, box = crop_to_nonzero(data)
    assert box == ((1, 5), (1, 4), (1, 4))
    assert cropped.shape == (2, 4, 3, 3) and seg.shape == (4, 3, 3) and seg.dtype == np.int8
    assert seg[1, 1, 1] == 0  # the hole is inside
    assert seg[3, 0, 1] == -1  # (4, 1, 2) is zero in every channel and not enclosed
    assert cropped[1, 3, 0, 0] == 5.0
    np.testing.assert_array_equal(data, before)


def test_crop_of_an_empty_image_keeps_everything():
    cropped, seg, box = crop_to_nonzero(np.zeros((1, 3, 4)))
    assert box == ((0, 3), (0, 4)) and cropped.shape == (1, 3, 4) and (seg == -1).all()
