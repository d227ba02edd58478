"""2D augmentation: in-plane rotation/scaling, mirroring on the two in-plane axes, intensity as in 3D."""

from __future__ import annotations

import torch

from focusseg.augment import AugmentConfig, BatchAugmenter
from focusseg.engine.build import build_augmenter
from focusseg.planning.planner import make_plan
from focusseg.workflows.plan import finish_plan


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 2, 24, 20, generator=g)
    y = torch.randint(0, 3, (6, 1, 24, 20), generator=g, dtype=torch.int64).to(torch.uint8)
    return x, y


def _plan_2d():
    fp = {"dataset": "s", "n_cases": 10, "channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1},
          "median_spacing": [1.0, 1.0, 3.0], "spacing_percentile_10": [1.0, 1.0, 3.0],
          "median_shape_after_crop": [40, 40, 20], "median_crop_fraction": 1.0,
          "intensity": [{"channel": "MR", "mean": 0.0, "std": 1.0, "percentile_00_5": -1.0, "percentile_99_5": 1.0}]}
    return finish_plan(make_plan(fp), None, {"configuration": "2d"})


def test_plan_builds_a_2d_augmenter_with_nnunet_2d_rotation():
    aug = build_augmenter(_plan_2d())
    assert aug.spatial_dims == 2 and aug.mirror_axes == (0, 1)
    assert aug.config.rotation_deg == (-180.0, 180.0)
    params = aug.draw(8, (40, 40), torch.Generator().manual_seed(0))
    assert tuple(params.angles.shape) == (8, 1) and tuple(params.mirror.shape) == (8, 2)  # one in-plane angle


def test_2d_augmentation_keeps_shapes_and_dtypes_and_is_seeded():
    aug = BatchAugmenter(AugmentConfig.from_dict({"p_rotation": 1.0, "p_scaling": 1.0, "rotation_deg": [-180, 180]}),
                         spatial_dims=2)
    x, y = _batch()
    a_x, a_y = aug(x, y, torch.Generator().manual_seed(3))
    b_x, b_y = aug(x, y, torch.Generator().manual_seed(3))
    assert a_x.shape == x.shape and a_y.shape == y.shape and a_y.dtype == y.dtype and a_x.dtype == x.dtype
    assert torch.equal(a_x, b_x) and torch.equal(a_y, b_y)
    assert not torch.equal(a_x, x)  # something happened
    assert set(a_y.unique().tolist()) <= {0, 1, 2}
    c_x, _ = aug(x, y, torch.Generator().manual_seed(4))
    assert not torch.equal(a_x, c_x)
    assert torch.equal(x, _batch()[0])  # inputs never modified


def test_2d_batched_equals_per_sample():
    aug = BatchAugmenter(AugmentConfig.from_dict({"p_rotation": 0.5, "p_scaling": 0.5}), spatial_dims=2)
    x, y = _batch(1)
    params = aug.draw(6, (24, 20), torch.Generator().manual_seed(5), n_channels=2)
    bx, by = aug.apply(x, y, params)
    for i in range(6):
        sx, sy = aug.apply(x[i:i + 1], y[i:i + 1], params.select([i]))
        torch.testing.assert_close(bx[i:i + 1], sx, atol=1e-5, rtol=1e-5)
        assert torch.equal(by[i:i + 1], sy)


def test_2d_mirroring_flips_the_in_plane_axes():
    aug = BatchAugmenter(AugmentConfig.from_dict({"preset": "none"}), spatial_dims=2)
    x, y = _batch(2)
    params = aug.draw(6, (24, 20), torch.Generator().manual_seed(0), n_channels=2)
    mirror = torch.zeros(6, 2, dtype=torch.bool)
    mirror[0, 0] = mirror[1, 1] = mirror[2] = True
    import dataclasses

    out_x, out_y = aug.apply(x, y, dataclasses.replace(params, mirror=mirror))
    assert torch.equal(out_x[0], x[0].flip(1)) and torch.equal(out_x[1], x[1].flip(2))
    assert torch.equal(out_y[2], y[2].flip(1, 2)) and torch.equal(out_x[3], x[3])
