"""The planner terminates on every shape and spacing (thin slabs, 1-voxel axes, huge anisotropy, one case) with a
valid patch; validate_plan refuses plans that cannot work on the dataset (class weighter with non-contiguous
labels, bad patch, label/channel mismatch)."""

from __future__ import annotations

import math
import signal
import time

import numpy as np
import pytest

from focusseg.errors import PlanError
from focusseg.io.dataset import DatasetSpec
from focusseg.planning.planner import make_plan, validate_plan
from focusseg.planning.topology import (
    MIN_PATCH,
    PROFILES,
    plan_patch,
    shrink_patch,
    stride_divisors,
)


@pytest.fixture(autouse=True)
def _alarm():
    """A planner that loops fails the test instead of hanging the suite."""
    def boom(signum, frame):
        raise TimeoutError("planner did not terminate")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _fp(shape, spacing, n_cases=10, p10=None, channels=("CT",), labels=None):
    return {"dataset": "x", "n_cases": n_cases, "channel_names": {str(i): c for i, c in enumerate(channels)},
            "labels": labels or {"background": 0, "a": 1},
            "median_spacing": list(spacing), "spacing_percentile_10": list(p10 or spacing),
            "median_shape_after_crop": list(shape), "median_crop_fraction": 1.0,
            "intensity": [{"channel": c, "mean": 0.0, "std": 1.0, "percentile_00_5": -1.0, "percentile_99_5": 1.0}
                          for c in channels]}


def _assert_valid(patch: list[int], n_pool: int, raw: np.ndarray, budget: int) -> None:
    div = 2**n_pool
    assert len(patch) == 3 and all(isinstance(p, int) and p >= 1 and p % div == 0 for p in patch), (patch, n_pool)
    assert all(r <= p < r + div for p, r in zip(patch, raw)), (patch, raw)  # rounded up once, not more
    at_floor = all(r <= MIN_PATCH for r in raw)
    assert np.prod(raw) <= budget or at_floor, (raw, budget)


@pytest.mark.parametrize("shape", [[400, 400, 4], [4, 400, 400], [512, 512, 1], [1, 1, 1], [1, 2000, 1],
                                   [3000, 3000, 2], [7, 7, 7], [1e6, 1e6, 1e6], [0.2, 300, 300]])
def test_thin_slabs_and_extreme_shapes_terminate(shape):
    for profile in PROFILES.values():
        t0 = time.perf_counter()
        patch, n_pool = plan_patch(shape, profile["voxel_budget"])
        assert time.perf_counter() - t0 < 1.0
        _assert_valid(patch, n_pool, shrink_patch(shape, profile["voxel_budget"]), profile["voxel_budget"])


def test_400x400x4_patch():
    patch, n_pool = plan_patch([400.0, 400.0, 4.0], 96**3)
    assert patch[2] == 8 and np.prod(patch) <= 96**3 * 1.2


def test_unchanged_where_the_old_planner_terminated():
    assert plan_patch([36, 50, 35], 96**3) == ([40, 56, 40], 3)  # nnU-Net's Hippocampus patch
    assert plan_patch([300.0, 300.0, 200.0], 96**3) == ([96, 96, 96], 4)
    rng = np.random.default_rng(1)  # the old loop, verbatim, on shapes where every axis is above the floor
    for _ in range(200):
        shape = np.exp(rng.uniform(np.log(8), np.log(3000), 3)).tolist()
        assert plan_patch(shape, 96**3) == _old_plan_patch(shape, 96**3)


def _old_plan_patch(median_shape, voxel_budget):
    from focusseg.planning.topology import pooling_steps as _n_pool

    patch = np.array([max(8.0, s) for s in median_shape], dtype=float)
    while np.prod(patch) > voxel_budget:
        rel = patch / np.array(median_shape)
        ax = int(np.argmax(rel if rel.max() > 1 else patch))
        patch[ax] = max(8.0, patch[ax] * 0.9)
    div = 2 ** _n_pool(float(patch.min()))
    return [int(math.ceil(p / div) * div) for p in patch], _n_pool(float(patch.min()))


def test_property_random_shapes_and_spacings():
    """>= 300 random datasets (seeded): every make_plan ends fast with a valid patch and batch."""
    rng = np.random.default_rng(20240607)
    t_all = time.perf_counter()
    for i in range(400):
        kind = i % 4
        shape = np.exp(rng.uniform(0, np.log(3000), 3))
        if kind == 1:  # 2D-like slab
            shape[rng.integers(3)] = rng.integers(1, 6)
        elif kind == 2:  # 1-voxel axes
            shape[rng.random(3) < 0.5] = 1
        spacing = np.exp(rng.uniform(np.log(0.05), np.log(50), 3))
        if kind == 3:  # huge anisotropy
            spacing[rng.integers(3)] *= 100
        p10 = spacing * rng.uniform(0.3, 1.0, 3)
        n_cases = int(rng.choice([1, 2, 5, 300]))
        device = "cuda" if i % 2 else "cpu"
        t0 = time.perf_counter()
        fp = _fp(shape.round(1).tolist(), spacing.tolist(), n_cases, p10.tolist())
        plan = make_plan(fp, device)
        assert time.perf_counter() - t0 < 0.5, (shape, spacing)
        if device == "cuda":  # per-axis topology planned for a card's memory (tests/gpu/test_planner_cuda.py)
            strides = plan["network"]["strides"]
            assert len(strides) >= 3, (shape, spacing, strides)
            assert all(p % d == 0 and p >= 1 for p, d in zip(plan["patch_size"], stride_divisors(strides)))
            assert plan["memory_estimate_gb"] <= plan["gpu_memory_gb"], plan["memory_estimate_gb"]
        else:
            budget = PROFILES[device]["voxel_budget"]
            median = np.array(fp["median_shape_after_crop"]) * (np.array(fp["median_spacing"])
                                                                / plan["target_spacing"])
            raw = shrink_patch(median.tolist(), budget)
            _assert_valid(plan["patch_size"], len(plan["network"]["strides"]), raw, budget)
        assert all(math.isfinite(s) and s > 0 for s in plan["target_spacing"])
        assert isinstance(plan["batch_size"], int) and plan["batch_size"] >= 2
    assert time.perf_counter() - t_all < 30


@pytest.mark.parametrize("field, value", [("median_spacing", [1.0, 0.0, 1.0]), ("median_spacing", [1, float("nan"), 1]),
                                          ("median_shape_after_crop", [10, -1, 10]), ("n_cases", 0)])
def test_make_plan_refuses_broken_fingerprints(field, value):
    fp = _fp([40, 40, 40], [1, 1, 1])
    fp[field] = value
    with pytest.raises(PlanError, match=field):
        make_plan(fp)


def _spec(labels=None, channels=1) -> DatasetSpec:
    return DatasetSpec("x", {i: "MR" for i in range(channels)}, labels or {"background": 0, "a": 1, "b": 3})


def _plan(spec: DatasetSpec, **over) -> dict:
    fp = _fp([40, 40, 40], [1, 1, 1], channels=tuple(spec.channel_names.values()), labels=spec.labels)
    plan = make_plan(fp)
    plan.update(over)
    return plan


def test_non_contiguous_labels_work_without_a_class_weighter():
    spec = _spec()
    plan = _plan(spec)
    assert plan["n_classes"] == 4
    validate_plan(plan, spec)


@pytest.mark.parametrize("weighter", ["tcf", {"name": "pcf"}, {"name": "cbs", "momentum": 0.9}])
def test_class_weighter_with_non_contiguous_labels_is_refused(weighter):
    spec = _spec()
    plan = _plan(spec)
    plan["training"]["class_weighter"] = weighter
    with pytest.raises(PlanError, match=r"needs contiguous label values 0..3.*class indices \[2\]"):
        validate_plan(plan, spec)
    contiguous = _spec({"background": 0, "a": 1, "b": 2})
    plan = _plan(contiguous)
    plan["training"]["class_weighter"] = weighter
    validate_plan(plan, contiguous)


@pytest.mark.parametrize("over, needle", [
    ({"patch_size": [32, 0, 32]}, "below 1"),
    ({"patch_size": [32, -8, 32]}, "below 1"),
    ({"patch_size": [32, 32, 32, 32]}, "2 or 3 integers"),
    ({"patch_size": [32]}, "2 or 3 integers"),
    ({"patch_size": [32, 32.5, 32]}, "2 or 3 integers"),
    ({"patch_size": "big"}, "2 or 3 integers"),
    ({"n_classes": 3}, "n_classes 3"),
    ({"labels": {"background": 0, "a": 1}}, "label values"),
    ({"channel_names": {"0": "MR", "1": "T1"}}, "2 channel(s), the dataset 1"),
    ({"normalization": []}, "normalization has 0 entries"),
    ({"target_spacing": [1.0, 0.0, 1.0]}, "target_spacing"),
    ({"target_spacing": [1.0, 1.0]}, "target_spacing"),
    ({"batch_size": 0}, "batch_size"),
])
def test_validate_plan_refuses(over, needle):
    spec = _spec()
    with pytest.raises(PlanError) as info:
        validate_plan(_plan(spec, **over), spec)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_validate_plan_missing_field():
    spec = _spec()
    plan = _plan(spec)
    del plan["patch_size"]
    with pytest.raises(PlanError, match="no 'patch_size'"):
        validate_plan(plan, spec)
    validate_plan(_plan(spec, patch_size=[64, 64]), spec)  # a 2D plan
