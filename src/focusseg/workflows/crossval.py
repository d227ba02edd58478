"""Cross-validation as one workflow (nnU-Net's five folds, ``nnUNetv2_train ... FOLD`` x 5 and
``nnUNetv2_find_best_configuration``'s pooled summary):

    CV/
      plan_planner.json      the planner's plan for this data and device (before the recipe), made once
      fingerprint.json       keyed by the dataset's files
      splits_final.json      the folds (the data folder's own splits_final.json wins when present)
      preprocessed/          ONE store for every fold (keyed by the plan's preprocessing fields)
      fold_K/                an ordinary run folder per fold (plan.json, checkpoints, validation/, summary.json)
      validation/            every finished fold's held-out predictions, pooled (links into fold_K/validation)
                             + metrics.csv / summary.json of the pooled evaluation
      postprocessing.json    chosen on the pooled validation predictions; `predict CV` applies it to the ensemble
      crossval.json          per-fold and pooled Dice, the folds, the plan's hash, the recipe

* Each fold is trained by :func:`focusseg.workflows.train.run_training` with the same planner plan, recipe and
  overrides, the shared store and the shared split file, so every fold's ``plan.json`` is the same plan.
* ``folds``: a list (``0,1,2``), a range (``0-4``), ``all`` (every fold of the split file) or one fold (``3``): a fold
  can be trained or resumed alone, on another machine, into the same CV folder (one lock per fold folder).
* A fold whose ``summary.json`` exists is finished and kept (``overwrite`` trains it again); a fold with
  checkpoints but no summary is continued with ``resume`` (without it, its run folder refuses, naming itself).
* After training, every finished fold (also ones trained earlier or elsewhere) is pooled: the pooled metrics are the
  evaluator's over all held-out cases together (each case predicted by the fold that did not train on it), as
  nnU-Net's ``summary.json`` of the cross-validation; post-processing is chosen on those pooled predictions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from focusseg import __version__
from focusseg.data.check import check_dataset
from focusseg.data.splits import load_or_create_splits
from focusseg.devices import resolve_device
from focusseg.errors import CheckFailed, DatasetError, MissingFileError, RunFolderError, UsageError, one_line
from focusseg.inference.postprocess_selection import choose_postprocessing_for_run
from focusseg.io.atomic import save_json
from focusseg.io.dataset import discover_cases, load_dataset_spec
from focusseg.io.jsonfile import read_json
from focusseg.io.paths import is_inside
from focusseg.metrics.files import label_files
from focusseg.runfolder import (
    CROSSVAL_JSON,
    clear_stale,
    fold_dirs,
    owned_subfolder,
    plan_hash,
    read_run_info,
    replace_link,
)
from focusseg.workflows.plan import plan_dataset
from focusseg.workflows.train import run_training
from focusseg.workflows.validate import chooses_postprocessing, evaluate_for_plan, mean_foreground_dice

PLANNER_PLAN = "plan_planner.json"


def parse_folds(text: str | Sequence[int] | int, n_folds: int) -> list[int]:
    """``"0-4"`` -> [0..4], ``"0,2"`` -> [0, 2], ``"all"`` -> every fold, ``"3"`` -> [3]; each in ``0..n_folds-1``."""
    if isinstance(text, int):
        parts: list[str] = [str(text)]
    elif isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
    else:
        parts = [str(int(p)) for p in text]
    if parts == ["all"]:
        return list(range(n_folds))
    folds: list[int] = []
    for part in parts:
        lo, sep, hi = part.partition("-")
        try:
            rng = range(int(lo), int(hi) + 1) if sep else range(int(lo), int(lo) + 1)
        except ValueError:
            raise UsageError(f"--folds {text!r}: {part!r} is not a fold number, a range like 0-4, or 'all'") from None
        if not rng or int(lo) < 0:
            raise UsageError(f"--folds {text!r}: {part!r} is an empty or negative range")
        folds.extend(rng)
    if not folds:
        raise UsageError(f"--folds {text!r} names no fold")
    bad = [f for f in folds if f >= n_folds]
    if bad:
        raise UsageError(f"--folds {text!r}: fold {bad[0]} does not exist (the split file has {n_folds} folds, "
                         f"0..{n_folds - 1})")
    return sorted(set(folds))


def _shared_plan(data_dir: Path, cv_dir: Path, device_type: str, progress: bool) -> Path:
    """The planner's plan for the CV, made once (``plan_planner.json``); later calls reuse it."""
    path = cv_dir / PLANNER_PLAN
    if not path.is_file():
        save_json(plan_dataset(data_dir, device_type, None, cv_dir / "fingerprint.json", progress), path)
    return path


def _splits_file(data_dir: Path, cv_dir: Path, case_ids: list[str]) -> tuple[Path, int]:
    own = data_dir / "splits_final.json"
    path = own if own.is_file() else cv_dir / "splits_final.json"
    try:
        splits = load_or_create_splits(path, case_ids)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"unreadable splits file ({one_line(exc)})", path) from exc
    return path, len(splits)


def run_crossval(data_dir: str | Path, cv_dir: str | Path, folds: str | Sequence[int] = "all",
                 recipe: dict | None = None, overrides: dict | None = None, time_budget_min: float | None = None,
                 device: str | None = None, resume: bool = False, overwrite: bool = False, check: bool = True,
                 progress: bool = True, callbacks: list[Any] | None = None,
                 on_fold: Any = None) -> dict[str, Any]:
    """Train ``folds`` into ``cv_dir/fold_K`` (module docstring), pool every finished fold and write
    ``crossval.json``. ``on_fold(fold, status, summary)`` is called after each fold (for progress output)."""
    data_dir, cv_dir = Path(data_dir), Path(cv_dir)
    if not data_dir.is_dir():
        raise MissingFileError("no such dataset folder", data_dir)
    if is_inside(data_dir, cv_dir):
        raise UsageError(f"the CV folder contains the dataset {data_dir}: training would write into the input",
                         cv_dir, hint="use another --out, outside the dataset folder")
    if cv_dir.exists() and not cv_dir.is_dir():
        raise UsageError("the CV folder exists and is not a folder", cv_dir)
    if check:
        problems = check_dataset(data_dir)
        if problems:
            raise CheckFailed(problems)
    cv_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    spec = load_dataset_spec(data_dir)
    case_ids = [c.case_id for c in discover_cases(data_dir, spec) if c.label is not None]
    splits_path, n_folds = _splits_file(data_dir, cv_dir, case_ids)
    chosen = parse_folds(folds, n_folds)
    planner_plan = _shared_plan(data_dir, cv_dir, dev.type, progress)
    trained: dict[int, str] = {}
    for k in chosen:
        fold_dir = cv_dir / f"fold_{k}"
        finished = (fold_dir / "summary.json").is_file()
        if not finished or overwrite:  # trained here: never into a folder a link leads to
            owned_subfolder(cv_dir, fold_dir.name)
        if finished and not overwrite:
            trained[k] = "kept"
            if on_fold is not None:
                on_fold(k, "kept", _read_json(fold_dir / "summary.json"))
            continue
        started = (fold_dir / "checkpoint_latest.pt").is_file() or (fold_dir / "checkpoint_previous.pt").is_file()
        summary = run_training(data_dir, fold_dir, fold=k, recipe=recipe, overrides=overrides,
                               time_budget_min=time_budget_min, device=device,
                               resume=resume and started and not overwrite,
                               preprocessed_dir=cv_dir / "preprocessed", plan_path=planner_plan,
                               splits_path=splits_path, progress=progress, callbacks=callbacks, check=False,
                               overwrite=overwrite)
        trained[k] = "resumed" if resume and started and not overwrite else "trained"
        if on_fold is not None:
            on_fold(k, trained[k], summary)
    result = pool_crossval(cv_dir, data_dir, progress=progress)
    result["this_call"] = {str(k): v for k, v in trained.items()}
    return result


def _read_json(path: Path) -> dict:
    """A JSON object from a fold folder (bounded: :func:`~focusseg.io.jsonfile.read_json`), else one line."""
    data = read_json(path, RunFolderError, allow_nan=False)
    if not isinstance(data, dict):
        raise RunFolderError("not a JSON object", path)
    return data


def pool_crossval(cv_dir: str | Path, data_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Pool every finished fold of ``cv_dir``: link each fold's held-out predictions and references into
    ``cv_dir/validation``, evaluate them together, choose post-processing on them, and write
    ``crossval.json`` (returned). Every fold must have been trained with the same plan."""
    cv_dir = Path(cv_dir)
    done = fold_dirs(cv_dir)
    if not done:
        raise RunFolderError("no finished fold (fold_K with summary.json and checkpoint_best.pt)", cv_dir,
                             hint="train folds first: focusseg crossval DATA --out CV --folds 0-4")
    plans = {d.name: _read_json(d / "plan.json") for d in done}
    hashes = {name: plan_hash(p) for name, p in plans.items()}
    if len(set(hashes.values())) > 1:
        first = next(iter(hashes))
        other = next(n for n in hashes if hashes[n] != hashes[first])
        raise RunFolderError(f"{first} and {other} were trained with different plans: their predictions do not "
                             "pool into one cross-validation", cv_dir / other / "plan.json",
                             hint=f"train {other} again with --overwrite, or use another CV folder")
    plan = plans[done[0].name]
    labels = _plan_labels(plan, done[0] / "plan.json")
    pred_dir = owned_subfolder(cv_dir, "validation", "predictions")
    ref_dir = owned_subfolder(cv_dir, "validation", "reference")
    keep: set[str] = set()
    per_fold: dict[str, Any] = {}
    for d in done:
        summary = _read_json(d / "summary.json")
        fv = summary.get("final_validation")
        fv = fv if isinstance(fv, dict) else {}
        fold_pred, fold_ref = d / "validation" / "predictions", d / "validation" / "reference"
        cases = sorted(p.name for p in label_files(fold_pred).values()) if fold_pred.is_dir() else []
        for name in cases:
            if name in keep:
                raise RunFolderError(f"case {name} is held out by two folds", d / "validation" / "predictions",
                                     hint="the folds come from different split files: retrain them into one CV")
            keep.add(name)
            replace_link((fold_pred / name).resolve(), pred_dir / name)
            ref = fold_ref / name
            replace_link(ref.resolve() if ref.exists() else ref, ref_dir / name)
        per_fold[d.name[5:]] = {"run_dir": d.name, "val_cases": len(cases), "mean_dice": fv.get("mean_dice"),
                                "dice_per_label": fv.get("dice_per_label"), "epochs": summary.get("epochs"),
                                "iterations": summary.get("iterations"),
                                "train_seconds": summary.get("train_seconds")}
    for folder in (pred_dir, ref_dir):  # cases of folds no longer finished (or removed) leave the pool
        clear_stale(folder, keep)
    pooled: dict[str, Any] = {"cases": len(keep)}
    post: dict[str, Any] | None = None
    if keep:
        summary = evaluate_for_plan(pred_dir, ref_dir, cv_dir / "validation", plan, progress)  # regions too
        pooled.update(mean_dice=mean_foreground_dice(summary),
                      dice_per_label={k: v["dice"]["mean"] for k, v in summary.get("per_label", {}).items()})
        if chooses_postprocessing(plan):
            res = choose_postprocessing_for_run(cv_dir, labels, regions=plan.get("regions"))
            post = {"steps": res["steps"], "dice_before": res["dice_before"], "dice_after": res["dice_after"]}
    result = {"folds": per_fold, "pooled": pooled, "postprocessing": post, "plan_sha256": hashes[done[0].name],
              "recipe": plan.get("recipe"), "recipe_form": plan.get("recipe_form"),
              "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else _data_dir_of(done[0]),
              "focusseg_version": __version__}
    save_json(result, cv_dir / CROSSVAL_JSON)
    return result


def _data_dir_of(run_dir: Path) -> str | None:
    """The data folder a fold's ``run.json`` records (None when it records none or cannot be read: it is only
    recorded in ``crossval.json``)."""
    try:
        info = read_run_info(run_dir)
    except RunFolderError:
        return None
    value = (info or {}).get("data_dir")
    return value if isinstance(value, str) and value else None


def _plan_labels(plan: dict, source: Path) -> list[int]:
    """The foreground label values of a fold's plan (``labels``: names to integers), else one line."""
    raw = plan.get("labels")
    values: list[int] = []
    for v in (raw.values() if isinstance(raw, dict) else ()):
        if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).strip().isdigit():
            break
        values.append(int(v))
    if not raw or len(values) != len(raw) or not all(v < 2**15 for v in values):
        raise RunFolderError("its labels are not a map of names to label values (0..32767)", source)
    return sorted(v for v in values if v != 0)


__all__ = ["parse_folds", "pool_crossval", "run_crossval"]
