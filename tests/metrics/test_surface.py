import math

import numpy as np
import pytest
from metrics_shapes import ball, random_blobs

from focusseg.metrics.surface import (
    average_symmetric_surface_distance,
    hausdorff_voxel,
    normalized_surface_dice,
    robust_hausdorff,
    surface_distances,
    surface_metrics,
)


def two_voxels():
    gt, pred = np.zeros((10, 10, 10), bool), np.zeros((10, 10, 10), bool)
    gt[2, 2, 2] = True
    pred[2, 3, 2] = True  # one voxel apart along axis 1: 2 mm at spacing (3, 2, 1)
    return pred, gt


def test_reference_vectors_two_voxels():
    pred, gt = two_voxels()
    assert surface_metrics(pred, gt, (3, 2, 1), tolerance=1.0) == {"nsd": 0.5, "hd95": 2.0, "assd": 1.0}
    assert surface_metrics(pred, gt, (3, 2, 1), tolerance=2.0)["nsd"] == 1.0


def test_reference_vector_slabs():
    gt, pred = np.zeros((100, 100, 100), bool), np.zeros((100, 100, 100), bool)
    gt[0:50], pred[0:51] = True, True
    assert surface_metrics(pred, gt, (2, 1, 1), 1.0)["nsd"] == pytest.approx(0.83615, abs=5e-6)


def test_reference_vector_cube_shifted_one_voxel():
    gt, pred = np.zeros((28, 28, 28), bool), np.zeros((28, 28, 28), bool)
    gt[2:22, 2:22, 2:22], pred[3:23, 2:22, 2:22] = True, True
    m = surface_metrics(pred, gt, (1, 1, 1), 0.0)
    assert m["nsd"] == pytest.approx(0.66654, abs=5e-6)
    assert m["hd95"] == 1.0


def test_identical_shapes_and_pure_translation():
    sphere = ball((30, 30, 30), (15, 15, 15), 8.0)
    assert surface_metrics(sphere, sphere, (1.2, 0.8, 2.0), 0.0) == {"nsd": 1.0, "hd95": 0.0, "assd": 0.0}
    shifted = np.roll(sphere, 2, axis=2)  # every surfel moves 2 voxels = 2 * 1.5 mm along axis 2
    sd = surface_distances(shifted, sphere, (1.0, 1.0, 1.5))
    assert sd.dist_gt_to_pred.max() == pytest.approx(3.0) and robust_hausdorff(sd, 100) == pytest.approx(3.0)
    assert normalized_surface_dice(sd, 3.0) == 1.0 and normalized_surface_dice(sd, 2.99) < 1.0


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 2.0, 3.0)])
def test_total_area_of_a_box_is_exact(spacing):
    # The midpoint marching-cubes surface of an n0 x n1 x n2 voxel box is the box with chamfered edges:
    # flat faces ((n-1) s wide), 45-degree edge strips of width |(s_a, s_b)| / 2, eight corner triangles.
    n, s = (7, 5, 4), spacing
    mask = np.zeros((11, 9, 8), bool)
    mask[2:9, 2:7, 2:6] = True
    L = [(n[a] - 1) * s[a] for a in range(3)]
    faces = 2 * (L[1] * L[2] + L[0] * L[2] + L[0] * L[1])
    strips = 2 * (L[0] * math.hypot(s[1], s[2]) + L[1] * math.hypot(s[0], s[2]) + L[2] * math.hypot(s[0], s[1]))
    corners = math.sqrt((s[1] * s[2]) ** 2 + (s[0] * s[2]) ** 2 + (s[0] * s[1]) ** 2)
    sd = surface_distances(mask, np.zeros_like(mask), s)
    assert sd.area_pred.sum() == pytest.approx(faces + strips + corners, abs=1e-9)


def test_empty_masks():
    empty, one = np.zeros((6, 6, 6), bool), np.zeros((6, 6, 6), bool)
    one[2:4, 2:4, 2:4] = True
    both = surface_metrics(empty, empty, (1, 1, 1))
    assert all(math.isnan(v) for v in both.values())
    for pred, gt in ((empty, one), (one, empty)):
        m = surface_metrics(pred, gt, (1, 1, 1))
        assert m["nsd"] == 0.0 and math.isnan(m["hd95"]) and math.isnan(m["assd"])
    assert math.isnan(hausdorff_voxel(empty, one, (1, 1, 1)))


def test_masks_touching_the_volume_border():
    gt, pred = np.ones((5, 5, 5), bool), np.ones((5, 5, 5), bool)
    pred[4] = False
    m = surface_metrics(pred, gt, (1, 1, 1), 1.0)
    assert m["hd95"] == 1.0 and 0 < m["nsd"] <= 1


def test_bad_arguments():
    a = np.zeros((4, 4, 4), bool)
    with pytest.raises(ValueError):
        surface_metrics(a, np.zeros((4, 4, 5), bool), (1, 1, 1))
    with pytest.raises(ValueError):
        surface_metrics(a, a, (1, 0, 1))
    with pytest.raises(ValueError):
        robust_hausdorff(surface_distances(a, a, (1, 1, 1)), 101)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 3.0)])
def test_agrees_with_deepmind(spacing):
    sd_ref = pytest.importorskip("surface_distance")
    rng = np.random.default_rng(7)
    for _ in range(3):
        gt, pred = random_blobs(rng), random_blobs(rng)
        ref = sd_ref.compute_surface_distances(gt, pred, spacing)
        ours = surface_distances(pred, gt, spacing)
        for tol in (0.0, 1.0, 2.5):
            assert normalized_surface_dice(ours, tol) == pytest.approx(
                sd_ref.compute_surface_dice_at_tolerance(ref, tol), abs=1e-9
            )
        assert robust_hausdorff(ours, 95) == pytest.approx(sd_ref.compute_robust_hausdorff(ref, 95), abs=1e-9)
        d_gp, d_pg = sd_ref.compute_average_surface_distance(ref)
        a_g, a_p = ref["surfel_areas_gt"].sum(), ref["surfel_areas_pred"].sum()
        expected = (d_gp * a_g + d_pg * a_p) / (a_g + a_p)  # our ASSD pools both directions by area
        assert average_symmetric_surface_distance(ours) == pytest.approx(expected, abs=1e-9)


def test_agrees_with_monai_nsd_subvoxels_and_hd95_voxel():
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(11)
    spacing = (0.8, 1.1, 2.0)
    for _ in range(2):
        gt, pred = random_blobs(rng), random_blobs(rng)
        yp = torch.from_numpy(np.stack([~pred, pred])[None].astype(np.float32))
        yg = torch.from_numpy(np.stack([~gt, gt])[None].astype(np.float32))
        nsd = monai_metrics.compute_surface_dice(yp, yg, [1.5], spacing=spacing, use_subvoxels=True)
        assert surface_metrics(pred, gt, spacing, 1.5)["nsd"] == pytest.approx(float(nsd[0, 0]), abs=1e-6)
        hd = monai_metrics.compute_hausdorff_distance(yp, yg, percentile=95, spacing=spacing)
        assert hausdorff_voxel(pred, gt, spacing, 95) == pytest.approx(float(hd[0, 0]), abs=1e-5)


def test_surfel_and_voxel_hd95_are_different_definitions():
    # Same two voxels: voxel-centre edges are 2 mm apart, and so are the corner surfels of these cubes,
    # but for a slab pair the corner surfels on the side faces lie at distance 0 (documented difference).
    gt, pred = np.zeros((12, 12, 12), bool), np.zeros((12, 12, 12), bool)
    gt[2:10, 2:10, 2:6], pred[2:10, 2:10, 2:7] = True, True
    assert robust_hausdorff(surface_distances(pred, gt, (1, 1, 1)), 95) == 1.0
    assert hausdorff_voxel(pred, gt, (1, 1, 1), 95) == 1.0
    assert robust_hausdorff(surface_distances(pred, gt, (1, 1, 1)), 50) == 0.0
    assert hausdorff_voxel(pred, gt, (1, 1, 1), 50) == 0.0
