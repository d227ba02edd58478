"""The 2D configuration's plan (issue 15 part 3): slice axis, in-plane patch, 2D network, batch, overrides."""

from __future__ import annotations

import pytest
import torch

from focusseg.errors import PlanError
from focusseg.nets.base import NetworkInfo
from focusseg.nets.from_plan import build_network_from_plan
from focusseg.planning import twod as planner
from focusseg.planning.planner import make_plan, plan_configuration
from focusseg.planning.twod import choose_slice_axis
from focusseg.preprocessing.store import store_fields
from focusseg.workflows.plan import finish_plan


def _fp(shape, spacing, n_classes=3, n_cases=40):
    return {"dataset": "synthetic", "n_cases": n_cases, "channel_names": {"0": "MR"},
            "labels": {"background": 0, **{f"c{i}": i for i in range(1, n_classes)}},
            "median_spacing": list(spacing), "spacing_percentile_10": list(spacing),
            "median_shape_after_crop": list(shape), "median_crop_fraction": 1.0,
            "intensity": [{"channel": "MR", "mean": 0.0, "std": 1.0, "percentile_00_5": -1.0,
                           "percentile_99_5": 1.0}]}


@pytest.mark.parametrize("spacing, axis", [
    ([0.8, 0.8, 2.5], 2),   # thick axial slices: slice along z
    ([4.0, 0.7, 0.7], 0),   # thick along x
    ([0.5, 3.0, 0.5], 1),
    ([1.0, 1.0, 1.0], 2),   # isotropic: nnU-Net's argmax over (z, y, x) takes z = focusseg's last axis
    ([1.0, 2.0, 2.0], 2),   # a tie between y and z: z, as nnU-Net
    ([2.0, 2.0, 1.0], 1),   # a tie between x and y: y (nnU-Net's (z, y, x) argmax: y before x)
])
def test_slice_axis_is_the_coarsest_axis(spacing, axis):
    assert choose_slice_axis(spacing) == axis


def test_slice_axis_refuses_bad_spacing():
    with pytest.raises(PlanError, match="slice axis"):
        choose_slice_axis([1.0, 0.0, 1.0])


def test_cpu_2d_plan_on_anisotropic_data():
    plan = make_plan(_fp([320, 300, 40], [0.7, 0.7, 5.0]), configuration="2d")
    assert plan["configuration"] == "2d" and plan["slice_axis"] == 2
    assert len(plan["patch_size"]) == 2
    n_pool = len(plan["network"]["strides"])
    assert all(p % 2**n_pool == 0 and p >= 300 for p in plan["patch_size"])  # the whole median slice (< 512^2)
    assert plan["target_spacing"] == make_plan(_fp([320, 300, 40], [0.7, 0.7, 5.0]))["target_spacing"]
    assert 2 <= plan["batch_size"] <= planner.PROFILES_2D["cpu"]["max_batch"]
    assert plan["batch_size"] > make_plan(_fp([320, 300, 40], [0.7, 0.7, 5.0]))["batch_size"]
    assert plan["inference"]["mirror_axes"] == [0, 1]
    assert plan["training"]["augmentation"]["rotation_deg"] == [-180.0, 180.0]  # square-ish patch: nnU-Net's 2D


def test_large_slices_are_capped_and_elongated_patches_rotate_less():
    plan = make_plan(_fp([1024, 1024, 30], [0.5, 0.5, 3.0]), configuration="2d")
    h, w = plan["patch_size"]
    assert h * w <= 1.3 * planner.PROFILES_2D["cpu"]["pixel_budget"] and h < 1024 and w < 1024
    plan = make_plan(_fp([1024, 100, 30], [0.5, 0.5, 3.0]), configuration="2d")
    assert plan["patch_size"][0] / plan["patch_size"][1] > 1.5
    assert plan["training"]["augmentation"]["rotation_deg"] == [-15.0, 15.0]


def test_2d_network_builds_and_forward_has_the_slice_shape():
    plan = make_plan(_fp([64, 48, 20], [1.0, 1.0, 3.0]), configuration="2d")
    plan = finish_plan(plan, None, {"network": {"channels": [4, 8, 16], "strides": [2, 2]}})
    net = build_network_from_plan(plan)
    h, w = plan["patch_size"]
    with torch.no_grad():
        out = net(torch.zeros(3, 1, h, w))
    assert tuple(out.shape) == (3, plan["n_classes"], h, w)


def test_cuda_2d_plan_is_a_2d_dynunet_within_the_budget():
    plan = make_plan(_fp([512, 512, 100], [0.8, 0.8, 2.5]), device="cuda", gpu_memory_gb=24, preset="m",
                     configuration="2d")
    net = plan["network"]
    assert net["name"] == "dynunet" and net["max_features"] == 512
    assert all(len(k) == 2 for k in net["kernel_sizes"]) and all(len(s) == 2 for s in net["strides"])
    assert plan["patch_size"] == [512, 512]  # nnU-Net's 2D patch for 512^2 CT slices
    assert plan["memory_estimate_gb"] <= plan["gpu_memory_gb"]
    assert plan["batch_size"] >= 2
    with torch.device("meta"):
        model = build_network_from_plan(plan)
        outs = model(torch.zeros(2, 1, *plan["patch_size"]))
    first = outs[0] if isinstance(outs, (list, tuple)) else outs
    assert tuple(first.shape[-2:]) == tuple(plan["patch_size"])


def test_set_configuration_on_a_3d_plan_plans_2d_and_keeps_explicit_overrides():
    base = make_plan(_fp([64, 48, 20], [1.0, 1.0, 3.0]))
    plan = finish_plan(base, None, {"configuration": "2d", "batch_size": 5})
    assert plan["configuration"] == "2d" and plan["batch_size"] == 5 and len(plan["patch_size"]) == 2
    plan = finish_plan(base, {"name": "r", "plan": {"patch_size": [32, 32]}}, {"configuration": "2d"})
    assert plan["patch_size"] == [32, 32]
    three_d = finish_plan(base, None, {"configuration": "3d"})
    assert {**finish_plan(base, None, None), "configuration": "3d"} == three_d
    with pytest.raises(PlanError, match="2d configuration"):
        plan_configuration(plan, {"configuration": "3d"})
    with pytest.raises(PlanError, match="not one of"):
        plan_configuration(base, {"configuration": "2.5d"})


def test_a_2d_plan_and_a_3d_plan_share_the_preprocessed_store():
    fp = _fp([64, 48, 20], [1.0, 1.0, 3.0])
    assert store_fields(make_plan(fp)) == store_fields(make_plan(fp, configuration="2d"))


def test_bad_2d_plans_are_refused(monkeypatch):
    plan = make_plan(_fp([64, 48, 20], [1.0, 1.0, 3.0]), configuration="2d")
    with pytest.raises(PlanError, match="2-value in-plane patch_size"):
        planner.check_configuration({**plan, "patch_size": [32, 32, 16]})
    with pytest.raises(PlanError, match="slice_axis"):
        planner.check_configuration({**plan, "slice_axis": 3})
    with pytest.raises(PlanError, match="3d configuration"):
        planner.check_configuration({**plan, "configuration": "3d", "patch_size": [32, 32, 16]})
    from focusseg.nets import base

    info = base.network_info("vnet")
    monkeypatch.setitem(base._INFO, "vnet", NetworkInfo(info.divisor, info.deep_supervision, (3,)))
    with pytest.raises(PlanError, match="'vnet' is 3D only"):
        planner.check_configuration({**plan, "network": {"name": "vnet"}})
