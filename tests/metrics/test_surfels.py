import math

import numpy as np
import pytest
from scipy import ndimage

from focusseg.metrics.surfels import CORNERS, neighbourhood_codes, surfel_area_table, unit_triangle_normals

DEEPMIND_KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])


def test_codes_match_deepmind_correlation_kernel():
    rng = np.random.default_rng(0)
    mask = rng.random((7, 6, 5)) > 0.5
    padded = np.zeros((8, 7, 6), np.uint8)
    padded[:-1, :-1, :-1] = mask  # deepmind: crop + one zero row at the far end, correlate, constant 0
    ref = ndimage.correlate(padded, DEEPMIND_KERNEL, mode="constant", cval=0)
    assert np.array_equal(neighbourhood_codes(mask), ref)


def test_planar_codes_have_exact_areas():
    s = (0.5, 2.0, 3.0)
    table = surfel_area_table(s)
    bit = {c: 1 << (7 - i) for i, c in enumerate(CORNERS)}
    assert table[0] == 0 and table[255] == 0
    # one corner inside: triangle through three edge midpoints, area vector (1/8)(s1 s2, s0 s2, s0 s1)
    assert table[bit[(0, 0, 0)]] == pytest.approx(0.125 * math.sqrt(6.0**2 + 1.5**2 + 1.0**2), abs=1e-12)
    # the four corners with a = 1 inside: a full plane perpendicular to axis 0, area s1 * s2
    face = sum(v for c, v in bit.items() if c[0] == 1)
    assert table[face] == pytest.approx(6.0, abs=1e-12)
    # complementary codes describe the same surface
    assert np.allclose(table, table[::-1])


def test_table_is_cached_and_read_only():
    t = unit_triangle_normals()
    assert t is unit_triangle_normals() and not t.flags.writeable and t.shape[0] == 256


def test_matches_deepmind_table_at_random_spacings():
    lt = pytest.importorskip("surface_distance.lookup_tables")
    rng = np.random.default_rng(3)
    for _ in range(10):
        sp = rng.uniform(0.1, 7.0, 3)
        ref = lt.create_table_neighbour_code_to_surface_area(sp)
        np.testing.assert_allclose(surfel_area_table(sp), ref, atol=1e-12)


def test_matches_monai_table():
    utils = pytest.importorskip("monai.metrics.utils")
    ref = utils.create_table_neighbour_code_to_surface_area((0.7, 0.8, 2.5))[0].double().numpy()
    np.testing.assert_allclose(surfel_area_table((0.7, 0.8, 2.5)), ref, rtol=1e-6)  # MONAI stores float32


def test_bad_input():
    with pytest.raises(ValueError):
        neighbourhood_codes(np.zeros((3, 3), bool))
    with pytest.raises(ValueError):
        surfel_area_table((1.0, 1.0))
