from __future__ import annotations

import numpy as np
import pytest

from focusseg.inference import (
    POSTPROCESSORS,
    apply_postprocessing,
    dilate,
    erode,
    keep_largest_component,
    remove_small_components,
)


def _two_classes() -> np.ndarray:
    seg = np.zeros((10, 10, 10), dtype=np.uint8)
    seg[0:3, 0:3, 0:3] = 1  # 27 voxels
    seg[6:8, 6:8, 6:8] = 1  # 8 voxels
    seg[0, 9, 9] = 1  # 1 voxel
    seg[5:9, 0:2, 0:2] = 2  # 16 voxels
    seg[9, 5, 5] = 2  # 1 voxel
    return seg


def test_keep_largest_component_per_class():
    seg = _two_classes()
    before = seg.copy()
    out = keep_largest_component(seg)
    np.testing.assert_array_equal(seg, before)  # pure
    assert (out == 1).sum() == 27 and (out == 2).sum() == 16
    assert out[0, 9, 9] == 0 and out[9, 5, 5] == 0 and out[6, 6, 6] == 0
    only1 = keep_largest_component(seg, labels=[1])
    assert (only1 == 2).sum() == 17 and (only1 == 1).sum() == 27


def test_connectivity_decides_what_is_one_component():
    seg = np.zeros((5, 5, 5), dtype=np.uint8)
    seg[1, 1, 1] = seg[2, 2, 2] = 1  # corner neighbours
    seg[4, 4, 4] = seg[4, 4, 3] = seg[4, 3, 4] = 1  # 3 voxels, face-connected
    assert (keep_largest_component(seg, connectivity=26) == 1).sum() == 3
    both = keep_largest_component(seg, connectivity=6)
    assert (both == 1).sum() == 3 and both[1, 1, 1] == 0
    seg[3, 3, 3] = 1  # now a 26-connected chain of 6 voxels
    assert (keep_largest_component(seg, connectivity=26) == 1).sum() == 6
    with pytest.raises(ValueError):
        keep_largest_component(seg, connectivity=8)


def test_remove_small_components_in_voxels_and_ml():
    seg = _two_classes()
    out = remove_small_components(seg, min_size=8)
    assert (out == 1).sum() == 27 + 8 and (out == 2).sum() == 16  # size 8 is kept (strictly smaller removed)
    out = remove_small_components(seg, min_size=9, labels=[1])
    assert (out == 1).sum() == 27 and (out == 2).sum() == 17
    # 2 x 2 x 2.5 mm voxels = 0.01 ml: 8 voxels = 0.08 ml, 27 voxels = 0.27 ml, 16 voxels = 0.16 ml
    out = remove_small_components(seg, min_size=0.1, unit="ml", spacing=(2.0, 2.0, 2.5))
    assert (out == 1).sum() == 27 and (out == 2).sum() == 16
    with pytest.raises(ValueError):
        remove_small_components(seg, 0.1, unit="ml")
    with pytest.raises(ValueError):
        remove_small_components(seg, 0.1, unit="cm")


def test_erode_and_dilate_hand_values():
    seg = np.zeros((7, 7, 7), dtype=np.uint8)
    seg[1:6, 1:6, 1:6] = 1
    eroded = erode(seg)
    assert (eroded == 1).sum() == 27 and eroded[2:5, 2:5, 2:5].all()
    assert (erode(seg, iterations=2) == 1).sum() == 1
    assert (erode(seg, connectivity=26) == 1).sum() == 27  # a cube erodes the same with both structures
    point = np.zeros((5, 5, 5), dtype=np.uint8)
    point[2, 2, 2] = 3
    assert (dilate(point) == 3).sum() == 7  # the 6-neighbourhood cross
    assert (dilate(point, connectivity=18) == 3).sum() == 19
    assert (dilate(point, connectivity=26) == 3).sum() == 27


def test_dilate_only_claims_background_and_order_decides_ties():
    seg = np.zeros((1, 5), dtype=np.uint8)[0:1]  # 2D map of one row
    seg[0, 1] = 1
    seg[0, 3] = 2
    out = dilate(seg, connectivity=4)
    np.testing.assert_array_equal(out, [[1, 1, 1, 2, 2]])  # voxel 2 reached by both: label 1 first
    out = dilate(seg, labels=[2, 1], connectivity=4)
    np.testing.assert_array_equal(out, [[1, 1, 2, 2, 2]])
    blocked = np.array([[1, 2, 2]], dtype=np.uint8)
    np.testing.assert_array_equal(dilate(blocked, labels=[1], connectivity=4), blocked)


def test_2d_and_pipeline_from_registry():
    seg = np.zeros((6, 6), dtype=np.int64)
    seg[0:3, 0:3] = 1
    seg[5, 5] = 1
    assert set(POSTPROCESSORS.names()) >= {"keep_largest_component", "remove_small_components", "erode", "dilate"}
    out = apply_postprocessing(
        seg, [{"name": "remove_small_components", "min_size": 0.02, "unit": "ml"}, "dilate"], spacing=(3.0, 3.0)
    )  # 1 voxel = 0.009 ml is removed, then the square grows by the 4-cross
    assert out[5, 5] == 0 and (out == 1).sum() == 9 + 6
    assert out.dtype == seg.dtype
