"""One training run from a raw dataset: check -> fingerprint -> plan -> preprocess -> split -> train -> final
validation (predict the held-out raw cases with the best checkpoint and evaluate them in their original
geometry).

A run folder belongs to one fold and one plan (``run.json`` records the fold, a hash of ``plan.json``, the data
folder and the focusseg version). Training into it again needs ``resume=True`` (continue; only changes listed
in :data:`SAFE_ON_RESUME` are accepted, applied and logged) or ``overwrite=True`` (focusseg's own products are
removed first, nothing else). While a run trains, ``run_dir/.lock`` (``flock``) keeps a second process out.

Several processes (``torchrun --nproc_per_node=N -m focusseg train ...``, :mod:`focusseg.engine.distributed`):
rank 0 holds the lock, checks, fingerprints, plans, writes the splits and preprocesses; the other ranks wait for it
(a failure there reaches them as one line), then read the same plan and store and train with it; rank 0 alone runs
the final validation and writes the summary, which every rank returns.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from focusseg.devices import resolve_device
from focusseg.errors import (
    CheckFailed,
    DatasetError,
    MissingFileError,
    PlanError,
    RunFolderError,
    UsageError,
)
from focusseg.io import discover_cases, load_dataset_spec
from focusseg.io.atomic import save_json
from focusseg.io.checkpoint import LATEST, PREVIOUS
from focusseg.planning.planner import match_deep_supervision
from focusseg.runfolder import (
    clean_run_folder,
    fold_name,
    plan_hash,
    read_plan,
    read_run_info,
    run_lock,
    write_run_info,
)
from focusseg.workflows.plan import finish_plan, plan_dataset, validate_plan_for
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
    from focusseg.data.splits import fold_cases, load_or_create_splits

    own = data_dir / "splits_final.json"
    path = own if own.is_file() else (splits_path or run_dir / "splits_final.json")
    try:
        splits = load_or_create_splits(path, case_ids)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"unreadable splits file ({type(exc).__name__}: {' '.join(str(exc).split())})",
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


def run_training(data_dir: str | Path, run_dir: str | Path, fold: str | int = 0, recipe: dict | None = None,
                 overrides: dict | None = None, time_budget_min: float | None = None, device: str | None = None,
                 resume: bool = False, preprocessed_dir: str | Path | None = None, plan_path: str | Path | None = None,
                 final_validation: bool = True, progress: bool = True, callbacks: list[Any] | None = None,
                 check: bool = True, overwrite: bool = False, init_from: str | Path | None = None,
                 freeze_encoder_epochs: int | None = None, warmup_epochs: int | None = None,
                 splits_path: str | Path | None = None, world: Any = None) -> dict:
    """Train one fold of ``data_dir`` into ``run_dir`` and return the run's summary (also ``summary.json``).

    ``init_from`` (a run folder or checkpoint), ``freeze_encoder_epochs``, ``warmup_epochs``: fine-tune
    (:mod:`focusseg.engine.finetune`; recorded as ``training.init_from`` in the plan, never re-applied on resume).

    ``check``: run the dataset check first (:class:`CheckFailed` with every problem). ``resume``: continue from
    the latest good checkpoint (``RunFolderError`` when there is none); a requested plan that differs from the
    stored one only in :data:`SAFE_ON_RESUME` keys (or the time budget) is applied and logged, any other
    difference is a :class:`UsageError`. ``overwrite``: remove the folder's earlier focusseg products first.
    Without either, a folder holding a trained run, or made for another fold or plan, is refused.
    ``splits_path``: the split file to use (made there on first use) when the data folder has no
    ``splits_final.json`` (default: the run folder's); a cross-validation shares one between its folds.
    ``world``: the processes training together (:class:`~focusseg.engine.distributed.World`); by default the one
    a launcher such as ``torchrun`` describes in the environment, else this process alone."""
    from focusseg.engine.distributed import World, world_for

    args = dict(data_dir=data_dir, run_dir=run_dir, fold=fold, recipe=recipe, overrides=overrides,
                time_budget_min=time_budget_min, device=device, resume=resume, preprocessed_dir=preprocessed_dir,
                plan_path=plan_path, final_validation=final_validation, progress=progress, callbacks=callbacks,
                check=check, overwrite=overwrite, init_from=init_from, freeze_encoder_epochs=freeze_encoder_epochs,
                warmup_epochs=warmup_epochs, splits_path=splits_path)
    if world is None and World.env_says_distributed():
        with world_for(resolve_device(device)) as joined:
            return run_training(**args, world=joined)
    world = world or World()
    if world.active and not resume and restarted_by_torchrun() and ((Path(run_dir) / LATEST).is_file()
                                                                     or (Path(run_dir) / PREVIOUS).is_file()):
        resume = args["resume"] = True  # torchrun restarted the workers after a failure: continue the run
        if world.is_main:
            from focusseg.runfolder import EpochLog

            EpochLog(Path(run_dir)).event("torchrun_restart", restart=int(os.environ["TORCHELASTIC_RESTART_COUNT"]))
    if not world.is_main:
        return _run_follower(Path(run_dir), device, resume, progress, callbacks, world)
    if world.active:
        handoff: dict[str, bool] = {"sent": False}
        try:
            return _run_main(args, world, handoff)
        except BaseException as exc:
            if not handoff["sent"]:  # the others wait for the plan: tell them why there is none
                from focusseg.errors import FocussegError

                what = str(exc) if isinstance(exc, FocussegError) else f"{type(exc).__name__}: {exc}"
                world.broadcast_object({"error": what}, planning=True)
            raise
    return _run_main(args, world, None)


def restarted_by_torchrun(env: dict[str, str] | None = None) -> bool:
    """Whether torchrun's elastic agent restarted this worker group (``--max-restarts``) after a failure."""
    env = os.environ if env is None else env
    try:
        return int(env.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    except ValueError:
        return False


def _run_main(args: dict, world: Any, handoff: dict | None) -> dict:
    """:func:`run_training` on rank 0 (or on the only process)."""
    from focusseg.engine import finetune

    data_dir, run_dir, fold = args["data_dir"], args["run_dir"], args["fold"]
    resume, overwrite = args["resume"], args["overwrite"]
    init_from, freeze_encoder_epochs, warmup_epochs = (args["init_from"], args["freeze_encoder_epochs"],
                                                       args["warmup_epochs"])
    preprocessed_dir, plan_path, splits_path = args["preprocessed_dir"], args["plan_path"], args["splits_path"]

    t_start = time.perf_counter()
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other (continue the run, or start it again)")
    fine_tune = finetune.check_options(init_from, freeze_encoder_epochs, warmup_epochs, run_dir, resume)
    fold = fold_name(fold)
    if not data_dir.is_dir():
        raise MissingFileError("no such dataset folder", data_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError("the run folder exists and is not a folder", run_dir)
    from focusseg.io.paths import is_inside

    if is_inside(data_dir, run_dir):
        raise UsageError(f"the run folder contains the dataset {data_dir}: training would write into the input",
                         run_dir, hint="use another --out, outside the dataset folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        return _run_locked(data_dir, run_dir, fold, args["recipe"], args["overrides"], args["time_budget_min"],
                           args["device"], resume, None if preprocessed_dir is None else Path(preprocessed_dir),
                           None if plan_path is None else Path(plan_path), args["final_validation"],
                           args["progress"], args["callbacks"], args["check"], overwrite, t_start,
                           fine_tune=fine_tune, splits_path=None if splits_path is None else Path(splits_path),
                           world=world, handoff=handoff)


def _run_follower(run_dir: Path, device: str | None, resume: bool, progress: bool, callbacks: list[Any] | None,
                  world: Any) -> dict:
    """:func:`run_training` on a rank other than 0: wait for rank 0's plan, store and splits, train with them
    (writing nothing), and return the summary rank 0 wrote."""
    from focusseg.engine import finetune
    from focusseg.engine.loop import train
    from focusseg.errors import TrainingError
    from focusseg.io import checkpoint as ckpt
    from focusseg.preprocessing.store import PreprocessedStore

    msg = world.broadcast_object(None, planning=True)
    if "error" in msg:
        raise TrainingError(f"rank {world.rank}: rank 0 stopped before training: {msg['error']}", run_dir)
    plan = msg["plan"]
    resume_state = ckpt.load_resume_state(run_dir)[0] if resume else None
    callbacks = [c for c in (callbacks or []) if not getattr(c, "main_process_only", False)]
    callbacks += finetune.callbacks_for(plan, resume, None)
    dev = world.device(resolve_device(device))
    train(PreprocessedStore(msg["store"]), plan, run_dir, msg["train_ids"], msg["val_ids"], dev,
          time_budget_s=msg["budget"], resume=resume, callbacks=callbacks, progress=False, resume_state=resume_state,
          replan=msg["replan"], reserve_final_validation=msg["final_validation"], world=world)
    return world.broadcast_object(None, planning=True)


def _run_locked(data_dir: Path, run_dir: Path, fold: str, recipe: dict | None, overrides: dict | None,
                time_budget_min: float | None, device: str | None, resume: bool, preprocessed_dir: Path | None,
                plan_path: Path | None, final_validation: bool, progress: bool, callbacks: list[Any] | None,
                check: bool, overwrite: bool, t_start: float, fine_tune: dict | None = None,
                splits_path: Path | None = None, world: Any = None, handoff: dict | None = None) -> dict:
    from focusseg.engine import finetune
    from focusseg.engine.loop import train
    from focusseg.io import checkpoint as ckpt
    from focusseg.preprocessing import preprocess_dataset
    from focusseg.runfolder import EpochLog, sanitize

    dev = world.device(resolve_device(device)) if world is not None else resolve_device(device)
    plan_file = run_dir / "plan.json"
    info = None if overwrite else read_run_info(run_dir)
    fresh_hint = "use another --out, or --overwrite to start this one again"
    resume_state = None
    source = None  # a fine-tuning run's source checkpoint (read when the plan is made)
    if resume:
        resume_state, _ = ckpt.load_resume_state(run_dir)  # RunFolderError when there is nothing to resume
        if not plan_file.is_file():
            raise RunFolderError("cannot resume: the run folder has checkpoints but no plan.json", run_dir,
                                 hint=fresh_hint)
        if info is not None and str(info.get("fold")) != fold:
            raise RunFolderError(f"run folder was made for fold {info.get('fold')}, not fold {fold}", run_dir,
                                 hint=f"resume with --fold {info.get('fold')}, or {fresh_hint}")
    elif not overwrite:
        if info is not None and str(info.get("fold")) != fold:
            raise RunFolderError(f"run folder was made for fold {info.get('fold')}, not fold {fold}", run_dir,
                                 hint=fresh_hint)
        if (run_dir / LATEST).is_file() or (run_dir / PREVIOUS).is_file():
            raise RunFolderError(f"run folder already holds a trained run ({LATEST})", run_dir,
                                 hint="continue it with --resume, start it again with --overwrite, or use another "
                                      "--out")
    if check:
        from focusseg.data.check import check_dataset

        problems = check_dataset(data_dir)
        if problems:
            raise CheckFailed(problems)
    if overwrite:
        clean_run_folder(run_dir, preprocessed_dir)
    spec = load_dataset_spec(data_dir)
    replan = False
    changes: dict[str, dict[str, Any]] = {}
    if resume:
        stored = read_plan(plan_file)
        if recipe is not None and not recipe.get("plan") and not (recipe.get("gpu") or {}).get("plan"):
            recipe = None  # the default recipe (an empty plan) asks for nothing: keep the stored recipe
        # the stored form, not this device's: a run resumes as it started (a plan from before recipe forms had
        # the CPU form); heads are matched only if the stored plan's were (its checkpoint has those heads)
        form = (recipe or {}).get("form") or stored.get("recipe_form", "cpu")
        try:
            matched = match_deep_supervision(stored) == stored
        except PlanError:
            matched = False
        requested = finish_plan(read_plan(plan_path) if plan_path is not None else stored, recipe, overrides,
                                 dev.type, form, match_heads=matched)
        requested["recipe"] = recipe.get("name", "default") if recipe is not None else stored.get("recipe")
        finetune.keep_on_resume(stored, requested, fine_tune)  # the recorded init_from stays; never re-applied
        if "recipe_form" not in stored and requested["recipe_form"] == "cpu":
            del requested["recipe_form"]  # an older plan: the CPU form, unrecorded; not a change
        changes = plan_changes(stored, requested)
        validate_plan_for(requested, spec)
        stored_budget = (info or {}).get("time_budget_min")
        if time_budget_min is None:
            time_budget_min = stored_budget
        elif time_budget_min != stored_budget:
            changes["time_budget_min"] = {"from": stored_budget, "to": time_budget_min}
        unsafe = {k: v for k, v in changes.items() if k != "time_budget_min" and not safe_on_resume(k)}
        if unsafe:
            key, v = next(iter(unsafe.items()))
            more = f" (and {len(unsafe) - 1} more change(s))" if len(unsafe) > 1 else ""
            raise UsageError(f"--resume cannot change {key}: stored {json.dumps(v['from'])}, requested "
                             f"{json.dumps(v['to'])}{more}", plan_file,
                             hint="resume without that change, or train a new run (another --out, or --overwrite); "
                                  f"safe on resume: {', '.join(SAFE_ON_RESUME)}, inference.*, --time-budget")
        plan = requested if changes else stored
        replan = "training.max_epochs" in changes or "time_budget_min" in changes
        if changes:
            save_json(plan, plan_file)
            EpochLog(run_dir).event("resume", changes=changes)
            best = run_dir / "checkpoint_best.pt"
            if any(k.startswith("inference.") for k in changes) and best.is_file():
                exported = ckpt.load_checkpoint(best)  # the artefact predict reads carries the plan
                exported["plan"] = plan
                ckpt.save_atomic(exported, best)
    else:
        if plan_path is not None:
            plan = read_plan(plan_path)
        else:
            plan = plan_dataset(data_dir, dev.type, None, run_dir / "fingerprint.json", progress)
        plan = finish_plan(plan, recipe, overrides, dev.type)
        plan["recipe"] = (recipe or {}).get("name", "default")
        source = finetune.prepare(plan, fine_tune)  # records training.init_from; fails before preprocessing
        validate_plan_for(plan, spec)
        if info is not None and info.get("plan_sha256") != plan_hash(plan):
            diff = plan_changes(read_plan(plan_file), plan) if plan_file.is_file() else {}
            what = ""
            if diff:
                key, v = next(iter(diff.items()))
                what = f": {key} was {json.dumps(v['from'])}, now {json.dumps(v['to'])}"
            raise RunFolderError(f"run folder was made for another plan{what}", run_dir, hint=fresh_hint)
        save_json(plan, plan_file)
    write_run_info(run_dir, data_dir, fold, plan, time_budget_min)
    case_ids = [c.case_id for c in discover_cases(data_dir, spec) if c.label is not None]
    train_ids, val_ids = _splits(data_dir, run_dir, case_ids, fold, splits_path)
    store = preprocess_dataset(data_dir, plan, preprocessed_dir or run_dir / "preprocessed", progress=progress,
                               case_ids=train_ids + val_ids)
    budget = None
    if time_budget_min:
        budget = max(1.0, time_budget_min * 60 - (time.perf_counter() - t_start))
    callbacks = [*(callbacks or []), *finetune.callbacks_for(plan, resume, source)]
    if handoff is not None:  # several processes: the others train with this plan, store and split
        world.broadcast_object({"plan": plan, "store": str(store.root), "train_ids": train_ids, "val_ids": val_ids,
                                "budget": budget, "replan": replan, "final_validation": final_validation},
                               planning=True)
        handoff["sent"] = True
    trainer = train(store, plan, run_dir, train_ids, val_ids, dev, time_budget_s=budget, resume=resume,
                    callbacks=callbacks, progress=progress, resume_state=resume_state, replan=replan,
                    reserve_final_validation=final_validation, world=world)
    summary: dict[str, Any] = {"run_dir": str(run_dir), "fold": fold, "best_val_mean_dice": trainer.best,
                               "epochs": trainer.epoch, "iterations": trainer.iteration,
                               "train_seconds": round(trainer.elapsed, 1)}
    if final_validation and val_ids:
        summary["final_validation"] = validate_raw(run_dir, data_dir, val_ids, dev, progress)
        if chooses_postprocessing(plan):  # per label, or per region for region-based training
            summary["postprocessing"] = choose_run_postprocessing(run_dir, spec.foreground_labels,
                                                                  plan.get("regions"))
    summary["total_seconds"] = round(time.perf_counter() - t_start, 1)
    summary = sanitize(summary)  # strict JSON: a run that never validated has best None, not -Infinity
    if world is not None and world.active:
        summary["world_size"] = world.size
    save_json(summary, run_dir / "summary.json")
    from focusseg.reporting import report_after_training

    report_after_training(run_dir)  # run_dir/report.html; a failure is a logged warning, never a failed training
    if handoff is not None:
        world.broadcast_object(summary, planning=True)  # the others return the same summary
    return summary


