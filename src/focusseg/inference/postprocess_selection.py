"""Choosing post-processing on validation, never applying it blindly (nnU-Net's ``determine_postprocessing``
idea; FP-PET section 1.3's erosion/dilation experiments).

Reading chosen (greedy, one step per class at most): for each foreground class in turn, each candidate step
(:data:`DEFAULT_CANDIDATES`) is applied to that class in every validation prediction; the best is kept if it
raises the class's mean Dice (NaN-aware) by more than ``min_gain`` (default 0, as nnU-Net). A step on one class
never changes another class's Dice, so the choices are independent. Every trial is recorded
(``postprocessing.json``, :func:`choose_postprocessing_for_run`). With an ignore label, Dice counts annotated
voxels only. Regions overlap, so a step on a region is kept only if it also lowers no other region's Dice
(stricter than nnU-Net). The procedure in full: ``docs/inference.md``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from focusseg.errors import (
    CheckpointError,
    DatasetError,
    FocussegError,
    ImageError,
    MissingFileError,
    UsageError,
    one_line,
)
from focusseg.inference.postprocess import POSTPROCESSORS, apply_postprocessing
from focusseg.io.atomic import save_json
from focusseg.io.geometry import voxel_limit
from focusseg.io.jsonfile import read_json
from focusseg.metrics import dice_per_class
from focusseg.metrics.files import check_folder, label_files, read_label_map
from focusseg.runfolder import PLAN_JSON
from focusseg.settings import check_postprocessing_steps, check_step, inference_settings, thaw

DEFAULT_CANDIDATES: list[dict[str, Any]] = [
    {"name": "keep_largest_component"},
    {"name": "remove_small_components", "min_size": 10},
    {"name": "remove_small_components", "min_size": 100},
    {"name": "erode", "iterations": 1},
    {"name": "dilate", "iterations": 1},
]

__all__ = ["DEFAULT_CANDIDATES", "check_steps", "choose_postprocessing", "choose_postprocessing_for_run",
           "load_run_postprocessing", "read_prediction_pairs"]


def _mean_dice(preds: Sequence[np.ndarray], refs: Sequence[np.ndarray], label: int,
               ignored: Sequence[np.ndarray | None] | None = None) -> float:
    """Mean Dice of ``label`` over the cases (NaN-aware); ``ignored``: per case the mask of unannotated voxels
    (counted as background in both maps) or None."""
    if ignored is not None:
        preds = [p if m is None else np.where(m, 0, p) for p, m in zip(preds, ignored)]
    vals = [dice_per_class(p, r, [label])[label] for p, r in zip(preds, refs)]
    vals = [v for v in vals if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _region_dice(preds: Sequence[np.ndarray], refs: Sequence[np.ndarray], region: Sequence[int],
                 ignored: Sequence[np.ndarray | None] | None = None) -> float:
    """Mean Dice over the cases of the masks ``pred ∈ region`` and ``ref ∈ region`` (NaN-aware; ``ignored``
    voxels left out of both)."""
    vals = []
    for i, (p, r) in enumerate(zip(preds, refs)):
        pm, rm = np.isin(p, region), np.isin(r, region)
        if ignored is not None and ignored[i] is not None:
            pm, rm = pm & ~ignored[i], rm & ~ignored[i]
        vals.append(dice_per_class(pm.astype(np.uint8), rm.astype(np.uint8), [1])[1])
    vals = [v for v in vals if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


#: The post-processors that take ``regions`` (component removal on region masks).
REGION_STEPS = ("keep_largest_component", "remove_small_components")


def _choose_for_regions(current: list[np.ndarray], refs: list[np.ndarray], regions: Sequence[Sequence[int]],
                        cands: list[dict[str, Any]], min_gain: float, sp: list, ignored) -> dict[str, Any]:
    """The region reading of the module docstring; ``refs`` already have the ignore label set to background."""
    regions = [[int(v) for v in r] for r in regions]
    keys = list(range(1, len(regions) + 1))

    def scores(preds: list[np.ndarray]) -> dict[int, float]:
        return {k: _region_dice(preds, refs, r, ignored) for k, r in zip(keys, regions)}

    def mean(d: dict[int, float]) -> float:
        vals = [v for v in d.values() if np.isfinite(v)]
        return float(np.mean(vals)) if vals else float("nan")

    usable = [c for c in cands if c["name"] in REGION_STEPS]
    now = scores(current)
    before = dict(now)
    steps: list[dict[str, Any]] = []
    trials: list[dict[str, Any]] = []
    union = sorted({v for r in regions for v in r})
    scopes: list[tuple[int | str, list[int], list[dict[str, Any]]]] = [
        ("foreground", union, [{"name": "keep_largest_component"}])]
    scopes += [(k, r, usable) for k, r in zip(keys, regions)]
    for key, region, options in scopes:
        target = (lambda d: mean(d)) if key == "foreground" else (lambda d, k=key: d[k])
        base = target(now)
        best: tuple[float, dict[str, Any], list[np.ndarray], dict[str, Any], dict[int, float]] | None = None
        for cand in options:
            step = {**cand, "regions": [region]}
            try:
                out = [apply_postprocessing(p, [step], s) for p, s in zip(current, sp)]
            except (TypeError, ValueError) as exc:
                raise UsageError(f"candidate step {cand} cannot be applied ({one_line(exc)})") from exc
            after = scores(out)
            d = target(after)
            others_worse = [k for k in keys if k != key and np.isfinite(now[k]) and after[k] < now[k] - 1e-12]
            trial = {"label": key, "region": region, "step": cand, "dice_before": base, "dice_after": d,
                     "dice_per_region_after": after, "lowers_other_regions": others_worse, "accepted": False}
            trials.append(trial)
            if np.isfinite(d) and not others_worse and (best is None or d > best[0]):
                best = (d, step, out, trial, after)
        if best is not None and np.isfinite(base) and best[0] > base + min_gain:
            steps.append(best[1])
            current = best[2]
            best[3]["accepted"] = True
            now = best[4]
    return {"steps": steps, "trials": trials, "dice_before": before, "dice_after": now, "min_gain": min_gain,
            "regions": regions,
            "not_for_regions": [c for c in cands if c["name"] not in REGION_STEPS]}


def choose_postprocessing(
    predictions: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    labels: Sequence[int],
    candidates: Sequence[Mapping[str, Any]] | None = None,
    min_gain: float = 0.0,
    spacings: Sequence[Sequence[float]] | None = None,
    ignore_label: int | None = None,
    regions: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Greedy per-class choice of post-processing steps (module docstring).

    Args:
        predictions, references: label maps of the validation cases, pairwise the same shape.
        labels: foreground classes to consider.
        candidates: step specs as for :func:`~focusseg.inference.postprocess.apply_postprocessing` (without
            ``labels``; the class is added). Default :data:`DEFAULT_CANDIDATES`.
        min_gain: a step is kept only if it raises the class's mean Dice by more than this.
        spacings: per case voxel spacing, for steps with ``unit="ml"``.
        ignore_label: reference value of unannotated voxels, left out of every Dice (never a class to process).
        regions: choose per region instead of per label (module docstring); ``labels`` is then unused.

    Returns:
        ``{"steps": [...], "trials": [...], "dice_before": {l: d}, "dice_after": {l: d}}`` where ``steps`` is the
        list to pass to ``apply_postprocessing`` (each with ``labels=[l]``, or ``regions=[region]``; the keys
        are then region numbers 1..R).
    """
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need matching, non-empty case lists: {len(predictions)} predictions, "
                         f"{len(references)} references")
    for i, (p, r) in enumerate(zip(predictions, references)):
        if p.shape != r.shape:
            raise ValueError(f"case {i}: prediction {p.shape} and reference {r.shape} differ in shape")
    cands = _candidates(DEFAULT_CANDIDATES if candidates is None else candidates)
    current = [np.asarray(p) for p in predictions]
    refs = [np.asarray(r) for r in references]
    ignored: list[np.ndarray | None] | None = None
    if ignore_label is not None:
        ignored = [r == int(ignore_label) for r in refs]
        ignored = [m if m.any() else None for m in ignored]
        refs = [r if m is None else np.where(m, 0, r).astype(r.dtype) for r, m in zip(refs, ignored)]
        labels = [v for v in labels if int(v) != int(ignore_label)]
    sp = list(spacings) if spacings is not None else [None] * len(current)
    if regions:
        out = _choose_for_regions(current, refs, regions, cands, min_gain, sp, ignored)
        if ignore_label is not None:
            out["ignore_label"] = int(ignore_label)
        return out
    steps: list[dict[str, Any]] = []
    trials: list[dict[str, Any]] = []
    before: dict[int, float] = {}
    after: dict[int, float] = {}
    for label in (int(v) for v in labels if int(v) != 0):
        base = _mean_dice(current, refs, label, ignored)
        before[label] = base
        best: tuple[float, dict[str, Any], list[np.ndarray], dict[str, Any]] | None = None
        for cand in cands:
            step = {**cand, "labels": [label]}
            try:
                out = [apply_postprocessing(p, [step], s) for p, s in zip(current, sp)]
            except (TypeError, ValueError) as exc:
                raise UsageError(f"candidate step {cand} cannot be applied ({one_line(exc)})") from exc
            d = _mean_dice(out, refs, label, ignored)
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
    out = {"steps": steps, "trials": trials, "dice_before": before, "dice_after": after, "min_gain": min_gain}
    if ignore_label is not None:
        out["ignore_label"] = int(ignore_label)
    return out


def _candidates(candidates: object) -> list[dict[str, Any]]:
    """Candidate steps as dicts; anything that is not a list of ``{"name": <post-processor>, ...}`` is a
    :class:`~focusseg.errors.UsageError`."""
    if not isinstance(candidates, (list, tuple)):
        raise UsageError(f"candidates must be a list of steps such as {{\"name\": \"erode\"}}, got {candidates!r}")
    out = []
    for i, c in enumerate(candidates):
        if isinstance(c, str):
            c = {"name": c}
        if not isinstance(c, Mapping) or c.get("name") not in POSTPROCESSORS:
            raise UsageError(f"candidate step {c!r} is not a known post-processor "
                             f"({', '.join(POSTPROCESSORS.names())})")
        try:
            check_step(c, f"candidates[{i}]", max_size=voxel_limit(), error=UsageError)
        except UsageError as exc:
            raise UsageError(f"candidate step {c!r} cannot be applied ({exc.problem})") from None
        out.append(dict(c))
    return out


def choose_postprocessing_for_run(
    run_dir: str | Path,
    labels: Sequence[int],
    candidates: Sequence[Mapping[str, Any]] | None = None,
    min_gain: float = 0.0,
    ignore_label: int | None = None,
    regions: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Choose on ``run_dir/validation/{predictions,reference}`` (written by the trainer's final validation) and
    write ``run_dir/postprocessing.json`` atomically; returns its content.

    Only predictions that have a reference are used (``cases`` lists them, ``skipped_without_reference`` the
    others); temporaries, dot files and side outputs are ignored. ``ignore_label`` / ``regions`` None: the run's
    ``plan.json`` ``ignore_label`` / ``regions`` (none when the plan has none or cannot be read)."""
    run_dir = Path(run_dir)
    pred_dir = run_dir / "validation" / "predictions"
    hint = "train with a validation fold first (focusseg train ... --fold 0)"
    if not pred_dir.is_dir():
        raise MissingFileError("no validation predictions (folder not found)", pred_dir, hint=hint)
    skipped: list[str] = []
    names, preds, refs, spacings = read_prediction_pairs(pred_dir, run_dir / "validation" / "reference",
                                                         skipped=skipped)
    if not names:
        raise MissingFileError("no validation predictions with a reference", pred_dir, hint=hint)
    if ignore_label is None:
        ignore_label = _plan_ignore_label(run_dir)
    if regions is None:
        regions = _plan_regions(run_dir)
    result = choose_postprocessing(preds, refs, labels, candidates, min_gain, spacings, ignore_label, regions)
    result["cases"] = names
    result["skipped_without_reference"] = skipped
    save_json(result, run_dir / "postprocessing.json")
    return result


def _plan_fields(run_dir: Path) -> dict:
    """``run_dir/plan.json`` read bounded (NaN refused) for one field each caller checks itself; empty when it is
    absent or unreadable (choosing post-processing needs only ``regions`` / ``ignore_label``)."""
    path = run_dir / PLAN_JSON
    if not path.is_file():
        return {}
    try:
        plan = read_json(path, FocussegError, allow_nan=False)
    except FocussegError:
        return {}
    return plan if isinstance(plan, dict) else {}


def _plan_regions(run_dir: Path) -> list[list[int]] | None:
    """The ``regions`` of ``run_dir/plan.json``; None without them (or without a readable plan)."""
    plan = _plan_fields(run_dir)
    regions = plan.get("regions")
    ok = isinstance(regions, list) and regions and all(
        isinstance(r, list) and r and all(isinstance(v, int) and not isinstance(v, bool) for v in r) for r in regions)
    return regions if ok else None


def _plan_ignore_label(run_dir: Path) -> int | None:
    """The ``ignore_label`` of ``run_dir/plan.json``; None without one (or without a readable plan)."""
    value = _plan_fields(run_dir).get("ignore_label")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_prediction_pairs(
    pred_dir: Path, ref_dir: Path, skipped: list[str] | None = None
) -> tuple[list[str], list[np.ndarray], list[np.ndarray], list[tuple[float, ...]]]:
    """Every label map of ``pred_dir`` (any known ending; temporaries, dot files and side outputs ignored) with
    the reference of the same case in ``ref_dir`` (any known ending), as integer label maps: ``(prediction file
    names, predictions, references, prediction spacings)``.

    A prediction without a reference is a :class:`~focusseg.errors.DatasetError` naming it, unless ``skipped``
    is a list: its name is then appended there and the prediction left out. Unreadable files, non-integer
    values and shape mismatches are :class:`~focusseg.errors.ImageError` naming the file."""
    pred_dir = check_folder(pred_dir, "prediction")
    ref_files = label_files(ref_dir) if Path(ref_dir).is_dir() else {}
    names, preds, refs, spacings = [], [], [], []
    for case, f in label_files(pred_dir).items():
        ref_file = ref_files.get(case)
        if ref_file is None:
            if skipped is not None:
                skipped.append(f.name)
                continue
            raise DatasetError(f"prediction has no reference {Path(ref_dir) / f.name}", f,
                               hint="remove predictions of other cases, or add their references")
        p, _, spacing = read_label_map(f)
        r, _, _ = read_label_map(ref_file)
        if p.shape != r.shape:
            raise ImageError(f"shape {p.shape} differs from its reference {ref_file} {r.shape}", f)
        names.append(f.name)
        preds.append(_compact(p))
        refs.append(_compact(r))
        spacings.append(spacing)
    return names, preds, refs, spacings


def _compact(labelmap: np.ndarray) -> np.ndarray:
    """int16 when the values fit (what post-processing and Dice expect), int64 otherwise."""
    return labelmap.astype(np.int16 if labelmap.max(initial=0) <= np.iinfo(np.int16).max else np.int64)


def load_run_postprocessing(run_dir: str | Path, plan: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The steps a run's predictions get: ``plan["inference"]["postprocessing"]`` when it is a list (fixed by a
    recipe), the steps chosen on validation (``postprocessing.json``) when it is ``"auto"`` (default), else none.

    An unreadable ``postprocessing.json``, or one whose steps are not known post-processors, is a
    :class:`~focusseg.errors.CheckpointError` naming it (never applied half-understood); an ``inference`` section
    that is not valid (:func:`~focusseg.settings.inference_settings`) is a :class:`~focusseg.errors.PlanError`."""
    spec = inference_settings(plan, Path(run_dir) / "plan.json").postprocessing
    labels = _label_values(plan)
    if isinstance(spec, tuple):
        steps = [thaw(s) if isinstance(s, Mapping) else {"name": s} for s in spec]
        return check_steps(steps, Path(run_dir) / "plan.json", "the plan's inference.postprocessing", labels)
    if spec == "auto":
        f = Path(run_dir) / "postprocessing.json"
        if f.is_file():
            return read_postprocessing_file(f, labels)
    return []


def _label_values(plan: Mapping[str, Any]) -> set[int] | None:
    """The plan's label values (what its post-processing may name); None when it has no mapping of integers."""
    labels = plan.get("labels")
    if not isinstance(labels, Mapping) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                  for v in labels.values()):
        return None
    return {int(v) for v in labels.values()}


def read_postprocessing_file(f: str | Path, labels: Collection[int] | None = None) -> list[dict[str, Any]]:
    """The steps of a ``postprocessing.json`` (a run's, a cross-validation's, or an ensemble's from
    ``focusseg best``), read bounded (:func:`~focusseg.io.jsonfile.read_json`: size, nesting, digits, no NaN) and
    checked with their arguments (:func:`check_steps`).

    Args:
        f: the file.
        labels: the label values its steps may name (the plan's); None: any label value.

    Returns:
        the steps, one ``{"name": ..., **options}`` dict each.

    Raises:
        MissingFileError: no such file.
        CheckpointError: unreadable or not bounded JSON, no list of ``steps``, or a step :func:`check_steps`
            refuses; each names the file.
    """
    f = Path(f)
    if not f.is_file():
        raise MissingFileError("no such post-processing file", f)
    hint = "re-choose it with `focusseg postprocess RUN_DIR`"
    try:
        saved = read_json(f, CheckpointError, allow_nan=False)
    except CheckpointError as exc:
        raise CheckpointError(f"unreadable post-processing choice ({exc.problem})", f, hint=hint) from None
    steps = saved.get("steps") if isinstance(saved, dict) else None
    if not isinstance(steps, list) or not all(isinstance(s, Mapping) for s in steps):
        raise CheckpointError("not a post-processing choice (no list of 'steps')", f, hint=hint)
    return check_steps([dict(s) for s in steps], f, "postprocessing.json", labels=labels)


def check_steps(steps: list[dict[str, Any]], source: str | Path, what: str, labels: Collection[int] | None = None,
                error: type[FocussegError] = CheckpointError) -> list[dict[str, Any]]:
    """Refuse post-processing steps read from a file (``postprocessing.json``, a plan, a model bundle) before any is
    applied: a step that is not a registered post-processor, an unknown argument, or an argument of the wrong type
    or out of its range (:func:`focusseg.settings.check_postprocessing_steps`; ``min_size`` at most the voxel limit
    in force, :func:`focusseg.io.geometry.voxel_limit`). Such a file may come from another focusseg version or
    from someone else.

    Args:
        steps: the steps, one ``{"name": ..., **options}`` each.
        source: the file they were read from, named in the error.
        what: how the message names them (``"postprocessing.json"``).
        labels: the label values the steps may name; None: any label value.
        error: the error class raised.

    Returns:
        the steps as fresh dicts.

    Raises:
        error: one line naming ``source``, the step's index and the field.
    """
    checked = check_postprocessing_steps(steps, f"{what} steps", source, labels=labels, max_size=voxel_limit(),
                                         error=error)
    unregistered = [s["name"] for s in checked if s["name"] not in POSTPROCESSORS]
    if unregistered:
        raise error(f"{what} names post-processing step {unregistered[0]!r}, which is not registered "
                    f"(registered: {', '.join(POSTPROCESSORS.names())})", source)
    return checked
