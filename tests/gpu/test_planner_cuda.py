"""The CUDA planner (issue 13, part 4): per-axis topology, GPU-memory budget, and every plan's network builds.

Runs on the CPU: networks are built on the meta device (``torch.device("meta")``, no memory, no compute) and a
forward on meta tensors of the planned batch and patch checks the output shapes; the memory estimate is checked
against the preset budget. The estimate itself is not measured on a GPU here (see ``estimate_training_memory``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from focusseg_testdata import SHARED_DATA

from focusseg.engine.build import build_loss_from_plan
from focusseg.errors import PlanError
from focusseg.nets.from_plan import build_network_from_plan
from focusseg.planning.planner import make_plan, match_deep_supervision
from focusseg.planning.profile import count_parameters, estimate_activation_bytes
from focusseg.planning.topology import (
    GPU_PRESETS,
    dynunet_feature_elements,
    dynunet_features,
    dynunet_parameter_count,
    estimate_training_memory,
    gpu_budget,
    pool_and_conv_props,
    stride_divisors,
)

#: (median shape after crop, median spacing, n_classes): thin slabs, 1-voxel axes, 1024^3, huge anisotropy.
EXTREME = {
    "thin_slab_400x400x4": ([400, 400, 4], [1.0, 1.0, 1.0], 2),
    "thin_slab_4x400x400": ([4, 400, 400], [3.0, 0.7, 0.7], 3),
    "one_voxel_axis": ([1, 300, 300], [1.0, 1.0, 1.0], 2),
    "one_voxel_everywhere": ([1, 1, 1], [1.0, 1.0, 1.0], 2),
    "needle_1x2000x1": ([1, 2000, 1], [1.0, 0.5, 1.0], 2),
    "cube_1024": ([1024, 1024, 1024], [1.0, 1.0, 1.0], 5),
    "aniso_24x320x320": ([24, 320, 320], [5.0, 0.8, 0.8], 3),
    "aniso_16x320x320": ([16, 320, 320], [5.0, 0.8, 0.8], 3),
    "many_classes_ct": ([300, 300, 300], [1.5, 1.5, 1.5], 118),
}


def _fp(shape, spacing, n_classes=2, n_cases=50, channels=("CT",)):
    return {"dataset": "x", "n_cases": n_cases, "channel_names": {str(i): c for i, c in enumerate(channels)},
            "labels": {"background": 0, **{f"c{i}": i for i in range(1, n_classes)}},
            "median_spacing": list(spacing), "spacing_percentile_10": list(spacing),
            "median_shape_after_crop": list(shape), "median_crop_fraction": 1.0,
            "intensity": [{"channel": c, "mean": 0.0, "std": 1.0, "percentile_00_5": -1.0, "percentile_99_5": 1.0}
                          for c in channels]}


def assert_plan_builds(plan: dict) -> None:
    """The plan's network builds on the meta device, a training forward of (batch, C, *patch) gives one output per
    nonzero deep-supervision weight (full resolution first, then each stage's stride), the analytic parameter count
    is exact, and the memory estimate fits the plan's budget."""
    net_spec = plan["network"]
    patch, batch = plan["patch_size"], plan["batch_size"]
    strides = net_spec["strides"]
    assert len(strides) >= 3 and net_spec["n_stages"] == len(strides)  # MONAI DynUNet minimum
    assert all(p % d == 0 for p, d in zip(patch, stride_divisors(strides))), (patch, strides)
    n_ch, n_cls = len(plan["channel_names"]), plan["n_classes"]
    with torch.device("meta"):
        net = build_network_from_plan(plan)
    net.train()
    out = net(torch.empty((batch, n_ch, *patch), device="meta"))
    outs = out if isinstance(out, list) else [out]
    assert outs[0].shape == (batch, n_cls, *patch)
    size = list(patch)
    for o, st in zip(outs[1:], strides[1:]):
        size = [s // k for s, k in zip(size, st)]
        assert tuple(o.shape) == (batch, n_cls, *size)
    dsn = net_spec.get("deep_supr_num", 0) if net_spec["deep_supervision"] else 0
    assert len(outs) == 1 + dsn
    if plan["training"]["deep_supervision"]:
        loss = build_loss_from_plan(plan)
        assert all(w > 0 for w in loss.weights_for(len(outs)))  # no head without a weight
    else:
        assert dsn == 0
    features = dynunet_features(len(strides), net_spec["base_features"], net_spec["max_features"])
    assert count_parameters(net) == dynunet_parameter_count(n_ch, n_cls, net_spec["kernel_sizes"], strides,
                                                            features, dsn)
    est = estimate_training_memory(patch, batch, n_ch, n_cls, net_spec["kernel_sizes"], strides, features, dsn,
                                   plan["training"]["amp"])
    assert est["total_gb"] <= plan["gpu_memory_gb"] + 1e-9, (est, plan["gpu_memory_gb"])
    assert math.isclose(est["total_gb"], plan["memory_estimate_gb"], abs_tol=1e-3)


@pytest.mark.parametrize("name", sorted(EXTREME))
@pytest.mark.parametrize("preset", ["m", "xl"])
def test_extreme_shapes_plan_a_network_that_builds(name: str, preset: str) -> None:
    shape, spacing, n_classes = EXTREME[name]
    plan = make_plan(_fp(shape, spacing, n_classes), device="cuda", preset=preset)
    assert plan["preset"] == preset and plan["gpu_memory_gb"] == GPU_PRESETS[preset]
    assert_plan_builds(plan)


def test_whole_card_plans_fit_an_80_gb_card() -> None:
    for name in ("cube_1024", "aniso_24x320x320"):
        shape, spacing, n_classes = EXTREME[name]
        plan = make_plan(_fp(shape, spacing, n_classes, n_cases=500), device="cuda", gpu_memory_gb=80)
        assert plan["preset"] == "whole" and plan["gpu_memory_gb"] == 72.0  # 80 - 10 % headroom
        assert_plan_builds(plan)
        small = make_plan(_fp(shape, spacing, n_classes, n_cases=500), device="cuda", preset="m")
        assert math.prod(plan["patch_size"]) * plan["batch_size"] > math.prod(small["patch_size"]) * small[
            "batch_size"]


def test_anisotropic_topology_is_nnunet_like() -> None:
    """24x320x320 at 5x0.8x0.8 mm: in-plane axes are pooled first with 1x3x3 kernels until their spacing is within
    2x of the slices', then all axes; 5-6 in-plane poolings (the old planner gave 2 isotropic ones)."""
    plan = make_plan(_fp([24, 320, 320], [5.0, 0.8, 0.8]), device="cuda", preset="m")
    net = plan["network"]
    st, ks = net["strides"], net["kernel_sizes"]
    assert st[0] == [1, 1, 1] and st[1] == [1, 2, 2] and st[2] == [1, 2, 2]
    assert ks[0] == [1, 3, 3] and ks[1] == [1, 3, 3] and ks[2] == [3, 3, 3] and ks[-1] == [3, 3, 3]
    n_pool = [sum(s[a] == 2 for s in st) for a in range(3)]
    assert n_pool[1] == n_pool[2] >= 5 and 1 <= n_pool[0] < n_pool[1]
    assert net["deep_supervision"] and net["deep_supr_num"] == len(st) - 3


def test_pool_and_conv_props_rules() -> None:
    ks, st = pool_and_conv_props([1.0, 1.0, 1.0], [128, 128, 128])
    assert len(st) == 6 and all(s == [2, 2, 2] for s in st[1:]) and all(k == [3, 3, 3] for k in ks)
    ks, st = pool_and_conv_props([1.0, 1.0, 1.0], [320, 320, 320])
    assert stride_divisors(st) == [64, 64, 64]  # at most 6 poolings per axis
    ks, st = pool_and_conv_props([1.0, 1.0, 1.0], [8, 256, 256])  # thin axis: pooled once (8 -> 4), then never
    assert [sum(s[a] == 2 for s in st) for a in range(3)] == [1, 6, 6]
    ks, st = pool_and_conv_props([1.0, 2.0, 4.0], [8, 8, 8])  # a lone axis with < 12 voxels: the rule stops
    assert st == [[1, 1, 1], [2, 1, 1], [2, 2, 1]]  # ... but MONAI's 3 stages are kept: 8 -> 4 -> 2 on the finest


def test_activation_estimate_bounds_the_saved_tensors() -> None:
    """K = 3 saved tensors per conv-output element upper-bounds what autograd saves (measured on the meta device
    with saved_tensors_hooks, fp32) for isotropic, anisotropic and shallow topologies; the measurement itself
    counts a storage saved twice (activation output + next conv input) twice, so it is already pessimistic."""
    cases = [([1.0] * 3, [64, 64, 64]), ([5.0, 0.8, 0.8], [16, 128, 128]), ([1.0] * 3, [8, 8, 8])]
    for spacing, patch in cases:
        ks, st = pool_and_conv_props(spacing, patch)
        feats = dynunet_features(len(st), 8, 64)
        with torch.device("meta"):
            from focusseg.nets import build_network

            net = build_network("dynunet", 1, 2, kernel_sizes=ks, strides=st, base_features=8, max_features=64)
        saved = estimate_activation_bytes(net, patch, 1, batch_size=2)
        elements, _ = dynunet_feature_elements(patch, st, feats, 2)
        ratio = saved / (4 * 2 * elements)
        assert 1.5 <= ratio <= 3.0, (patch, ratio)


def test_estimate_agrees_with_nnunet_reference() -> None:
    """nnU-Net's default 3d_fullres (128^3, 6 stages, 32-320 features, batch 2, fp16) is what its planner fits
    into its 8 GB target; the estimate puts it between 5 and 8 GB. Also: linear in the batch."""
    ks, st = pool_and_conv_props([1.0] * 3, [128, 128, 128])
    feats = dynunet_features(len(st))
    e2 = estimate_training_memory([128] * 3, 2, 1, 3, ks, st, feats, len(st) - 3, "fp16")
    e4 = estimate_training_memory([128] * 3, 4, 1, 3, ks, st, feats, len(st) - 3, "fp16")
    assert 5.0 < e2["total_gb"] < 8.0
    assert math.isclose(e4["total_gb"] - e2["total_gb"], 2 * e2["per_sample_gb"])
    fp32 = estimate_training_memory([128] * 3, 2, 1, 3, ks, st, feats, len(st) - 3, "none")
    assert fp32["activations_gb"] > 1.5 * e2["activations_gb"]


def test_gpu_budget_rules(monkeypatch) -> None:
    import focusseg.planning.topology as topology

    monkeypatch.setattr(topology, "visible_gpu_memory_gb", lambda device="cuda": None)
    assert gpu_budget() == (8.0, "m", None)  # no GPU visible: the M preset
    assert gpu_budget(preset="L") == (24.0, "l", None)
    assert gpu_budget(gpu_memory_gb=24) == (21.6, "whole", 24.0)
    assert gpu_budget(gpu_memory_gb=8, preset="whole") == (7.0, "whole", 8.0)  # at least 1 GB headroom
    with pytest.raises(PlanError, match="whole"):
        gpu_budget(preset="whole")
    assert gpu_budget(gpu_memory_gb=24, preset="l") == (21.6, "l", 24.0)  # capped at the card minus headroom
    assert gpu_budget(gpu_memory_gb=80, preset="l") == (24.0, "l", 80.0)
    with pytest.raises(PlanError, match="xl"):
        gpu_budget(gpu_memory_gb=24, preset="xl")
    with pytest.raises(PlanError, match="preset"):
        gpu_budget(preset="huge")
    with pytest.raises(PlanError, match="gpu_memory_gb"):
        gpu_budget(gpu_memory_gb=-1)
    monkeypatch.setattr(topology, "visible_gpu_memory_gb", lambda device="cuda": 80.0)
    assert gpu_budget() == (72.0, "whole", 80.0)  # a visible card: all of it minus headroom
    plan = make_plan(_fp([36, 50, 35], [1, 1, 1]), device="cuda")
    assert plan["gpu_memory_gb"] == 72.0 and plan["preset"] == "whole"


def test_small_budget_that_cannot_fit_is_refused() -> None:
    with pytest.raises(PlanError, match="budget"):
        make_plan(_fp([300, 300, 300], [1, 1, 1], n_classes=500), device="cuda", gpu_memory_gb=1.05,
                  preset="whole")


def test_recipe_weights_decide_the_heads() -> None:
    """FLARE21's 0.7/0.2/0.1 on a planned DynUNet: three outputs, no zero-weight head built; weights ending in
    zeros drop them; a shallow network turns deep supervision off instead of refusing to build."""
    plan = make_plan(_fp([300, 300, 200], [1, 1, 1]), device="cuda", preset="m")
    flare = match_deep_supervision({**plan, "training": {**plan["training"],
                                                         "deep_supervision": {"weights": [0.7, 0.2, 0.1, 0.0]}}})
    assert flare["network"]["deep_supr_num"] == 2 and flare["training"]["deep_supervision"]["weights"] == [0.7,
                                                                                                        0.2, 0.1]
    assert_plan_builds({**flare, "memory_estimate_gb": estimate_training_memory(
        flare["patch_size"], flare["batch_size"], 1, 2, flare["network"]["kernel_sizes"], flare["network"]["strides"],
        dynunet_features(flare["network"]["n_stages"]), 2, "fp16")["total_gb"]})
    nnunet = match_deep_supervision({**plan, "training": {**plan["training"], "deep_supervision": {"weights":
                                                                                                   "nnunet"}}})
    assert nnunet["network"] == plan["network"] and nnunet["training"] == plan["training"]
    tiny = make_plan(_fp([1, 1, 1], [1, 1, 1]), device="cuda", preset="m")
    assert tiny["network"]["deep_supervision"] is False and tiny["training"]["deep_supervision"] is None
    forced = match_deep_supervision({**tiny, "network": {**tiny["network"], "deep_supervision": True},
                                     "training": {**tiny["training"], "deep_supervision": {"weights": [1.0]}}})
    assert forced["network"]["deep_supervision"] is False and forced["training"]["deep_supervision"] is None
    with pytest.raises(PlanError, match="deep-supervision"):
        match_deep_supervision({**tiny, "network": {**tiny["network"], "deep_supervision": True},
                                "training": {**tiny["training"], "deep_supervision": {"weights": [0.5, 0.3, 0.2]}}})


def test_property_random_cuda_plans() -> None:
    """300 random datasets (seeded; thin slabs, 1-voxel axes, huge anisotropy, one case): every CUDA plan is made
    fast, has >= 3 stages, a patch divisible per axis by its strides, batch >= 2 and an estimate within budget;
    every 15th also builds on the meta device."""
    import time

    import numpy as np

    rng = np.random.default_rng(13)
    t_all = time.perf_counter()
    for i in range(300):
        kind = i % 4
        shape = np.exp(rng.uniform(0, np.log(3000), 3))
        if kind == 1:
            shape[rng.integers(3)] = rng.integers(1, 6)
        elif kind == 2:
            shape[rng.random(3) < 0.5] = 1
        spacing = np.exp(rng.uniform(np.log(0.05), np.log(50), 3))
        if kind == 3:
            spacing[rng.integers(3)] *= 100
        fp = _fp(shape.round(1).tolist(), spacing.tolist(), int(rng.integers(2, 6)),
                 n_cases=int(rng.choice([1, 2, 5, 300])))
        t0 = time.perf_counter()
        plan = make_plan(fp, device="cuda", preset=str(rng.choice(["m", "l", "xl"])))
        assert time.perf_counter() - t0 < 0.5, (shape, spacing)
        st = plan["network"]["strides"]
        assert len(st) >= 3 and plan["batch_size"] >= 2
        assert all(p % d == 0 and p >= 2 * d for p, d in zip(plan["patch_size"], stride_divisors(st)))
        assert plan["memory_estimate_gb"] <= plan["gpu_memory_gb"]
        if i % 15 == 0:
            assert_plan_builds(plan)
    assert time.perf_counter() - t_all < 15


def _shared_datasets() -> list[Path]:
    return sorted(p for p in SHARED_DATA.glob("Dataset*") if (p / "dataset.json").is_file())


@pytest.mark.realdata
@pytest.mark.slow  # ~25 s on 2 cores, most of it the fingerprints
def test_every_shared_dataset_plans_a_network_that_builds() -> None:
    from focusseg.planning.fingerprint import compute_fingerprint

    datasets = _shared_datasets()
    if not datasets:
        pytest.skip(f"real data not available: no Dataset* under {SHARED_DATA} (needs ../shared/data)")
    for data in datasets:
        fp = compute_fingerprint(data, workers=1, progress=False)
        for preset in ("m", "l", "xl"):
            plan = make_plan(fp, device="cuda", preset=preset)
            assert_plan_builds(plan)
