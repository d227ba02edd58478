from pathlib import Path

import numpy as np
import pytest
import torch

from focusseg.data.loader import PatchLoader, crop_padded
from focusseg.data.samplers import ForegroundSampler
from focusseg.data.splits import fold_cases, make_splits
from focusseg.io import Geometry
from focusseg.preprocessing import PreprocessedStore, preprocess_array, preprocess_dataset
from focusseg.preprocessing.transforms import nonzero_bbox, normalize, resampled_shape


def test_nonzero_bbox_and_normalisation():
    img = np.zeros((2, 10, 10, 10), np.float32)
    img[0, 2:5, 3:9, 1:2] = 1
    img[1, 6, 6, 6] = 3
    assert nonzero_bbox(img) == ((2, 7), (3, 9), (1, 7))
    x = np.random.default_rng(0).normal(5, 3, (1, 20, 20, 20)).astype(np.float32)
    z = normalize(x, [{"scheme": "zscore"}])
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    ct = normalize(x, [{"scheme": "ct", "clip": [0, 8], "mean": 4.0, "std": 2.0}])
    assert ct.min() >= -2 - 1e-6 and ct.max() <= 2 + 1e-6
    q = normalize(x, [{"scheme": "quantile", "lower": 0.01, "upper": 0.99}])
    assert q.min() == pytest.approx(0, abs=1e-6) and q.max() == pytest.approx(1, abs=1e-6)
    with pytest.raises(ValueError, match="unknown"):
        normalize(x, [{"scheme": "bogus"}])


def test_preprocess_resamples_to_target_spacing():
    img = np.ones((1, 20, 30, 10), np.float32)
    lab = np.zeros((20, 30, 10), np.int16)
    lab[5:10, 5:10, 2:4] = 2
    geo = Geometry(np.diag([1.0, 1.0, 3.0, 1.0]), (20, 30, 10))
    plan = {"normalization": [{"scheme": "none"}], "target_spacing": [2.0, 1.0, 1.5]}
    data, seg, props = preprocess_array(img, geo, plan, lab)
    assert data.shape == (1, 10, 30, 20) == (1, *resampled_shape((20, 30, 10), (1, 1, 3), (2, 1, 1.5)))
    assert set(np.unique(seg)) == {0, 2}
    assert props["shape_after_crop"] == [20, 30, 10]


def test_store_roundtrip_and_class_locations(tiny_dataset: Path, tmp_path: Path):
    from focusseg.workflows.plan import plan_dataset

    plan = plan_dataset(tiny_dataset, "cpu", progress=False)
    store = preprocess_dataset(tiny_dataset, plan, tmp_path / "pre", workers=1, progress=False)
    assert store.case_ids() == [f"case{i:03d}" for i in range(6)]
    cid = store.case_ids()[0]
    img, lab = store.image(cid), store.label(cid)
    assert isinstance(img, np.memmap) and img.shape[1:] == lab.shape
    locs = store.locations(cid)
    for c, coords in locs.items():
        assert len(coords) and (lab[tuple(coords.T)] == c).all()
    again = preprocess_dataset(tiny_dataset, plan, tmp_path / "pre", workers=1, progress=False)
    assert again.case_ids() == store.case_ids()  # nothing recomputed, nothing lost
    assert not list((tmp_path / "pre").glob(".*tmp"))


def test_crop_padded_pads_outside():
    a = np.arange(27).reshape(3, 3, 3)
    out = crop_padded(a, (-1, 1, 2), (3, 3, 3))
    assert out.shape == (3, 3, 3)
    assert (out[0] == 0).all() and out[1, 0, 0] == a[0, 1, 2] and out[1, 0, 1] == 0


def test_foreground_sampler_rate_and_padding():
    shapes = {"a": (40, 40, 40), "b": (10, 10, 10)}
    locs = {"a": {1: np.array([[30, 30, 30]])}, "b": {1: np.zeros((0, 3), np.int32)}}
    s = ForegroundSampler(shapes, (16, 16, 16), locs, p_foreground=0.5)
    g = torch.Generator().manual_seed(0)
    reqs = [r for _ in range(400) for r in s.next_batch(2, g)]
    hits = [r for r in reqs if r.case == "a" and all(st <= 30 < st + 16 for st in r.start)]
    a_reqs = [r for r in reqs if r.case == "a"]
    assert 0.45 < len(hits) / len(a_reqs) < 0.75  # 0.5 forced + random overlap
    for r in reqs:
        if r.case == "b":  # volume smaller than the patch: the patch contains it
            assert all(-6 <= st <= 0 for st in r.start)
        else:
            assert all(0 <= st <= 24 for st in r.start)


def test_patch_loader_shapes(tiny_dataset: Path, tmp_path: Path):
    from focusseg.workflows.plan import plan_dataset

    plan = plan_dataset(tiny_dataset, "cpu", progress=False)
    store = preprocess_dataset(tiny_dataset, plan, tmp_path / "pre", workers=1, progress=False)
    loader = PatchLoader(PreprocessedStore(store.root), (16, 16, 16))
    s = ForegroundSampler({c: store.shape(c) for c in store.case_ids()}, (16, 16, 16),
                          {c: store.locations(c) for c in store.case_ids()}, 1.0)
    g = torch.Generator().manual_seed(0)
    batches = [s.next_batch(3, g) for _ in range(3)]
    got = list(loader.prefetch(iter(batches)))
    assert [r for r, _, _ in got] == batches
    _, x, y = got[0]
    assert x.shape == (3, 1, 16, 16, 16) and y.shape == (3, 1, 16, 16, 16) and y.dtype == torch.int64
    assert (y > 0).any()


def test_splits_are_disjoint_and_cover():
    ids = [f"c{i}" for i in range(23)]
    splits = make_splits(ids)
    assert len(splits) == 5
    vals = [set(s["val"]) for s in splits]
    assert set().union(*vals) == set(ids) and sum(map(len, vals)) == 23
    tr, va = fold_cases(splits, 2)
    assert not set(tr) & set(va)
    assert fold_cases(splits, "all") == (sorted(ids), [])
    assert make_splits(ids) == splits  # stable
