"""5-fold splits like nnU-Net's ``splits_final.json``: a list of ``{"train": [...], "val": [...]}``.

Cases are shuffled with a fixed seed and dealt into folds (KFold, shuffle=True, random_state=12345 in nnU-Net;
ours uses NumPy's generator with the seed, so folds differ from nnU-Net's but are stable across runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def make_splits(case_ids: list[str], n_folds: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
    ids = sorted(case_ids)
    if len(ids) < 2:
        return [{"train": ids, "val": ids}]
    n_folds = min(n_folds, len(ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = np.array_split(order, n_folds)
    splits = []
    for k in range(n_folds):
        val = sorted(ids[i] for i in folds[k])
        train = sorted(ids[i] for j, f in enumerate(folds) if j != k for i in f)
        splits.append({"train": train, "val": val})
    return splits


def load_or_create_splits(path: Path, case_ids: list[str], n_folds: int = 5) -> list[dict[str, list[str]]]:
    """Read ``splits_final.json`` if present (nnU-Net's file works as is), else create and save it."""
    path = Path(path)
    if path.is_file():
        return json.loads(path.read_text())
    splits = make_splits(case_ids, n_folds)
    from focusseg.planning.fingerprint import save_json

    save_json(splits, path)  # type: ignore[arg-type]
    return splits


def fold_cases(splits: list[dict[str, list[str]]], fold: str | int) -> tuple[list[str], list[str]]:
    """(train, val) ids of a fold; ``"all"`` trains on every case and validates on none."""
    if str(fold) == "all":
        every = sorted({c for s in splits for c in s["train"] + s["val"]})
        return every, []
    k = int(fold)
    if not 0 <= k < len(splits):
        raise ValueError(f"fold {k} out of range: the splits file has {len(splits)} folds")
    return list(splits[k]["train"]), list(splits[k]["val"])
