"""2D batches are true slices of the 3D store: loader, samplers (foreground, Focused Practice), validation patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from focusseg_testdata import write_tiny_dataset

from focusseg.data.loader import PatchLoader, build_loader
from focusseg.data.samplers import patch_with_slice, sampling_patch
from focusseg.engine.build import build_sampler
from focusseg.engine.validation import PatchValidator
from focusseg.preprocessing import preprocess_dataset
from focusseg.roles import PatchRequest
from focusseg.workflows.plan import finish_plan, plan_dataset


@pytest.fixture(scope="module")
def store_and_plan(tmp_path_factory):
    root = tmp_path_factory.mktemp("twod")
    data = write_tiny_dataset(root / "D", n_cases=3, shape=(20, 24, 16))
    base = plan_dataset(data, "cpu", progress=False)
    plan = finish_plan(base, None, {"configuration": "2d", "batch_size": 4})
    store = preprocess_dataset(data, plan, root / "pre", workers=1, progress=False)
    return store, plan


def test_sampling_patch_puts_a_unit_extent_at_the_slice_axis():
    assert patch_with_slice([32, 40], 0) == [1, 32, 40]
    assert patch_with_slice([32, 40], 2) == [32, 40, 1]
    assert sampling_patch({"patch_size": [8, 8, 8]}) == (8, 8, 8)
    assert sampling_patch({"patch_size": [8, 6], "configuration": "2d", "slice_axis": 1}) == (8, 1, 6)
    with pytest.raises(ValueError):
        patch_with_slice([8, 8, 8], 0)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_loader_returns_the_slices_numpy_indexing_gives(store_and_plan, slice_axis):
    store, _ = store_and_plan
    case = store.case_ids()[0]
    img, lab = np.asarray(store.image(case)), np.asarray(store.label(case))
    inplane = [a for a in range(3) if a != slice_axis]
    patch = (8, 6)
    loader = PatchLoader(store, patch, n_classes=3, workers=1, slice_axis=slice_axis)
    reqs = []
    for s_idx, (a0, b0) in [(3, (2, 5)), (7, (0, 0)), (img.shape[1 + slice_axis] - 1, (4, 1))]:
        start = [0, 0, 0]
        start[slice_axis], start[inplane[0]], start[inplane[1]] = s_idx, a0, b0
        reqs.append(PatchRequest(case, tuple(start)))
    x, y = loader.load(reqs)
    assert tuple(x.shape) == (3, img.shape[0], *patch) and tuple(y.shape) == (3, 1, *patch)
    for i, r in enumerate(reqs):
        sl = [slice(None)] * 3
        sl[slice_axis] = r.start[slice_axis]
        for ax, p in zip(inplane, patch):
            sl[ax] = slice(r.start[ax], r.start[ax] + p)
        np.testing.assert_array_equal(x[i].numpy(), img[(slice(None), *sl)])
        np.testing.assert_array_equal(y[i, 0].numpy(), lab[tuple(sl)])


def test_loader_pads_outside_the_volume_in_plane(store_and_plan):
    store, _ = store_and_plan
    case = store.case_ids()[0]
    img = np.asarray(store.image(case))
    x, _ = PatchLoader(store, (8, 8), workers=1, slice_axis=2).load([PatchRequest(case, (-3, -2, 4))])
    np.testing.assert_array_equal(x[0, :, :3].numpy(), 0)
    np.testing.assert_array_equal(x[0, :, 3:, 2:].numpy(), img[:, :5, :6, 4])


def test_foreground_sampling_picks_slices_holding_foreground(store_and_plan):
    store, plan = store_and_plan
    ids = store.case_ids()
    plan = {**plan, "training": {**plan["training"], "foreground_oversampling": 1.0}}
    sampler = build_sampler(plan, {c: store.shape(c) for c in ids}, {c: store.locations(c) for c in ids})
    loader = build_loader(store, {**plan, "training": {**plan["training"], "loader": {"workers": 1}}}, "cpu")
    reqs = sampler.next_batch(16, torch.Generator().manual_seed(0))
    assert all(len(r.start) == 3 for r in reqs)
    _, y = loader.load(reqs)
    assert y.ndim == 4 and bool((y.flatten(1) > 0).any(dim=1).all())


def test_focused_practice_indexes_each_slice_once(store_and_plan):
    store, plan = store_and_plan
    ids = store.case_ids()
    plan = {**plan, "training": {**plan["training"], "sampler": {"name": "focused_practice"}}}
    sampler = build_sampler(plan, {c: store.shape(c) for c in ids}, {c: store.locations(c) for c in ids})
    axis = plan["slice_axis"]
    for case, grid in zip(sampler.cases, sampler.grids):
        assert grid[axis] == list(range(store.shape(case)[axis]))  # every slice, none twice
    reqs = sampler.next_batch(6, torch.Generator().manual_seed(1))
    x, _ = build_loader(store, {**plan, "training": {**plan["training"], "loader": {"workers": 1}}}, "cpu").load(reqs)
    assert tuple(x.shape[2:]) == tuple(plan["patch_size"])


def test_patch_validator_scores_slices(store_and_plan):
    store, plan = store_and_plan
    from focusseg.nets.from_plan import build_network_from_plan

    validator = PatchValidator(store, store.case_ids(), plan, torch.device("cpu"), n_patches=6)
    assert all(r.start[plan["slice_axis"]] >= 0 for r in validator.requests)
    scores = validator(build_network_from_plan(plan))
    assert set(scores) == {1, 2} and all(0.0 <= v <= 1.0 or np.isnan(v) for v in scores.values())
    validator.close()


def test_process_workers_load_the_same_slices(store_and_plan):
    store, plan = store_and_plan
    case = store.case_ids()[1]
    reqs = [PatchRequest(case, (1, 2, 5)), PatchRequest(case, (0, 0, 9))]
    threads = PatchLoader(store, (8, 8), n_classes=3, workers=1, slice_axis=2)
    procs = PatchLoader(store, (8, 8), n_classes=3, workers=1, mode="processes", slice_axis=2)
    try:
        (_, a, b), = list(threads.prefetch([reqs]))
        (_, c, d), = list(procs.prefetch([reqs]))
    finally:
        procs.close()
        threads.close()
    assert torch.equal(a, c) and torch.equal(b, d) and a.ndim == 4

