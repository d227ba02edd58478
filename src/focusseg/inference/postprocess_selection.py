"""Choosing post-processing on validation, never applying it blindly (issue 8; nnU-Net's
``determine_postprocessing`` idea, FP-PET section 1.3's erosion/dilation experiments).

Reading chosen here (greedy, one step per class at most): for each foreground class ``l`` in turn and each
candidate step ``s`` (default :data:`DEFAULT_CANDIDATES`), apply ``s`` to class ``l`` only in every validation
prediction and compute the class's mean Dice over the cases (NaN-aware: a case where ``l`` is absent from both
maps does not count). The candidate with the highest mean Dice is kept for ``l`` only if it beats the class's
current mean Dice by more than ``min_gain`` (default 0: any strict gain, as nnU-Net); it is then applied before
the next class is tried. Steps on one class never change another class's Dice (erosion and component removal
turn voxels into background; dilation claims background only), so the per-class choices are independent.

Every trial is recorded (class, step, Dice before/after, accepted), so a run folder documents *why* a step was
or was not chosen (``postprocessing.json``, written by :func:`choose_postprocessing_for_run`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from focusseg.inference.postprocess import apply_postprocessing

DEFAULT_CANDIDATES: list[dict[str, Any]] = [
    {"name": "keep_largest_component"},
    {"name": "remove_small_components", "min_size": 10},
    {"name": "remove_small_components", "min_size": 100},
    {"name": "erode", "iterations": 1},
    {"name": "dilate", "iterations": 1},
]

__all__ = ["DEFAULT_CANDIDATES", "choose_postprocessing", "choose_postprocessing_for_run", "load_run_postprocessing",
           "read_prediction_pairs"]


def _mean_dice(preds: Sequence[np.ndarray], refs: Sequence[np.ndarray], label: int) -> float:
    from focusseg.metrics import dice_per_class

    vals = [dice_per_class(p, r, [label])[label] for p, r in zip(preds, refs)]
    vals = [v for v in vals if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def choose_postprocessing(
    predictions: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    labels: Sequence[int],
    candidates: Sequence[Mapping[str, Any]] | None = None,
    min_gain: float = 0.0,
    spacings: Sequence[Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Greedy per-class choice of post-processing steps (module docstring).

    Args:
        predictions, references: label maps of the validation cases, pairwise the same shape.
        labels: foreground classes to consider.
        candidates: step specs as for :func:`~focusseg.inference.postprocess.apply_postprocessing` (without
            ``labels``; the class is added). Default :data:`DEFAULT_CANDIDATES`.
        min_gain: a step is kept only if it raises the class's mean Dice by more than this.
        spacings: per case voxel spacing, for steps with ``unit="ml"``.

    Returns:
        ``{"steps": [...], "trials": [...], "dice_before": {l: d}, "dice_after": {l: d}}`` where ``steps`` is the
        list to pass to ``apply_postprocessing`` (each with ``labels=[l]``).
    """
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need matching, non-empty case lists: {len(predictions)} predictions, "
                         f"{len(references)} references")
    for i, (p, r) in enumerate(zip(predictions, references)):
        if p.shape != r.shape:
            raise ValueError(f"case {i}: prediction {p.shape} and reference {r.shape} differ in shape")
    cands = [dict(c) for c in (DEFAULT_CANDIDATES if candidates is None else candidates)]
    current = [np.asarray(p) for p in predictions]
    refs = [np.asarray(r) for r in references]
    sp = list(spacings) if spacings is not None else [None] * len(current)
    steps: list[dict[str, Any]] = []
    trials: list[dict[str, Any]] = []
    before: dict[int, float] = {}
    after: dict[int, float] = {}
    for label in (int(v) for v in labels if int(v) != 0):
        base = _mean_dice(current, refs, label)
        before[label] = base
        best: tuple[float, dict[str, Any], list[np.ndarray], dict[str, Any]] | None = None
        for cand in cands:
            step = {**cand, "labels": [label]}
            out = [apply_postprocessing(p, [step], s) for p, s in zip(current, sp)]
            d = _mean_dice(out, refs, label)
            trial = {"label": label, "step": cand, "dice_before": base, "dice_after": d, "accepted": False}
            trials.append(trial)
            if np.isfinite(d) and (best is None or d > best[0]):
                best = (d, step, out, trial)
        after[label] = base
        if best is not None and np.isfinite(base) and best[0] > base + min_gain:
            steps.append(best[1])
            current = best[2]
            best[3]["accepted"] = True
            after[label] = best[0]
    return {"steps": steps, "trials": trials, "dice_before": before, "dice_after": after, "min_gain": min_gain}


def choose_postprocessing_for_run(
    run_dir: str | Path,
    labels: Sequence[int],
    candidates: Sequence[Mapping[str, Any]] | None = None,
    min_gain: float = 0.0,
) -> dict[str, Any]:
    """Choose on ``run_dir/validation/{predictions,reference}`` (written by the trainer's final validation) and
    write ``run_dir/postprocessing.json`` atomically; returns its content."""
    from focusseg.planning.fingerprint import save_json

    run_dir = Path(run_dir)
    pred_dir = run_dir / "validation" / "predictions"
    names, preds, refs, spacings = read_prediction_pairs(pred_dir, run_dir / "validation" / "reference")
    if not names:
        raise FileNotFoundError(f"{pred_dir}: no validation predictions (train with a validation fold first)")
    result = choose_postprocessing(preds, refs, labels, candidates, min_gain, spacings)
    result["cases"] = names
    save_json(result, run_dir / "postprocessing.json")
    return result


def read_prediction_pairs(
    pred_dir: Path, ref_dir: Path
) -> tuple[list[str], list[np.ndarray], list[np.ndarray], list[tuple[float, ...]]]:
    """Every ``pred_dir/*.nii.gz`` with its same-named reference in ``ref_dir`` as int16 label maps: ``(file names,
    predictions, references, prediction spacings)``; a missing reference is an error naming the file."""
    from focusseg.io import read_image

    names, preds, refs, spacings = [], [], [], []
    for f in sorted(Path(pred_dir).glob("*.nii.gz")):
        ref_file = Path(ref_dir) / f.name
        if not ref_file.exists():
            raise FileNotFoundError(f"{ref_file}: reference of prediction {f.name} is missing")
        p, geo = read_image(f)
        r, _ = read_image(ref_file)
        names.append(f.name)
        preds.append(np.rint(p).astype(np.int16))
        refs.append(np.rint(r).astype(np.int16))
        spacings.append(tuple(geo.spacing))
    return names, preds, refs, spacings


def load_run_postprocessing(run_dir: str | Path, plan: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The steps a run's predictions get: ``plan["inference"]["postprocessing"]`` when it is a list (fixed by a
    recipe), the steps chosen on validation (``postprocessing.json``) when it is ``"auto"`` (default), else none."""
    spec = plan.get("inference", {}).get("postprocessing", "auto")
    if isinstance(spec, list):
        return [dict(s) if isinstance(s, Mapping) else {"name": s} for s in spec]
    if spec == "auto":
        f = Path(run_dir) / "postprocessing.json"
        if f.is_file():
            return list(json.loads(f.read_text())["steps"])
    return []
