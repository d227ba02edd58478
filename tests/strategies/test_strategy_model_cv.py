"""Model-wise cross validation (FP-PET §1.1): disjoint per-model validation sets."""

from __future__ import annotations

import pytest

from focusseg.strategies import modelwise_splits

MODELS = ["stunet", "vnet", "swinunetr"]


def _check_disjoint(splits: dict[str, dict[str, list[str]]], cases: list[str]) -> None:
    vals = [set(s["val"]) for s in splits.values()]
    for i in range(len(vals)):
        for j in range(i + 1, len(vals)):
            assert not vals[i] & vals[j]
    for s in splits.values():
        assert set(s["train"]) | set(s["val"]) == set(cases) and not set(s["train"]) & set(s["val"])
        assert s["train"] == sorted(s["train"]) and s["val"] == sorted(s["val"])


def test_folds_cover_the_data() -> None:
    cases = [f"case_{i:03d}" for i in range(10)]
    splits = modelwise_splits(cases, MODELS, seed=0)
    assert list(splits) == MODELS
    _check_disjoint(splits, cases)
    assert set().union(*(s["val"] for s in splits.values())) == set(cases)
    assert sorted(len(s["val"]) for s in splits.values()) == [3, 3, 4]
    assert modelwise_splits(list(reversed(cases)), MODELS, seed=0) == splits  # input order does not matter
    assert modelwise_splits(cases, MODELS, seed=1) != splits


def test_fixed_size_stratified_like_fp_pet() -> None:
    # FP-PET: three validation sets of 50 cases, 30 with lesions and 20 normal
    cases = [f"c{i:04d}" for i in range(500)]
    groups = {c: "lesion" if i % 2 else "normal" for i, c in enumerate(cases)}
    splits = modelwise_splits(cases, MODELS, seed=3, val_size=50, groups=groups)
    _check_disjoint(splits, cases)
    for s in splits.values():
        assert len(s["val"]) == 50
        assert sum(groups[c] == "lesion" for c in s["val"]) == 25
    skewed = {c: "lesion" if i < 300 else "normal" for i, c in enumerate(cases)}
    for s in modelwise_splits(cases, MODELS, seed=3, val_size=50, groups=skewed).values():
        assert sum(skewed[c] == "lesion" for c in s["val"]) == 30


def test_stratified_folds_and_tiny_strata() -> None:
    cases = [f"c{i}" for i in range(12)]
    groups = {c: "a" if i < 9 else "b" for i, c in enumerate(cases)}
    splits = modelwise_splits(cases, MODELS, seed=0, groups=groups)
    assert [sum(groups[c] == "b" for c in s["val"]) for s in splits.values()] == [1, 1, 1]
    # one case per stratum: quotas cannot be met everywhere, sets are topped up to val_size
    odd = {c: c for c in cases[:4]}
    tiny = modelwise_splits(cases[:4], MODELS, seed=0, val_size=1, groups=odd)
    _check_disjoint(tiny, cases[:4])
    assert [len(s["val"]) for s in tiny.values()] == [1, 1, 1]


def test_errors() -> None:
    with pytest.raises(ValueError):
        modelwise_splits(["a", "a", "b"], MODELS)
    with pytest.raises(ValueError):
        modelwise_splits(["a", "b"], MODELS)
    with pytest.raises(ValueError):
        modelwise_splits([f"c{i}" for i in range(10)], MODELS, val_size=4)
    with pytest.raises(ValueError):
        modelwise_splits(["a", "b", "c"], ["m", "m"])
