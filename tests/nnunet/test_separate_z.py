"""nnU-Net's separate-z resampling of anisotropic cases: which axis (nnU-Net's rule), the image resampled in plane
with the configuration's order and along that axis by nearest neighbour, probabilities sent back the same way, the
plan field carried from nnU-Net's plans and back into exported plans (the plan gate's checks of the field:
tests/spine/test_gate_settings.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from focusseg.inference.predictor import resample_add_, resample_argmax
from focusseg.preprocessing.transforms import resample_image, separate_axis


@pytest.mark.parametrize(("spacing", "target", "axis"), [
    ((1.0, 1.0, 5.0), (1.0, 1.0, 5.0), 2),  # the case is anisotropic: its thick axis
    ((5.0, 0.8, 0.8), (2.0, 0.8, 0.8), 0),
    ((1.0, 1.0, 1.0), (1.0, 1.0, 4.0), 2),  # isotropic case, anisotropic target: the target's thick axis
    ((0.24, 1.25, 1.25), (0.24, 1.25, 1.25), None),  # two thick axes: no single out-of-plane axis
    ((1.0, 1.0, 2.9), (1.0, 1.0, 2.9), None),  # below the threshold
    ((1.0, 1.0), (1.0, 4.0), 1),  # 2D
])
def test_the_axis_follows_nnunets_rule(spacing, target, axis):
    assert separate_axis(spacing, target, 3.0) == axis


def test_image_resampled_in_plane_then_nearest_along_the_axis():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 9, 7, 4)).astype(np.float32)
    new_shape = (18, 14, 11)
    out = resample_image(image, new_shape, order=3, separate=2, order_separate=0)
    assert out.shape == (2, *new_shape) and out.dtype == np.float32
    for c in range(2):
        # the in-plane pass: each slice zoomed on its own in 2D with the same spline
        slices = np.stack([ndimage.zoom(image[c, :, :, z], (2, 2), order=3, mode="nearest", grid_mode=True)
                           for z in range(4)], axis=-1)
        # nearest along z: every output slice is one of those, in order, each used
        picked = [int(np.argmin([np.abs(out[c, :, :, k] - slices[..., z]).max() for z in range(4)]))
                  for k in range(new_shape[2])]
        for k, z in enumerate(picked):
            np.testing.assert_allclose(out[c, :, :, k], slices[..., z], atol=1e-4)
        assert picked == sorted(picked) and set(picked) == set(range(4))
    # without a separate axis the thick axis is interpolated: slices that are not copies of any input slice
    blended = resample_image(image, new_shape, order=3)
    assert not np.allclose(blended, out, atol=1e-3)


def test_probabilities_go_back_linear_in_plane_and_nearest_along_the_axis():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(3, 6, 5, 4), 0)
    target = (12, 10, 9)
    acc = resample_add_(torch.zeros((3, *target)), probs, separate=2)
    in_plane = torch.nn.functional.interpolate(probs[None], size=(12, 10, 4), mode="trilinear",
                                               align_corners=False)[0]
    for k in range(target[2]):
        diffs = [float((acc[:, :, :, k] - in_plane[:, :, :, z]).abs().max()) for z in range(4)]
        assert min(diffs) < 1e-6
    labels = resample_argmax(probs, target, separate=2)
    assert torch.equal(labels, acc.argmax(0).to(torch.int16))


def test_nnunet_plans_carry_the_choice_both_ways(tmp_path: Path):
    pytest.importorskip("dynamic_network_architectures")
    from nnunet_fixtures import dataset_json, plans

    from focusseg.nnunet.export import separate_z_kwargs
    from focusseg.nnunet.plans_import import plan_from_plans

    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps(dataset_json()))
    for force, expected in ((None, {"threshold": 3.0, "order": 0}), (False, None), (True, {"threshold": 1.0,
                                                                                           "order": 0})):
        p = plans()
        p["configurations"]["3d_fullres"]["resampling_fn_data_kwargs"]["force_separate_z"] = force
        f = tmp_path / f"plans_{force}.json"
        f.write_text(json.dumps(p))
        plan = plan_from_plans(f, ds)
        assert plan.get("resample_separate_z") == expected
        kwargs = separate_z_kwargs(plan)
        assert kwargs["force_separate_z"] is force and kwargs["order_z"] == 0
