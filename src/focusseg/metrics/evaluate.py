"""Case- and folder-level evaluation: every metric for every (case, label), metrics.csv + summary.json.

Per label ``l`` the masks ``pred == l`` and ``gt == l`` are cropped to the union of their bounding boxes and
evaluated there: overlap (:mod:`.overlap`), surface (:mod:`.surface`, NSD at ``nsd_tolerance`` mm), autoPET
volumes (:mod:`.autopet`, 18-connectivity as the official script), lesion-wise counts (:mod:`.lesion`). Undefined
values follow the ``convention`` (:mod:`.conventions`) and are written as empty CSV cells / JSON ``null``.

``ignore_label``: both maps are set to background where the reference holds it, so every metric counts annotated
voxels only (nnU-Net's ``ignore_mask``). ``regions``: each region ``r`` (a list of label values) is evaluated on
``pred ∈ regions[r]`` and ``gt ∈ regions[r]``, its rows labelled ``r + 1``; :func:`read_regions` finds them in a
dataset.json or a run's plan. Details: ``docs/metrics.md``.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from focusseg.errors import (
    DatasetError,
    FocussegError,
    ImageError,
    MissingFileError,
    PartialFailure,
    UsageError,
)
from focusseg.io.atomic import atomic_path, atomic_write_text
from focusseg.io.dataset import load_dataset_spec
from focusseg.io.jsonfile import read_json
from focusseg.metrics.autopet import false_negative_volume, false_positive_volume, fp_pet_score
from focusseg.metrics.conventions import Convention, get_convention
from focusseg.metrics.files import check_folder, label_files, output_ending, read_label_map
from focusseg.metrics.lesion import lesion_metrics
from focusseg.metrics.overlap import (
    confusion_counts,
    label_boxes,
    merge_boxes,
    overlap_metrics,
    present_label_boxes,
)
from focusseg.metrics.surface import surface_metrics

COLUMNS = (
    "case", "label", "dice", "iou", "precision", "recall", "nsd", "hd95", "assd", "fpv_ml", "fnv_ml",
    "lesion_tp", "lesion_fp", "lesion_fn", "lesion_f1", "lesion_dice",
)  # fmt: skip
METRICS = COLUMNS[2:]
AFFINE_ATOL = 1e-4


def _label_row(p: np.ndarray, g: np.ndarray, label: int, spacing, tol: float, connectivity: int, conv: Convention):
    tp, fp, fn = confusion_counts(p, g)
    row: dict[str, Any] = {"label": label, **overlap_metrics(tp, fp, fn, conv)}
    gt_empty, pred_empty = tp + fn == 0, tp + fp == 0
    surf = surface_metrics(p, g, spacing, tolerance=tol)
    if gt_empty and pred_empty:
        surf["nsd"] = conv.both_empty
    elif gt_empty:
        surf["nsd"] = conv.dice_on_empty_gt
    elif conv.nsd_zero_below_dice is not None and row["dice"] < conv.nsd_zero_below_dice:
        surf["nsd"] = 0.0
    row.update(surf)
    row["fpv_ml"] = false_positive_volume(p, g, spacing)
    row["fnv_ml"] = conv.fnv_on_empty_gt if gt_empty else false_negative_volume(p, g, spacing)
    les = lesion_metrics(p, g, connectivity=connectivity, both_empty=conv.both_empty)
    row.update(lesion_tp=les.tp, lesion_fp=les.fp, lesion_fn=les.fn, lesion_f1=les.f1, lesion_dice=les.lesion_dice)
    return row


def evaluate_case(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    labels: Sequence[int],
    nsd_tolerance: float = 1.0,
    connectivity: int = 26,
    convention: str | Convention = "default",
    ignore_label: int | None = None,
    regions: Sequence[Sequence[int]] | None = None,
    boxes: tuple[Mapping[int, tuple[slice, ...]], Mapping[int, tuple[slice, ...]]] | None = None,
) -> list[dict]:
    """One dict per label (or per region: ``label`` = region number ``r + 1``) with keys ``label`` +
    :data:`METRICS` (NaN where undefined).

    Args:
        pred, gt: integer label maps ``(X, Y, Z)`` on one grid.
        spacing: voxel size in mm along the array axes (3 floats > 0).
        labels: positive label ids to evaluate (absent labels give the both-empty row).
        nsd_tolerance: NSD tolerance in mm (>= 0); a convention may override it per label (FLARE22).
        connectivity: 6, 18 or 26, for lesion-wise instances (FPV/FNV always use autoPET's 18).
        convention: name in ``CONVENTIONS`` or a :class:`Convention`.
        ignore_label: reference value of the voxels that are not annotated (module docstring); not a label.
        regions: evaluate these label-value regions instead of ``labels`` (module docstring).
        boxes: each map's label -> bounding box, when the caller has them
            (:func:`~focusseg.metrics.overlap.present_label_boxes`; a label missing from a map is absent there);
            computed here otherwise. Not with ``ignore_label`` (the boxes must be those of the masked maps).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or gt.ndim != 3:
        raise ValueError(f"pred and gt must be 3D label maps of one shape, got {pred.shape} and {gt.shape}")
    if ignore_label is not None:
        if int(ignore_label) in {int(v) for v in labels}:
            raise ValueError(f"the ignore label {ignore_label} cannot be evaluated as a label")
        pred, gt = mask_ignored(pred, gt, int(ignore_label))
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    if nsd_tolerance < 0:
        raise ValueError(f"nsd_tolerance must be >= 0, got {nsd_tolerance}")
    conv = get_convention(convention)
    if regions:
        return [_label_row(pm, gm, r + 1, spacing, conv.tolerance(r + 1, nsd_tolerance), connectivity, conv)
                for r, (pm, gm) in enumerate(_region_pairs(pred, gt, regions))]
    labels = [int(v) for v in labels]
    if boxes is not None and ignore_label is None:
        boxes_p, boxes_g = boxes
    else:
        boxes_p, boxes_g = label_boxes(pred, labels), label_boxes(gt, labels)
    rows = []
    for v in labels:
        box = merge_boxes(boxes_p.get(v), boxes_g.get(v)) or (slice(0, 1),) * 3
        p, g = pred[box] == v, gt[box] == v
        rows.append(_label_row(p, g, v, spacing, conv.tolerance(v, nsd_tolerance), connectivity, conv))
    return rows


def _region_pairs(pred: np.ndarray, gt: np.ndarray, regions: Sequence[Sequence[int]]):
    """``(pred mask, gt mask)`` of each region, cropped to the union of their bounding boxes."""
    from scipy import ndimage

    for region in regions:
        values = np.asarray([int(v) for v in region])
        pm, gm = np.isin(pred, values), np.isin(gt, values)
        boxes = [ndimage.find_objects(m.astype(np.uint8))[0] if m.any() else None for m in (pm, gm)]
        box = merge_boxes(*boxes) or (slice(0, 1),) * 3
        yield pm[box], gm[box]


def _declaring_source(source: str | Path, what: str) -> tuple[Path, Any, dict]:
    """``(file, dataset spec or None, plan dict)`` of a source that declares ``what``: a dataset folder or its
    ``dataset.json`` (the spec), or a run folder or a ``plan.json`` (the plan). :class:`MissingFileError` /
    :class:`UsageError` naming the file when it is neither."""
    path = Path(source)
    if path.is_dir():
        found = [path / n for n in ("dataset.json", "plan.json") if (path / n).is_file()]
        if not found:
            raise MissingFileError(f"no dataset.json or plan.json in this folder (needed for {what})", path)
        path = found[0]
    if not path.is_file():
        raise MissingFileError("file not found", path)
    if path.name == "dataset.json":
        return path, load_dataset_spec(path.parent), {}
    try:
        data = read_json(path, UsageError, allow_nan=False)  # bounded: size, nesting, digits; no NaN
    except UsageError as exc:
        raise UsageError(f"not a readable JSON file ({exc.problem})", path) from None
    if not isinstance(data, dict) or "n_classes" not in data or not isinstance(data.get("labels"), dict):
        raise UsageError("neither a dataset.json nor a focusseg plan (no labels and n_classes)", path)
    return path, None, data


def read_regions(source: str | Path) -> tuple[list[list[int]], list[str]] | None:
    """``(regions, names)`` a dataset or a run declares (``source``: a dataset folder or its ``dataset.json``, a
    run folder or a ``plan.json``), or None when it declares none. A source that is neither is a
    :class:`UsageError`; a malformed one the error of its reader, naming it."""
    path, spec, data = _declaring_source(source, "the regions")
    if spec is not None:
        return (spec.region_list, list(spec.regions)) if spec.regions else None
    regions = data.get("regions")
    if not regions:
        return None
    if not (isinstance(regions, list) and all(isinstance(r, list) and r and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in r) for r in regions)):
        raise UsageError(f"the plan's regions {regions!r} are not lists of positive label values", path)
    names = data.get("region_names")
    if not (isinstance(names, list) and len(names) == len(regions)):
        names = [f"region_{i + 1}" for i in range(len(regions))]
    return regions, [str(n) for n in names]


def mask_ignored(pred: np.ndarray, gt: np.ndarray, ignore_label: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, gt)`` with both set to 0 wherever ``gt == ignore_label`` (copies only when that voxel exists)."""
    ignored = gt == ignore_label
    if not ignored.any():
        return pred, gt
    pred = np.where(ignored, 0, pred).astype(pred.dtype, copy=False)
    return pred, np.where(ignored, 0, gt).astype(gt.dtype, copy=False)


def read_ignore_label(source: str | Path) -> int | None:
    """The ignore label a dataset or a run declares: ``source`` is a dataset folder or its ``dataset.json`` (the
    label named ``ignore``), or a run folder or a ``plan.json`` (its ``ignore_label``). None when it declares none.
    A source that is neither is a :class:`UsageError`; a malformed one the error of its reader, naming it."""
    path, spec, data = _declaring_source(source, "the ignore label")
    if spec is not None:
        return spec.ignore_label
    value = data.get("ignore_label")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise UsageError(f"the plan's ignore_label {value!r} is not a positive integer", path)
    return value


def present_labels(*labelmaps: np.ndarray) -> list[int]:
    """Sorted non-zero labels present in any of the maps."""
    found: set[int] = set()
    for m in labelmaps:
        found.update(int(v) for v in np.unique(m) if v != 0)
    return sorted(found)


def _case_files(folder: Path) -> dict[str, Path]:
    """``{case: file}`` of the label maps of a folder (rules in :mod:`focusseg.metrics.files`)."""
    return label_files(folder)


def _load_labels(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    return read_label_map(path)


def _error_record(exc: FocussegError) -> tuple:
    """A picklable stand-in for an expected error raised in a worker process (exceptions whose ``__init__``
    takes several arguments do not survive pickling with their path and hint)."""
    return (type(exc), exc.problem, None if exc.path is None else str(exc.path), exc.hint)


def _rebuild_error(record: tuple) -> FocussegError:
    cls, problem, path, hint = record
    try:
        return cls(problem, path, hint)
    except TypeError:  # a subclass with another signature
        return DatasetError(problem, path, hint)


def _evaluate_pair(job: tuple) -> tuple[str, list[dict] | tuple, list[int]]:
    """``(case, rows, labels present)``, or ``(case, error record, [])`` for a file that cannot be scored."""
    case, pred_path, gt_path, labels, tol, connectivity, convention, ignore, regions = job
    try:
        pred, pred_affine, _ = _load_labels(pred_path)
        gt, gt_affine, spacing = _load_labels(gt_path)
        if pred.shape != gt.shape:
            raise ImageError(f"shape {pred.shape} differs from the reference {gt_path} {gt.shape}", pred_path)
        if not np.allclose(pred_affine, gt_affine, rtol=0, atol=AFFINE_ATOL):
            diff = float(np.abs(pred_affine - gt_affine).max())
            raise ImageError(f"affine differs from the reference {gt_path} (max difference {diff:.3g}, "
                             f"tolerance {AFFINE_ATOL})", pred_path)
        if ignore is not None:
            pred, gt = mask_ignored(pred, gt, ignore)
        if regions:
            rows = evaluate_case(pred, gt, spacing, [], tol, connectivity, convention, regions=regions)
            return case, rows, list(range(1, len(regions) + 1))
        boxes = present_label_boxes(pred), present_label_boxes(gt)
        if boxes[0] is None or boxes[1] is None:  # values outside the fast path's range
            present, boxes = [v for v in present_labels(pred, gt) if v != ignore], None
        else:
            present = sorted((set(boxes[0]) | set(boxes[1])) - {ignore})
        rows = evaluate_case(pred, gt, spacing, present if labels is None else labels, tol, connectivity, convention,
                             boxes=boxes)
    except FocussegError as exc:
        return case, _error_record(exc), []
    return case, rows, present


def _stats(values: Sequence[float]) -> dict[str, float | int | None]:
    """mean, sd (ddof 1), median and n of the finite values; ``n_undefined`` counts the others (NaN/None: an
    empty mask under the convention), which never enter the statistics."""
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    undefined = len(values) - int(x.size)
    if x.size == 0:
        return {"mean": None, "sd": None, "median": None, "n": 0, "n_undefined": undefined}
    sd = float(x.std(ddof=1)) if x.size > 1 else None
    return {"mean": float(x.mean()), "sd": sd, "median": float(np.median(x)), "n": int(x.size),
            "n_undefined": undefined}


def summarize(rows: Sequence[Mapping[str, Any]], labels: Sequence[int]) -> dict[str, Any]:
    """Per label and overall (all case-label rows pooled): mean, sd (ddof 1), median, n of finite values and
    ``n_undefined``, the number of undefined (NaN) values left out.

    Also the FP-PET score per label, ``mean dice - 0.1 mean FPV - 0.1 mean FNV`` (None if undefined).
    """
    per_label: dict[str, Any] = {}
    for v in labels:
        sub = [r for r in rows if r["label"] == v]
        stats = {m: _stats([float(r[m]) for r in sub]) for m in METRICS}
        parts = [stats[m]["mean"] for m in ("dice", "fpv_ml", "fnv_ml")]
        stats["fp_pet_score"] = None if None in parts else fp_pet_score(*parts)
        per_label[str(v)] = stats
    overall = {m: _stats([float(r[m]) for r in rows]) for m in METRICS}
    return {"per_label": per_label, "overall": overall}


def _cell(value: Any) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    return "" if not math.isfinite(value) else repr(value)


def _listing(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN) and numpy scalars made plain."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    out_dir: str | Path,
    labels: Sequence[int] | None = None,
    nsd_tolerance: float = 1.0,
    connectivity: int = 26,
    workers: int = 2,
    convention: str = "default",
    progress: bool = True,
    ignore_label: int | None = None,
    regions: Sequence[Sequence[int]] | None = None,
    region_names: Sequence[str] | None = None,
    world: Any = None,
    plots: bool = True,
) -> dict:
    """Evaluate every label map of ``gt_dir`` against the prediction of the same case in ``pred_dir``.

    Cases are the files of any known image ending (``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``...; a prediction and
    its reference may differ in format); temporaries, dot files and side outputs (``<case>_uncertainty...``) are
    ignored (:mod:`focusseg.metrics.files`). Writes ``out_dir/metrics.csv`` (:data:`COLUMNS`, one row per case and
    label, empty cell where undefined), ``out_dir/summary.json`` (see :func:`summarize`, plus the settings) and
    the violin plots ``dice_violin.png`` and ``nsd_violin.png``, each atomically; returns the summary dict.
    Spacing comes from the reference header; prediction and reference must share shape and affine (within
    1e-4). ``labels=None`` evaluates every non-zero label found in any reference or prediction (present values
    only: memory does not depend on how large label values are). ``workers > 1`` evaluates cases in a process
    pool. ``ignore_label``: the reference value of unannotated voxels (module docstring), recorded in the
    summary; never evaluated as a label. ``regions`` (and their ``region_names``): evaluate label-value regions
    instead of labels (module docstring; not together with ``labels`` or ``ignore_label``). ``world``
    (:class:`~focusseg.engine.distributed.World`, e.g. under ``torchrun``): each process scores its share of the
    cases, the rows are gathered, rank 0 writes and every rank returns the same summary. ``plots=False``: no
    violin plots (matplotlib is not imported).

    Raises:
        MissingFileError: a folder that does not exist.
        UsageError: bad ``connectivity``/``nsd_tolerance``/``labels``, or a file where a folder was expected.
        DatasetError: an empty ``gt_dir``, references without a prediction or predictions without a reference
            (all named), two files for one case.
        ImageError: one file that cannot be scored (unreadable, not 3D, NaN or non-integer values, shape or
            affine differing from its reference), naming it; with several such files a :class:`PartialFailure`
            holding one error per file. Nothing is written then.
    """
    from rich.progress import Progress

    conv = get_convention(convention)
    if connectivity not in (6, 18, 26):
        raise UsageError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    if not (isinstance(nsd_tolerance, (int, float)) and math.isfinite(nsd_tolerance) and nsd_tolerance >= 0):
        raise UsageError(f"nsd_tolerance must be a distance >= 0 in mm, got {nsd_tolerance}")
    gt_dir = check_folder(gt_dir, "ground-truth")
    pred_dir = check_folder(pred_dir, "prediction")
    out_dir = Path(out_dir)
    req = None if labels is None else [int(v) for v in labels]
    if req is not None and (not req or min(req) <= 0):
        raise UsageError(f"labels must be positive integers, got {labels}")
    if ignore_label is not None:
        if isinstance(ignore_label, bool) or not isinstance(ignore_label, (int, np.integer)) or ignore_label <= 0:
            raise UsageError(f"the ignore label must be a positive integer, got {ignore_label!r}")
        ignore_label = int(ignore_label)
        if req is not None and ignore_label in req:
            raise UsageError(f"label {ignore_label} is the ignore label: it cannot be evaluated as a label")
    if regions is not None:
        regions = [[int(v) for v in r] for r in regions]
        if not regions or not all(r and min(r) > 0 for r in regions):
            raise UsageError(f"regions must be non-empty lists of positive label values, got {regions}")
        if req is not None or ignore_label is not None:
            raise UsageError("regions are evaluated instead of labels, and without an ignore label")
        req = list(range(1, len(regions) + 1))
        if region_names is not None and len(region_names) != len(regions):
            raise UsageError(f"{len(region_names)} region names for {len(regions)} regions")
    gts, preds = _case_files(gt_dir), _case_files(pred_dir)
    if not gts:
        raise DatasetError("no ground-truth label maps (.nii.gz, .nii, .mha, .nrrd ...) in this folder", gt_dir)
    missing = sorted(set(gts) - set(preds))
    if missing:
        first = gts[missing[0]]
        expected = pred_dir / f"{missing[0]}{output_ending(first.name[len(missing[0]):])}"
        more = f" (and {len(missing) - 1} more: {_listing(missing[1:])})" if len(missing) > 1 else ""
        raise DatasetError(f"no prediction for ground truth {first}{more}", expected,
                           hint="predict every reference case, or evaluate against a folder of only those cases")
    extra = sorted(set(preds) - set(gts))
    if extra:
        more = f" (and {len(extra) - 1} more: {_listing(extra[1:])})" if len(extra) > 1 else ""
        raise DatasetError(f"prediction has no ground truth in {gt_dir}{more}", preds[extra[0]],
                           hint="remove predictions of other cases, or add their references")
    jobs = [(c, preds[c], gts[c], req, float(nsd_tolerance), connectivity, conv, ignore_label, regions)
            for c in sorted(gts)]
    sharded = world is not None and world.active
    if sharded:
        jobs = world.shard(jobs)
    results: dict[str, tuple[list[dict], list[int]]] = {}
    raw_failures: list[tuple] = []

    def collect(case: str, rows: list[dict] | tuple, present: list[int]) -> None:
        if isinstance(rows, tuple):
            raw_failures.append(rows)
        else:
            results[case] = (rows, present)

    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task("evaluating", total=len(jobs))
        if workers <= 1 or len(jobs) == 1:
            for job in jobs:
                collect(*_evaluate_pair(job))
                bar.advance(task)
        else:
            # fork: workers inherit the imported modules (as torch's DataLoader workers do); they use no
            # torch and no threads, so forking a parent that imported torch is safe here.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            ctx = multiprocessing.get_context(method)
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
                for item in pool.map(_evaluate_pair, jobs):
                    collect(*item)
                    bar.advance(task)
    if sharded:  # every rank's rows and failures, on every rank
        merged: dict[str, tuple[list[dict], list[int]]] = {}
        merged_failures: list[tuple] = []
        for part_results, part_failures in world.gather_objects((results, raw_failures)):
            merged.update(part_results)
            merged_failures.extend(part_failures)
        results, raw_failures = merged, merged_failures
    failures: list[FocussegError] = [_rebuild_error(f) for f in raw_failures]
    if len(failures) == 1:
        raise failures[0]
    if failures:
        exc = PartialFailure(failures, 0, what="file(s)")
        exc.hint = "nothing was written: fix or remove the files named above"
        raise exc
    final_labels = req if req is not None else sorted({v for _, p in results.values() for v in p})
    all_rows = []
    for case in sorted(results):
        by_label = {r["label"]: r for r in results[case][0]}
        for v in final_labels:
            if v not in by_label:  # absent from this case's GT and prediction: the both-empty row
                empty = np.zeros((1, 1, 1), np.uint8)
                by_label[v] = evaluate_case(empty, empty, (1.0, 1.0, 1.0), [v], nsd_tolerance, connectivity, conv)[0]
            all_rows.append({"case": case, **by_label[v]})
    summary = {
        "convention": conv.name,
        "nsd_tolerance": float(nsd_tolerance),
        "connectivity": connectivity,
        "labels": final_labels,
        **({"ignore_label": ignore_label} if ignore_label is not None else {}),
        **({"regions": regions} if regions is not None else {}),
        **({"region_names": list(region_names)} if regions is not None and region_names is not None else {}),
        "n_cases": len(results),
        **summarize(all_rows, final_labels),
    }
    summary = _json_safe(summary)
    if sharded and not world.is_main:
        return summary  # rank 0 writes
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            for r in all_rows:
                writer.writerow([r["case"]] + [_cell(r[c]) for c in COLUMNS[1:]])
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
        if plots:
            _write_plots(all_rows, final_labels, out_dir)
    except OSError as exc:
        where = Path(exc.filename) if getattr(exc, "filename", None) else out_dir
        raise FocussegError(f"cannot write the evaluation ({exc.strerror or type(exc).__name__})", where) from exc
    return summary


def _write_plots(all_rows: list[dict], labels: Sequence[int], out_dir: Path) -> None:
    """The Dice and NSD violin plots (one violin per label), imported and drawn only here."""
    from focusseg.metrics.plots import violin_plot

    for metric in ("dice", "nsd"):
        values = {str(v): [float(r[metric]) for r in all_rows if r["label"] == v] for v in labels}
        violin_plot(values, metric.upper(), out_dir / f"{metric}_violin.png")
