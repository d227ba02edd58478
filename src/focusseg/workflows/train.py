"""Train one fold in its run folder: check -> fingerprint -> plan -> preprocess -> split -> train -> final
validation (the held-out raw cases predicted with the best checkpoint, scored in their original geometry).

A run folder belongs to one fold and one plan (:mod:`focusseg.runfolder`). Training into it again needs ``resume``
(only changes in :data:`SAFE_ON_RESUME` are accepted, applied and logged) or ``overwrite`` (focusseg's own products
are removed first, nothing else); ``run_dir/.lock`` keeps a second process out.

Several processes (``torchrun``): rank 0 locks, checks, plans, splits and preprocesses; the others wait for its plan
(a failure there reaches them as one line) and train with it; rank 0 alone validates and writes the summary.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from focusseg.data.check import check_dataset
from focusseg.data.splits import fold_cases, load_or_create_splits
from focusseg.devices import resolve_device
from focusseg.engine import finetune
from focusseg.engine.distributed import World, restarted_by_torchrun, world_for
from focusseg.engine.loop import train
from focusseg.errors import (
    CheckFailed,
    DatasetError,
    FocussegError,
    MissingFileError,
    PlanError,
    RunFolderError,
    TrainingError,
    UsageError,
    one_line,
)
from focusseg.io import discover_cases, load_dataset_spec
from focusseg.io.atomic import save_json
from focusseg.io.checkpoint import LATEST, PREVIOUS, load_checkpoint, load_resume_state, save_atomic
from focusseg.io.paths import is_inside
from focusseg.planning.planner import match_deep_supervision, validate_plan
from focusseg.preprocessing import preprocess_dataset
from focusseg.preprocessing.store import PreprocessedStore
from focusseg.reporting import report_after_training
from focusseg.runfolder import (
    PLAN_JSON,
    EpochLog,
    clean_run_folder,
    fold_name,
    owned_subfolder,
    plan_hash,
    read_plan,
    read_run_info,
    run_lock,
    sanitize,
    write_run_info,
)
from focusseg.workflows.plan import finish_plan, plan_dataset
from focusseg.workflows.validate import choose_run_postprocessing, chooses_postprocessing, validate_raw

#: Plan keys that ``resume`` may change (more epochs, validation settings, loading, anything of inference);
#: any other difference between the stored and the requested plan is refused. The time budget is safe too.
SAFE_ON_RESUME = ("training.max_epochs", "training.val_every", "training.val_max_cases", "training.in_memory",
                  "training.validation", "training.val_patches", "training.val_full_every", "training.compile",
                  "training.channels_last", "training.loader")
SAFE_PREFIXES_ON_RESUME = ("inference.",)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or not d:
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


_ABSENT = "(absent)"


def plan_changes(stored: dict, requested: dict) -> dict[str, dict[str, Any]]:
    """``{dotted key: {"from": stored, "to": requested}}`` for every leaf that differs."""
    a, b = _flatten(stored), _flatten(requested)
    return {k: {"from": a.get(k, _ABSENT), "to": b.get(k, _ABSENT)}
            for k in sorted(set(a) | set(b)) if a.get(k, _ABSENT) != b.get(k, _ABSENT)}


def safe_on_resume(key: str) -> bool:
    return key in SAFE_ON_RESUME or key.startswith(SAFE_PREFIXES_ON_RESUME) or any(
        key.startswith(s + ".") for s in SAFE_ON_RESUME)


def _splits(data_dir: Path, run_dir: Path, case_ids: list[str], fold: str,
            splits_path: Path | None = None) -> tuple[list[str], list[str]]:
    """(train, val) ids of ``fold`` from the data folder's ``splits_final.json`` (else the run folder's, made on
    first use); a malformed file, a fold it lacks or a case it names that the dataset lacks are refused."""
    own = data_dir / "splits_final.json"
    path = own if own.is_file() else (splits_path or run_dir / "splits_final.json")
    try:
        splits = load_or_create_splits(path, case_ids)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"unreadable splits file ({one_line(exc, typed=True)})",
                           path) from exc
    if not isinstance(splits, list) or not splits or not all(
            isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("val"), list)
            and all(isinstance(c, str) for c in s["train"] + s["val"]) for s in splits):
        raise DatasetError('not a splits file: expected a list of {"train": [case ids], "val": [case ids]}', path)
    if fold != "all" and not int(fold) < len(splits):
        raise UsageError(f"fold {fold} does not exist: {path.name} has {len(splits)} fold(s) "
                         f"(0..{len(splits) - 1}, or 'all')", path)
    train_ids, val_ids = fold_cases(splits, fold)
    known = set(case_ids)
    missing = sorted({c for c in train_ids + val_ids if c not in known})
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(f"fold {fold} names {len(missing)} case(s) that the dataset does not have "
                           f"(labelled cases in {data_dir}): {shown}", path,
                           hint="the split file is stale: fix it, or delete it to have a new one made")
    if not train_ids:
        raise DatasetError(f"fold {fold} has no training cases", path)
    return train_ids, val_ids


@dataclass(frozen=True)
class TrainRequest:
    """What one training run is asked to do (the arguments of :func:`run_training`, checked once).

    Args:
        data_dir: the raw dataset (nnU-Net v2 layout).
        run_dir: the run folder (made if absent; locked while training).
        fold: a fold number of the split file, or ``"all"``.
        recipe: a recipe (``focusseg.recipes``), or None for the default plan.
        overrides: ``--set`` plan overrides (dotted keys to values).
        time_budget_min: wall-clock minutes for the whole command, or None for the plan's epochs.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (None: auto).
        resume: continue from the latest good checkpoint.
        overwrite: remove the folder's earlier focusseg products first.
        preprocessed_dir: where the preprocessed store lives (default: ``run_dir/preprocessed``).
        plan_path: a plan file to train instead of planning the dataset.
        final_validation: predict and score the held-out raw cases at the end.
        progress: show progress bars.
        callbacks: observers and fine-tuning parts called by the loop.
        check: check the dataset first.
        init_from, freeze_encoder_epochs, warmup_epochs: fine-tuning (:mod:`focusseg.engine.finetune`).
        splits_path: the split file to use when the data folder has none.
    """

    data_dir: Path
    run_dir: Path
    fold: str = "0"
    recipe: dict | None = None
    overrides: dict | None = None
    time_budget_min: float | None = None
    device: str | None = None
    resume: bool = False
    overwrite: bool = False
    preprocessed_dir: Path | None = None
    plan_path: Path | None = None
    final_validation: bool = True
    progress: bool = True
    callbacks: tuple[Any, ...] = ()
    check: bool = True
    init_from: str | Path | None = None
    freeze_encoder_epochs: int | None = None
    warmup_epochs: int | None = None
    splits_path: Path | None = None


def _path(p: str | Path | None) -> Path | None:
    return None if p is None else Path(p)


def run_training(data_dir: str | Path, run_dir: str | Path, fold: str | int = 0, recipe: dict | None = None,
                 overrides: dict | None = None, time_budget_min: float | None = None, device: str | None = None,
                 resume: bool = False, preprocessed_dir: str | Path | None = None, plan_path: str | Path | None = None,
                 final_validation: bool = True, progress: bool = True, callbacks: list[Any] | None = None,
                 check: bool = True, overwrite: bool = False, init_from: str | Path | None = None,
                 freeze_encoder_epochs: int | None = None, warmup_epochs: int | None = None,
                 splits_path: str | Path | None = None, world: Any = None) -> dict:
    """Train one fold of ``data_dir`` into ``run_dir`` and return the run's summary (also ``summary.json``).

    The arguments are those of :class:`TrainRequest`. A folder holding a trained run, or made for another fold or
    plan, is refused unless ``resume`` (a requested plan that differs from the stored one only in
    :data:`SAFE_ON_RESUME` keys, or the time budget, is applied and logged) or ``overwrite``. Fine-tuning options
    are recorded as ``training.init_from`` in the plan and never re-applied on resume.

    Args:
        world: the processes training together (:class:`~focusseg.engine.distributed.World`); by default the one
            a launcher such as ``torchrun`` describes in the environment, else this process alone.

    Returns:
        The run's summary (best validation Dice, epochs, iterations, final validation, post-processing).

    Raises:
        UsageError: contradictory options, a fold the split lacks, an unsafe change on resume.
        RunFolderError: the folder is in use, holds another run, or has nothing to resume.
        CheckFailed: the dataset check found problems.
    """
    request = TrainRequest(Path(data_dir), Path(run_dir), str(fold), recipe, overrides, time_budget_min, device,
                           resume, overwrite, _path(preprocessed_dir), _path(plan_path), final_validation, progress,
                           tuple(callbacks or ()), check, init_from, freeze_encoder_epochs, warmup_epochs,
                           _path(splits_path))
    return train_fold(request, world)


def train_fold(request: TrainRequest, world: Any = None) -> dict:
    """:func:`run_training` for a :class:`TrainRequest`: join the processes a launcher started, then rank 0 plans
    and trains (:func:`_run_main`) while the others wait for its plan and train with it (:func:`_run_follower`)."""
    if world is None and World.env_says_distributed():
        with world_for(resolve_device(request.device)) as joined:
            return train_fold(request, joined)
    world = world or World()
    run_dir = request.run_dir
    if world.active and not request.resume and restarted_by_torchrun() and (
            (run_dir / LATEST).is_file() or (run_dir / PREVIOUS).is_file()):
        request = replace(request, resume=True)  # torchrun restarted the workers after a failure: continue the run
        if world.is_main:
            EpochLog(run_dir).event("torchrun_restart", restart=int(os.environ["TORCHELASTIC_RESTART_COUNT"]))
    if not world.is_main:
        return _run_follower(request, world)
    if world.active:
        handoff: dict[str, bool] = {"sent": False}
        try:
            return _run_main(request, world, handoff)
        except BaseException as exc:
            if not handoff["sent"]:  # the others wait for the plan: tell them why there is none
                what = str(exc) if isinstance(exc, FocussegError) else f"{type(exc).__name__}: {exc}"
                world.broadcast_object({"error": what}, planning=True)
            raise
    return _run_main(request, world, None)


def _run_main(req: TrainRequest, world: Any, handoff: dict | None) -> dict:
    """:func:`run_training` on rank 0 (or on the only process): check the options, lock the folder, train."""
    t_start = time.perf_counter()
    if req.resume and req.overwrite:
        raise UsageError("--resume and --overwrite contradict each other (continue the run, or start it again)")
    fine_tune = finetune.check_options(req.init_from, req.freeze_encoder_epochs, req.warmup_epochs, req.run_dir,
                                       req.resume)
    req = replace(req, fold=fold_name(req.fold))
    if not req.data_dir.is_dir():
        raise MissingFileError("no such dataset folder", req.data_dir)
    if req.run_dir.exists() and not req.run_dir.is_dir():
        raise UsageError("the run folder exists and is not a folder", req.run_dir)
    if is_inside(req.data_dir, req.run_dir):
        raise UsageError(f"the run folder contains the dataset {req.data_dir}: training would write into the input",
                         req.run_dir, hint="use another --out, outside the dataset folder")
    req.run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(req.run_dir):
        return _run_locked(req, t_start, fine_tune, world, handoff)


def _run_follower(req: TrainRequest, world: Any) -> dict:
    """:func:`run_training` on a rank other than 0: wait for rank 0's plan, store and splits, train with them
    (writing nothing), and return the summary rank 0 wrote."""
    msg = world.broadcast_object(None, planning=True)
    if "error" in msg:
        raise TrainingError(f"rank {world.rank}: rank 0 stopped before training: {msg['error']}", req.run_dir)
    plan = msg["plan"]
    resume_state = load_resume_state(req.run_dir)[0] if req.resume else None
    callbacks = [c for c in req.callbacks if not getattr(c, "main_process_only", False)]
    callbacks += finetune.callbacks_for(plan, req.resume, None)
    dev = world.device(resolve_device(req.device))
    train(PreprocessedStore(msg["store"]), plan, req.run_dir, msg["train_ids"], msg["val_ids"], dev,
          time_budget_s=msg["budget"], resume=req.resume, callbacks=callbacks, progress=False,
          resume_state=resume_state, replan=msg["replan"], reserve_final_validation=msg["final_validation"],
          world=world)
    return world.broadcast_object(None, planning=True)


def _run_locked(req: TrainRequest, t_start: float, fine_tune: dict | None, world: Any,
                handoff: dict | None) -> dict:
    """The run in its locked folder, as named steps: refuse a folder that holds another run, check the dataset,
    clean, make or resume the plan, split, preprocess, hand off to the other ranks, train, validate, report. A
    validation folder that is a symlink is refused before anything is trained (nothing is written through it)."""
    dev = world.device(resolve_device(req.device)) if world is not None else resolve_device(req.device)
    info = None if req.overwrite else read_run_info(req.run_dir)
    resume_state = _refuse_reuse(req, info)
    if req.check:
        problems = check_dataset(req.data_dir)
        if problems:
            raise CheckFailed(problems)
    if req.overwrite:
        clean_run_folder(req.run_dir, req.preprocessed_dir)
    if req.final_validation:  # refused now, not after training: the validation is never written through a link
        for sub in ("predictions", "reference"):
            owned_subfolder(req.run_dir, "validation", sub)
    spec = load_dataset_spec(req.data_dir)
    source = None  # a fine-tuning run's source checkpoint (read when the plan is made)
    if req.resume:
        plan, replan, budget_min = _resumed_plan(req, spec, info, dev.type, fine_tune)
        req = replace(req, time_budget_min=budget_min)
    else:
        plan, source = _new_plan(req, spec, info, dev.type, fine_tune)
        replan = False
    write_run_info(req.run_dir, req.data_dir, req.fold, plan, req.time_budget_min)
    case_ids = [c.case_id for c in discover_cases(req.data_dir, spec) if c.label is not None]
    train_ids, val_ids = _splits(req.data_dir, req.run_dir, case_ids, req.fold, req.splits_path)
    store = preprocess_dataset(req.data_dir, plan, req.preprocessed_dir or req.run_dir / "preprocessed",
                               progress=req.progress, case_ids=train_ids + val_ids)
    budget = None
    if req.time_budget_min:
        budget = max(1.0, req.time_budget_min * 60 - (time.perf_counter() - t_start))
    callbacks = [*req.callbacks, *finetune.callbacks_for(plan, req.resume, source)]
    if handoff is not None:  # several processes: the others train with this plan, store and split
        world.broadcast_object({"plan": plan, "store": str(store.root), "train_ids": train_ids, "val_ids": val_ids,
                                "budget": budget, "replan": replan, "final_validation": req.final_validation},
                               planning=True)
        handoff["sent"] = True
    trainer = train(store, plan, req.run_dir, train_ids, val_ids, dev, time_budget_s=budget, resume=req.resume,
                    callbacks=callbacks, progress=req.progress, resume_state=resume_state, replan=replan,
                    reserve_final_validation=req.final_validation, world=world)
    summary: dict[str, Any] = {"run_dir": str(req.run_dir), "fold": req.fold, "best_val_mean_dice": trainer.best,
                               "epochs": trainer.epoch, "iterations": trainer.iteration,
                               "train_seconds": round(trainer.elapsed, 1)}
    if req.final_validation and val_ids:
        summary["final_validation"] = validate_raw(req.run_dir, req.data_dir, val_ids, dev, req.progress)
        if chooses_postprocessing(plan):  # per label, or per region for region-based training
            summary["postprocessing"] = choose_run_postprocessing(req.run_dir, spec.foreground_labels,
                                                                  plan.get("regions"))
    summary["total_seconds"] = round(time.perf_counter() - t_start, 1)
    summary = sanitize(summary)  # strict JSON: a run that never validated has best None, not -Infinity
    if world is not None and world.active:
        summary["world_size"] = world.size
    save_json(summary, req.run_dir / "summary.json")
    report_after_training(req.run_dir)  # run_dir/report.html; a failure is a logged warning, never a failed training
    if handoff is not None:
        world.broadcast_object(summary, planning=True)  # the others return the same summary
    return summary


_FRESH_HINT = "use another --out, or --overwrite to start this one again"


def _refuse_reuse(req: TrainRequest, info: dict | None) -> dict | None:
    """The run folder policy: a resume needs a checkpoint and a plan of the same fold (returns the state to resume
    from); a new run refuses a folder made for another fold or holding a trained run (``overwrite`` skips both)."""
    run_dir = req.run_dir
    if not req.resume and req.overwrite:
        return None
    resume_state = None
    if req.resume:
        resume_state, _ = load_resume_state(run_dir)  # RunFolderError when there is nothing to resume
        if not (run_dir / PLAN_JSON).is_file():
            raise RunFolderError("cannot resume: the run folder has checkpoints but no plan.json", run_dir,
                                 hint=_FRESH_HINT)
    if info is not None and str(info.get("fold")) != req.fold:
        again = f"resume with --fold {info.get('fold')}, or {_FRESH_HINT}" if req.resume else _FRESH_HINT
        raise RunFolderError(f"run folder was made for fold {info.get('fold')}, not fold {req.fold}", run_dir,
                             hint=again)
    if not req.resume and ((run_dir / LATEST).is_file() or (run_dir / PREVIOUS).is_file()):
        raise RunFolderError(f"run folder already holds a trained run ({LATEST})", run_dir,
                             hint="continue it with --resume, start it again with --overwrite, or use another --out")
    return resume_state


def _resumed_plan(req: TrainRequest, spec: Any, info: dict | None, device_type: str,
                  fine_tune: dict | None) -> tuple[dict, bool, float | None]:
    """The plan a resumed run trains: the stored one, with the requested changes that are safe on resume applied
    and logged (any other change is refused). Returns ``(plan, replan, time_budget_min)``: ``replan`` when the
    schedule's length changed (more epochs, another budget)."""
    plan_file = req.run_dir / PLAN_JSON
    stored = read_plan(plan_file)
    recipe = req.recipe
    if recipe is not None and not recipe.get("plan") and not (recipe.get("gpu") or {}).get("plan"):
        recipe = None  # the default recipe (an empty plan) asks for nothing: keep the stored recipe
    # the stored form, not this device's: a run resumes as it started (a plan from before recipe forms had
    # the CPU form); heads are matched only if the stored plan's were (its checkpoint has those heads)
    form = (recipe or {}).get("form") or stored.get("recipe_form", "cpu")
    try:
        matched = match_deep_supervision(stored) == stored
    except PlanError:
        matched = False
    requested = finish_plan(read_plan(req.plan_path) if req.plan_path is not None else stored, recipe,
                            req.overrides, device_type, form, match_heads=matched)
    requested["recipe"] = recipe.get("name", "default") if recipe is not None else stored.get("recipe")
    finetune.keep_on_resume(stored, requested, fine_tune)  # the recorded init_from stays; never re-applied
    if "recipe_form" not in stored and requested["recipe_form"] == "cpu":
        del requested["recipe_form"]  # an older plan: the CPU form, unrecorded; not a change
    changes = plan_changes(stored, requested)
    validate_plan(requested, spec)
    budget_min = req.time_budget_min
    stored_budget = (info or {}).get("time_budget_min")
    if budget_min is None:
        budget_min = stored_budget
    elif budget_min != stored_budget:
        changes["time_budget_min"] = {"from": stored_budget, "to": budget_min}
    unsafe = {k: v for k, v in changes.items() if k != "time_budget_min" and not safe_on_resume(k)}
    if unsafe:
        key, v = next(iter(unsafe.items()))
        more = f" (and {len(unsafe) - 1} more change(s))" if len(unsafe) > 1 else ""
        raise UsageError(f"--resume cannot change {key}: stored {json.dumps(v['from'])}, requested "
                         f"{json.dumps(v['to'])}{more}", plan_file,
                         hint="resume without that change, or train a new run (another --out, or --overwrite); "
                              f"safe on resume: {', '.join(SAFE_ON_RESUME)}, inference.*, --time-budget")
    plan = requested if changes else stored
    if changes:
        save_json(plan, plan_file)
        EpochLog(req.run_dir).event("resume", changes=changes)
        best = req.run_dir / "checkpoint_best.pt"
        if any(k.startswith("inference.") for k in changes) and best.is_file():
            exported = load_checkpoint(best)  # the artefact predict reads carries the plan
            exported["plan"] = plan
            save_atomic(exported, best)
    return plan, "training.max_epochs" in changes or "time_budget_min" in changes, budget_min


def _new_plan(req: TrainRequest, spec: Any, info: dict | None, device_type: str,
              fine_tune: dict | None) -> tuple[dict, Any]:
    """The plan a new run trains (a plan file, or the dataset planned here), recorded in ``plan.json``; a folder
    made for another plan is refused. Returns ``(plan, fine-tuning source or None)``."""
    plan_file = req.run_dir / PLAN_JSON
    if req.plan_path is not None:
        plan = read_plan(req.plan_path)
    else:
        plan = plan_dataset(req.data_dir, device_type, None, req.run_dir / "fingerprint.json", req.progress)
    plan = finish_plan(plan, req.recipe, req.overrides, device_type)
    plan["recipe"] = (req.recipe or {}).get("name", "default")
    source = finetune.prepare(plan, fine_tune)  # records training.init_from; fails before preprocessing
    validate_plan(plan, spec)
    if info is not None and info.get("plan_sha256") != plan_hash(plan):
        diff = plan_changes(read_plan(plan_file), plan) if plan_file.is_file() else {}
        what = ""
        if diff:
            key, v = next(iter(diff.items()))
            what = f": {key} was {json.dumps(v['from'])}, now {json.dumps(v['to'])}"
        raise RunFolderError(f"run folder was made for another plan{what}", req.run_dir, hint=_FRESH_HINT)
    save_json(plan, plan_file)
    return plan, source
