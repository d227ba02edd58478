"""The training loader's host side (issue 13): labels checked once per case at load, compact label dtypes, pinned
batches for CUDA, configurable parallelism (threads / processes), blob-loss instances labelled in the workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from focusseg.data.loader import (
    PatchLoader,
    blob_instance_options,
    build_loader,
    default_workers,
    label_dtype,
    label_patch_instances,
    parse_loader_spec,
)
from focusseg.errors import DatasetError, PlanError
from focusseg.preprocessing.store import PreprocessedStore
from focusseg.roles import PatchRequest

SHAPE = (12, 10, 8)
PATCH = (8, 8, 8)


def make_store(root: Path, labels: dict | None = None, bad_case: str | None = None) -> PreprocessedStore:
    """Two cases with blobs of labels 1 and 2; ``bad_case`` gets a label 7."""
    store = PreprocessedStore(root)
    store.write_key({"labels": labels or {"background": 0, "a": 1, "b": 2}})
    rng = np.random.default_rng(0)
    for cid in ("c0", "c1"):
        img = rng.standard_normal((1, *SHAPE)).astype(np.float32)
        lab = np.zeros(SHAPE, np.int16)
        lab[1:4, 1:4, 1:3] = 1
        lab[6:9, 5:8, 4:7] = 2
        lab[10, 0, 0] = 1
        if cid == bad_case:
            lab[0, 0, 0] = 7
        store.write_case(cid, img, lab, {"shape_preprocessed": list(SHAPE)}, {1: np.argwhere(lab == 1)})
    return store


REQS = [[PatchRequest("c0", (0, 0, 0)), PatchRequest("c1", (4, 2, -2))], [PatchRequest("c1", (5, 3, 1))]]


def test_compact_labels_and_same_values(tmp_path: Path):
    store = make_store(tmp_path / "s")
    legacy = PatchLoader(store, PATCH)  # historical form: int64
    compact = PatchLoader(store, PATCH, n_classes=3)
    assert compact.n_classes == 3 and legacy.n_classes == 3  # read from the store's key
    for reqs in REQS:
        x0, y0 = legacy.load(reqs)
        x1, y1 = compact.load(reqs)
        assert y0.dtype == torch.int64 and y1.dtype == torch.uint8 and y1.shape == (len(reqs), 1, *PATCH)
        assert torch.equal(x0, x1) and torch.equal(y0, y1.long())
    assert label_dtype(255) == np.uint8 and label_dtype(256) == np.int16


def test_labels_checked_once_per_case_at_load(tmp_path: Path, monkeypatch):
    store = make_store(tmp_path / "s", bad_case="c1")
    loader = PatchLoader(store, PATCH, n_classes=3)
    calls = []
    original = PatchLoader._check_labels
    monkeypatch.setattr(PatchLoader, "_check_labels", lambda self, c, a: (calls.append(c), original(self, c, a)))
    for _ in range(3):
        loader.load([PatchRequest("c0", (0, 0, 0)), PatchRequest("c0", (2, 2, 0))])
    assert calls == ["c0"]
    with pytest.raises(DatasetError, match=r"case 'c1': label values 0\.\.7 outside 0\.\.2") as err:
        loader.load([PatchRequest("c1", (0, 0, 0))])
    assert err.value.path == Path(store.root) / "c1_seg.npy"
    # the error reaches the training loop through the prefetch workers
    with pytest.raises(DatasetError, match="c1_seg.npy"):
        list(PatchLoader(store, PATCH, n_classes=3).prefetch(iter([[PatchRequest("c1", (0, 0, 0))]])))
    with pytest.raises(DatasetError):  # n_classes from the store's key: checked as well
        PatchLoader(store, PATCH).load([PatchRequest("c1", (0, 0, 0))])


def test_loader_spec_and_defaults():
    assert default_workers(2) == 2 and default_workers(1) == 2 and default_workers(4) == 3
    assert default_workers(16) == 4
    assert parse_loader_spec(None, cpu_count=2) == (2, "threads")
    assert parse_loader_spec({"workers": 3, "mode": "processes"}) == (3, "processes")
    for bad in ({"workers": 0}, {"workers": 1.5}, {"mode": "fork"}, {"threads": 2}, {"workers": True}):
        with pytest.raises(PlanError, match="training.loader"):
            parse_loader_spec(bad)


def _plan(**training) -> dict:
    return {"patch_size": list(PATCH), "n_classes": 3, "training": {"loss": {"ce": 1, "dice": 1}, **training}}


def test_build_loader_from_plan(tmp_path: Path):
    store = make_store(tmp_path / "s")
    loader = build_loader(store, _plan(loader={"workers": 3}), "cpu")
    assert (loader.workers, loader.mode, loader.pin_memory, loader.compact, loader.instances) == (
        3, "threads", False, True, None)
    assert build_loader(store, _plan(), torch.device("cpu")).workers == default_workers()
    blob = _plan(loss={"name": "blob", "activation": "softmax", "connectivity": 6})
    assert blob_instance_options(blob) == {"connectivity": 6, "binary": False}
    assert blob_instance_options(_plan(loss="blob")) == {"connectivity": 26, "binary": False}
    assert blob_instance_options({**_plan(loss={"name": "blob"}), "patch_size": [8, 8]})["connectivity"] == 8
    assert blob_instance_options(_plan(loss={"blob": 1, "ce": 1})) is None  # compound: labelled in the loss
    assert build_loader(store, blob, "cpu").instances == {"connectivity": 6, "binary": False}


def test_pinned_batches_when_cuda(tmp_path: Path, monkeypatch):
    store = make_store(tmp_path / "s")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a, **k: (pinned.append(t.dtype), t)[1])
    loader = build_loader(store, _plan(), "cuda")
    assert loader.pin_memory
    got = list(loader.prefetch(iter(REQS)))
    assert len(got) == 2 and pinned == [torch.float32, torch.uint8] * 2
    loader.close()


def test_processes_mode_gives_the_thread_results(tmp_path: Path):
    store = make_store(tmp_path / "s")
    threads = PatchLoader(store, PATCH, n_classes=3, workers=2)
    procs = PatchLoader(store, PATCH, n_classes=3, workers=1, mode="processes",
                        instances={"connectivity": 26, "binary": False})
    try:
        a = list(threads.prefetch(iter(REQS)))
        b = list(procs.prefetch(iter(REQS)))
        b2 = list(procs.prefetch(iter(REQS[:1])))  # the pool lives on across epochs
        assert procs._pool is not None
    finally:
        threads.close()
        procs.close()
    for (ra, xa, ya), (rb, xb, yb) in zip(a, b):
        assert ra == rb and torch.equal(xa, xb) and torch.equal(ya.long(), yb[:, :1].long())
        assert yb.shape[1] == 2 and yb.dtype == torch.int16
    assert torch.equal(b2[0][2], b[0][2])


def test_instances_labelled_per_patch(tmp_path: Path):
    store = make_store(tmp_path / "s")
    loader = PatchLoader(store, (12, 10, 8), n_classes=3, instances={"connectivity": 26})
    _, y = loader.load([PatchRequest("c0", (0, 0, 0))])
    assert y.shape == (1, 2, 12, 10, 8) and y.dtype == torch.int16
    inst = y[0, 1].numpy()
    assert int(inst.max()) == 3  # two blobs of label 1 (one a single voxel), one of label 2
    for i in (1, 2, 3):  # every instance lies in one class
        assert len(np.unique(y[0, 0].numpy()[inst == i])) == 1
    cc, n = label_patch_instances(y[0, 0].numpy(), 26, binary=True)
    assert n == 3 and cc.max() == 3


def test_too_many_instances_fall_back_to_one_channel(tmp_path: Path, monkeypatch):
    import focusseg.data.loader as L

    store = make_store(tmp_path / "s")
    monkeypatch.setattr(L, "INSTANCE_ID_MAX", 2)
    _, y = PatchLoader(store, (12, 10, 8), n_classes=3, instances={"connectivity": 26}).load(
        [PatchRequest("c0", (0, 0, 0))])
    assert y.shape == (1, 1, 12, 10, 8) and y.dtype == torch.uint8
