"""5-fold splits like nnU-Net's ``splits_final.json``: a list of ``{"train": [...], "val": [...]}``.

Cases are shuffled with a fixed seed and dealt into folds (KFold, shuffle=True, random_state=12345 in nnU-Net;
ours uses NumPy's generator with the seed, so folds differ from nnU-Net's but are stable across runs).

A split file is validated when read: valid JSON, a list of ``{"train": [ids], "val": [ids]}``, no case in both
lists of a fold, and every case it names must be a labelled case of the dataset -- a
:class:`~focusseg.errors.DatasetError` naming the file (and the case) otherwise. A numbered fold needs at least
two cases (with one, train with ``--fold all``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from focusseg.errors import DatasetError
from focusseg.io.atomic import save_json
from focusseg.io.jsonfile import read_json


class Splits(list):
    """A list of folds that remembers the file it was read from or saved to (``path``), for error messages."""

    path: Path | None = None


def _with_path(folds: list, path: Path | None) -> Splits:
    out = Splits(folds)
    out.path = path
    return out


def make_splits(case_ids: list[str], n_folds: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
    """``n_folds`` folds (fewer when there are fewer cases). With a single case there is one fold that trains on
    it and validates on nothing (only ``fold="all"`` can use it)."""
    ids = sorted(case_ids)
    if len(ids) < 2:
        return [{"train": ids, "val": []}]
    n_folds = min(n_folds, len(ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = np.array_split(order, n_folds)
    splits = []
    for k in range(n_folds):
        val = sorted(ids[i] for i in folds[k])
        train = sorted(ids[i] for j, f in enumerate(folds) if j != k for i in f)
        splits.append({"train": train, "val": val})
    return splits


def validate_splits(splits: object, path: str | Path, case_ids: list[str] | None = None
                    ) -> list[dict[str, list[str]]]:
    """``splits`` if it is a well-formed split list (every case in ``case_ids`` when given); a
    :class:`DatasetError` naming ``path`` otherwise."""
    path = Path(path)
    if not isinstance(splits, list) or not splits:
        raise DatasetError("a split file must hold a non-empty list of {\"train\": [...], \"val\": [...]} folds",
                           path)
    known = set(case_ids) if case_ids is not None else None
    for k, fold in enumerate(splits):
        if not isinstance(fold, dict) or not isinstance(fold.get("train"), list) or not isinstance(
                fold.get("val"), list):
            raise DatasetError(f"fold {k} must be an object with a 'train' and a 'val' list of case ids", path)
        for key in ("train", "val"):
            for cid in fold[key]:
                if not isinstance(cid, str):
                    raise DatasetError(f"fold {k} {key}: case id {cid!r} is not a string", path)
                if known is not None and cid not in known:
                    raise DatasetError(f"fold {k} {key} names case {cid!r}, which is not a labelled case of the "
                                       "dataset", path, hint="delete the split file to make a new one, or fix it")
        both = sorted(set(fold["train"]) & set(fold["val"]))
        if both:
            raise DatasetError(f"fold {k} lists case {both[0]!r} in both 'train' and 'val'", path)
    return splits  # type: ignore[return-value]


def read_splits(path: str | Path, case_ids: list[str] | None = None) -> Splits:
    """Read and validate a ``splits_final.json`` (nnU-Net's file works as is)."""
    path = Path(path)
    raw = read_json(path, DatasetError, allow_nan=False)  # bounded: size, nesting, digits; no NaN
    return _with_path(validate_splits(raw, path, case_ids), path)


def load_or_create_splits(path: Path, case_ids: list[str], n_folds: int = 5) -> Splits:
    """Read ``splits_final.json`` if present (validated against ``case_ids``), else create and save it."""
    path = Path(path)
    if path.is_file():
        return read_splits(path, case_ids)
    splits = make_splits(case_ids, n_folds)
    save_json(splits, path)  # type: ignore[arg-type]
    return _with_path(splits, path)


def fold_cases(splits: list[dict[str, list[str]]], fold: str | int, source: str | Path | None = None
               ) -> tuple[list[str], list[str]]:
    """(train, val) ids of a fold; ``"all"`` trains on every case and validates on none. ``source``: the split
    file named in errors (default: the file :func:`load_or_create_splits` read or wrote)."""
    source = source if source is not None else getattr(splits, "path", None)
    if str(fold) == "all":
        every = sorted({c for s in splits for c in s["train"] + s["val"]})
        return every, []
    try:
        k = int(fold)
    except (TypeError, ValueError):
        raise DatasetError(f"fold {fold!r} is neither a number nor 'all'", source) from None
    every = {c for s in splits for c in s["train"] + s["val"]}
    if len(every) < 2:
        raise DatasetError(f"fold {k} needs at least 2 labelled cases, the split has {len(every)}", source,
                           hint="with a single case, train with --fold all")
    if not 0 <= k < len(splits):
        raise DatasetError(f"fold {k} out of range: the split has {len(splits)} folds (0..{len(splits) - 1})",
                           source)
    train, val = list(splits[k]["train"]), list(splits[k]["val"])
    if not train or not val:
        raise DatasetError(f"fold {k} has {len(train)} training and {len(val)} validation cases; both must be "
                           "non-empty", source, hint="train with --fold all, or fix the split file")
    return train, val
