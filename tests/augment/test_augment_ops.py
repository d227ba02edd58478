"""The single transforms against references: rot90, scipy's gaussian_filter, torch interpolate, hand formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from augment_helpers import ALL_ON, make_batch
from scipy.ndimage import gaussian_filter

from focusseg.augment import AugmentParams, BatchAugmenter, crop_to
from focusseg.augment import intensity as I
from focusseg.augment.spatial import affine_theta, resample, rotation_matrices


@pytest.mark.parametrize(
    "axis,dims,k", [(0, (3, 4), -1), (1, (2, 4), 1), (2, (2, 3), -1)], ids=["about_x", "about_y", "about_z"]
)
def test_rotation_by_90_degrees_is_rot90(axis: int, dims: tuple[int, int], k: int) -> None:
    """q = R p maps output to input; +90 deg about X, Y, Z equals torch.rot90 in the matching plane."""
    images, labels = make_batch(1, 1, (12, 12, 12))
    angles = torch.zeros(1, 3)
    angles[0, axis] = math.pi / 2
    x, y = resample(images, labels, rotation_matrices(angles.double(), 3))
    torch.testing.assert_close(x, images.rot90(k, dims), atol=1e-5, rtol=0)
    assert torch.equal(y, labels.rot90(k, dims))


def test_rotation_2d_and_non_cubic_patch() -> None:
    """2D in-plane rotation; on a non-cubic patch the map is a rotation in voxel units (no shear)."""
    images, labels = make_batch(1, 1, (12, 12))
    x, y = resample(images, labels, rotation_matrices(torch.tensor([[math.pi / 2]], dtype=torch.float64), 2))
    torch.testing.assert_close(x, images.rot90(-1, (2, 3)), atol=1e-5, rtol=0)
    assert torch.equal(y, labels.rot90(-1, (2, 3)))
    r = rotation_matrices(torch.tensor([[0.0, 0.0, math.pi / 2]], dtype=torch.float64), 3)
    theta = affine_theta(r, (10, 20, 30))[0]
    # grid order is (Z, Y, X); normalised x_g' = ... the XY rotation couples grid rows 2 and 1 with ratio n_Y/n_X
    assert theta[2, 1].item() == pytest.approx(-20 / 10) and theta[1, 2].item() == pytest.approx(10 / 20)
    assert theta[0, 0].item() == pytest.approx(1.0) and theta[:, 3].abs().max() == 0


def test_rotation_matrices_are_orthonormal() -> None:
    r = rotation_matrices(torch.rand(5, 3, dtype=torch.float64) * 2 - 1, 3)
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(5, 3, 3))
    assert torch.allclose(torch.linalg.det(r), torch.ones(5, dtype=torch.float64))


def test_scaling_samples_a_larger_region() -> None:
    """s > 1 zooms out: a ramp along X keeps its centre value and its slope is multiplied by s."""
    n = 16
    ramp = (torch.arange(n, dtype=torch.float32) - (n - 1) / 2).view(1, 1, n, 1, 1).expand(1, 1, n, 4, 4).contiguous()
    mats = torch.eye(3, dtype=torch.float64)[None] * 0.5
    x, _ = resample(ramp, None, mats)
    torch.testing.assert_close(x[0, 0, 2:-2, 2, 2], 0.5 * ramp[0, 0, 2:-2, 2, 2], atol=1e-5, rtol=0)
    x, _ = resample(ramp, None, mats * 4)  # s = 2: outer half falls outside -> zeros
    torch.testing.assert_close(x[0, 0, 5:11, 1, 1], 2 * ramp[0, 0, 5:11, 1, 1], atol=1e-5, rtol=0)
    assert (x[0, 0, :2] == 0).all() and (x[0, 0, -2:] == 0).all()


def test_gaussian_blur_matches_scipy() -> None:
    x = torch.randn(2, 14, 11, 9, generator=torch.Generator().manual_seed(0))
    out = I.gaussian_blur(x, torch.tensor([0.5, 1.0]))
    for r, s in enumerate([0.5, 1.0]):
        ref = gaussian_filter(x[r].double().numpy(), s, mode="mirror", truncate=4.0)
        # row 0 uses the batch radius (4) instead of scipy's int(4 * 0.5 + 0.5) = 2: the extra taps are < 1e-6
        np.testing.assert_allclose(out[r].numpy(), ref, atol=1e-5)


def test_lowres_matches_nearest_down_cubic_up() -> None:
    """2D reference: torch nearest-exact downsampling then bicubic (a = -0.75) upsampling, per row."""
    x = torch.randn(3, 20, 16, generator=torch.Generator().manual_seed(1))
    zoom = torch.tensor([0.5, 0.73, 1.0])
    out = I.lowres(x, zoom)
    for r in range(3):
        size = [max(1, round(n * zoom[r].item())) for n in x.shape[1:]]
        down = F.interpolate(x[r][None, None], size=size, mode="nearest-exact")
        up = F.interpolate(down, size=x.shape[1:], mode="bicubic", align_corners=False)[0, 0]
        torch.testing.assert_close(out[r], up, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[2], x[2], atol=1e-6, rtol=0)  # zoom 1 is the identity
    m = I.lowres_matrices(10, torch.tensor([0.5]))
    torch.testing.assert_close(m.sum(-1), torch.ones(1, 10))  # rows sum to one: constants are preserved


def test_contrast_brightness_gamma_formulas() -> None:
    x = torch.rand(2, 6, 5, 4, generator=torch.Generator().manual_seed(2)) * 3 - 1
    f = torch.tensor([0.8, 1.25])
    out = I.contrast(x, f)
    for r in range(2):
        m = x[r].mean()
        ref = ((x[r] - m) * f[r] + m).clamp(x[r].min(), x[r].max())
        torch.testing.assert_close(out[r], ref)
    torch.testing.assert_close(I.brightness(x, f), x * f.view(2, 1, 1, 1))
    for invert in (False, True):
        g = I.gamma(x, torch.tensor([0.7, 1.5]), invert=invert)
        torch.testing.assert_close(g.flatten(1).mean(1), x.flatten(1).mean(1), atol=1e-5, rtol=0)
        torch.testing.assert_close(g.flatten(1).std(1), x.flatten(1).std(1), atol=1e-5, rtol=1e-4)
        sign = -1.0 if invert else 1.0
        for r, gv in enumerate([0.7, 1.5]):
            v = sign * x[r].double()
            y = ((v - v.min()) / (v.max() - v.min() + 1e-7)) ** gv * (v.max() - v.min()) + v.min()
            y = (y - y.mean()) / (y.std(unbiased=False) + 1e-8) * v.std(unbiased=False) + v.mean()
            torch.testing.assert_close(g[r].double(), sign * y, atol=1e-5, rtol=1e-5)


def test_noise_is_seeded_per_sample() -> None:
    x = torch.zeros(3, 2, 16, 16, 16)
    do = torch.tensor([True, False, True])
    out = I.add_noise(x.clone(), do, torch.tensor([0.1, 0.1, 0.05]), torch.tensor([5, 6, 5]))
    assert (out[1] == 0).all()
    assert abs(out[0].std().item() - 0.1) < 0.005
    torch.testing.assert_close(out[2], out[0] * 0.5)  # same seed, half the std
    assert not torch.equal(out[0, 0], out[0, 1])  # channels get independent noise


def test_apply_rows_touches_only_the_masked_rows() -> None:
    x = torch.ones(2, 3, 4, 4)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    I.apply_rows(x, mask, I.brightness, torch.full((2, 3), 2.0))
    assert x[0, 0].eq(2).all() and x[1, 2].eq(2).all() and x.sum() == 2 * 16 * 2 + 4 * 16


def test_crop_to() -> None:
    x = torch.arange(2 * 10 * 9 * 8).view(2, 1, 10, 9, 8)
    c = crop_to(x, (6, 5, 8))
    assert c.shape == (2, 1, 6, 5, 8)
    assert torch.equal(c, x[:, :, 2:8, 2:7, :])
    assert crop_to(x, (3, 3)).shape == (2, 1, 10, 3, 3)
    with pytest.raises(ValueError):
        crop_to(x, (11, 9, 8))


def test_augment_large_then_crop(gen: torch.Generator) -> None:
    """The trainer's use: augment a larger patch, cut the network patch from its centre."""
    images, labels = make_batch(2, 1, (20, 20, 20))
    aug = BatchAugmenter(ALL_ON)
    x, y = aug(images, labels, gen)
    x, y = crop_to(x, (12, 12, 12)), crop_to(y, (12, 12, 12))
    assert x.shape == (2, 1, 12, 12, 12) and y.shape == (2, 1, 12, 12, 12)
    params = AugmentParams.identity(2, 1, (20, 20, 20))
    assert torch.equal(crop_to(aug.apply(images, labels, params)[0], (12, 12, 12)), images[:, :, 4:16, 4:16, 4:16])
