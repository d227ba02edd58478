"""The training loop: short, top to bottom, with strategies attached at fixed points.

    for each epoch:
        for each iteration:  requests <- sampler;  batch <- loader;  batch <- augment (on the device)
                             per-sample loss <- loss(network(batch), class weights)      -> after_loss
                             backward, clip, step, lr;  sampler.update(step)             -> after_batch
        validation (pseudo-Dice on fixed held-out patches; whole volumes every K epochs)
                                                     -> class weighter, metric-driven LR, best
        checkpoint `latest` (+ `best`), JSONL log, curve                                 -> on_epoch_end

Everything stateful is checkpointed at every epoch end (network, optimiser, LR, sampler, class weighter,
scaler, RNGs, counters; the previous checkpoint is kept as ``checkpoint_previous.pt``), so ``resume``
continues exactly where the last checkpoint stopped: a run killed and resumed on CPU ends with the same
weights as an uninterrupted one.

With a time budget the loop measures what an epoch costs (seconds per iteration, per validation, and the estimated
cost of the run's final whole-volume validation, which is reserved) and sets the total number of iterations that
fit the budget at iteration granularity (:func:`fit_iterations`; stored in the checkpoint with the timing), so
the poly schedule decays to zero at the budget and the last epoch may be partial. The fit is made after the first
epoch and made again after every later one from the epochs measured so far (:func:`measure_timing`: the first
epoch, which pays the warm-up, is left out once a second exists). When the first epoch alone set the schedule,
bench_finetune's 8-minute Hippocampus source run, whose first epoch took 22 % longer than the mean of the rest,
ended after 6.6 minutes. Refitting follows the machine's real speed; the LR's end moves a few iterations at a
time. Training also stops when
the budget less the reserve is spent (checked after every iteration, then one last validation), keeping the best
checkpoint. ``--resume`` with a longer ``--time-budget`` or ``training.max_epochs`` refits the schedule from the
stored timing.

Devices: checkpoints load onto the CPU and each part moves itself (network and optimiser state to the
parameters' device, RNG states set from CPU tensors, sampler and class-weighter state stay on the CPU), so a run
resumes on another device than it started on (CPU <-> CUDA); the checkpoint records the device and autocast
dtype it was written with, and a switch is logged as a ``device_switch`` event line (with what happened to the
fp16 GradScaler state: started fresh, or ignored). On CUDA, training runs with ``cudnn.benchmark`` and TF32
matmuls/convolutions (nnU-Net's settings; restored afterwards).

Host syncs: at most one per iteration in the default path (the step's read of its loss and gradient norm,
:mod:`focusseg.engine.task`); class weights live on the device and are copied again only when they change.

Numerical guard: a step with a NaN/inf loss or gradient is skipped (:mod:`focusseg.engine.task`) and counted
(``nonfinite_steps`` in each epoch's log line); ``training.max_nonfinite_steps`` (25) such steps in a row stop
training with a :class:`~focusseg.errors.TrainingError`. A network with a non-finite weight is never saved as
``checkpoint_best.pt``, and a NaN validation Dice never counts as best.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from focusseg.data.loader import build_loader
from focusseg.engine.build import build_sampler
from focusseg.engine.distributed import World, seed_for_rank
from focusseg.engine.events import call
from focusseg.engine.task import Parts, build_parts
from focusseg.engine.validation import DEFAULT_FULL_EVERY, MODES, PatchValidator, dice_from_counts, validate_volumes
from focusseg.io import checkpoint as ckpt
from focusseg.nets.from_plan import amp_dtype
from focusseg.preprocessing.store import PreprocessedStore
from focusseg.runfolder import EpochLog


@dataclass
class Trainer:
    """What callbacks see: the plan, the parts and the counters of the run."""

    plan: dict
    run_dir: Path
    parts: Parts
    sampler: Any
    device: torch.device
    train_ids: list[str]
    val_ids: list[str]
    epoch: int = 0
    iteration: int = 0
    max_iterations: int = 0
    best: float = -math.inf
    elapsed: float = 0.0
    history: list[dict] = field(default_factory=list)
    nonfinite_run: int = 0  # consecutive skipped (non-finite) steps, across epochs
    timing: dict[str, float] = field(default_factory=dict)  # measured costs that fit the schedule to a budget
    world: World = field(default_factory=World)  # the processes training together (one: a no-op)


class DeviceWeights:
    """The class weighter's weights on the training device, copied again only when they change (the weighter
    returns a CPU tensor; comparing it with the last copy's source costs no device sync)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._source: torch.Tensor | None = None
        self._on_device: torch.Tensor | None = None
        self.copies = 0

    def get(self, weighter: Any | None) -> torch.Tensor | None:
        if weighter is None:
            return None
        w = weighter.weights()
        if self._source is None or w.shape != self._source.shape or not torch.equal(w.cpu(), self._source):
            self._source = w.detach().cpu().clone()
            self._on_device = self._source.to(self.device, non_blocking=False)
            self.copies += 1
        return self._on_device


@contextlib.contextmanager
def cuda_speedups(device: torch.device) -> Iterator[None]:
    """On CUDA: ``cudnn.benchmark`` (autotuned convolutions for the fixed patch size) and TF32 for float32
    matmuls and convolutions (``torch.set_float32_matmul_precision("high")``, ``cudnn.allow_tf32``), as
    nnU-Net trains; the previous settings are restored on exit. Nothing changes on other devices."""
    if device.type != "cuda":
        yield
        return
    old = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = old[0], old[1]
        torch.set_float32_matmul_precision(old[2])


def train(store: PreprocessedStore, plan: dict, run_dir: Path, train_ids: list[str], val_ids: list[str],
          device: torch.device, time_budget_s: float | None = None, resume: bool = False,
          callbacks: list[Any] | None = None, progress: bool = True, resume_state: dict | None = None,
          replan: bool = False, reserve_final_validation: bool = True, world: World | None = None) -> Trainer:
    """Train (or, with ``resume``, continue from ``resume_state`` or the run's latest good checkpoint).

    ``replan``: the schedule length changed on resume (more epochs, another time budget): the total number of
    iterations is recomputed instead of taken from the checkpoint. ``reserve_final_validation``: keep time of the
    budget for the run's final whole-volume validation (:func:`measure_timing`). ``world``: the processes training
    together (:mod:`focusseg.engine.distributed`; default: this one)."""
    with cuda_speedups(device):
        return _train(store, plan, run_dir, train_ids, val_ids, device, time_budget_s, resume, callbacks, progress,
                      resume_state, replan, reserve_final_validation, world or World())


def _train(store: PreprocessedStore, plan: dict, run_dir: Path, train_ids: list[str], val_ids: list[str],
           device: torch.device, time_budget_s: float | None, resume: bool, callbacks: list[Any] | None,
           progress: bool, resume_state: dict | None, replan: bool, reserve_final_validation: bool,
           world: World) -> Trainer:
    tr = plan["training"]
    callbacks = list(callbacks or [])
    seed = int(tr.get("seed", 0))
    torch.manual_seed(seed_for_rank(seed, world.rank))
    gens = {"sample": torch.Generator().manual_seed(seed + 1),  # the same on every rank: one global batch
            "augment": torch.Generator().manual_seed(seed_for_rank(seed, world.rank) + 2)}  # per rank
    batch_size = int(plan["batch_size"])
    world.batch_sizes(batch_size)  # fewer samples than ranks is refused here
    progress = progress and world.is_main
    ipe = int(tr["iterations_per_epoch"])
    total = int(tr["max_epochs"]) * ipe
    max_nonfinite = int(tr.get("max_nonfinite_steps", 25))
    parts = build_parts(plan, total, device)
    sampler = build_sampler(plan, {c: store.shape(c) for c in train_ids}, {c: store.locations(c) for c in train_ids})
    loader = build_loader(store, plan, device)  # training.loader workers, pinned batches on CUDA, uint8 labels
    amp = amp_dtype(plan, device)
    task = parts.task
    if world.active:
        probe = (1, len(plan.get("channel_names") or {0: ""}), *plan["patch_size"])
        task.distribute(world, batch_size, find_unused_parameters=_freezes(plan), probe_shape=probe)
    t = Trainer(plan, run_dir, parts, sampler, device, train_ids, val_ids, max_iterations=total, world=world)
    log = EpochLog(run_dir) if world.is_main else QuietLog(run_dir)
    if resume:
        state = resume_state if resume_state is not None else ckpt.load_resume_state(run_dir)[0]
        notes = task.load_state_dict(state["task"]) or []  # tensors land on the parameters' device
        parts.lr.load_state_dict(state["lr"])
        sampler.load_state_dict(state["sampler"])  # stays on the CPU
        if parts.weighter is not None:
            parts.weighter.load_state_dict(state["weighter"])
        _load_rng(state, gens, world, seed, log)
        t.epoch, t.iteration, t.max_iterations = int(state["epoch"]), int(state["iteration"]), int(
            state["max_iterations"])
        t.best, t.elapsed, t.history = float(state["best"]), float(state["elapsed"]), list(state["history"])
        t.nonfinite_run = int(state.get("nonfinite_run", 0))
        t.timing = dict(state.get("timing") or {})
        if replan:
            t.max_iterations = total
            if time_budget_s and t.epoch > 0:
                if not t.timing:  # a checkpoint from before iteration-granular budgets: whole epochs
                    t.timing = {"iteration_s": t.elapsed / max(1, t.iteration), "validation_s": 0.0,
                                "reserve_s": 0.0, "val_every": 1.0}
                t.max_iterations = fit_iterations(t, time_budget_s, total)
        if hasattr(parts.lr, "max_iterations"):
            parts.lr.max_iterations = t.max_iterations
        log.restore(t.history)  # the log says exactly what the checkpoint holds
        _log_device_switch(log, state, device, _amp_name(t), notes, t.epoch)
    elif world.is_main:  # a fresh start: lines of an earlier attempt that never checkpointed an epoch do not belong
        log.path.unlink(missing_ok=True)
    val_case_ids = val_ids[: tr["val_max_cases"]] if tr.get("val_max_cases") else list(val_ids)
    patch_validator, full_every = _validation(store, val_case_ids, plan, device, amp, world)
    call(callbacks, "on_train_start", t)
    world.sync_module(task.inference_module())  # a callback may have changed rank 0's weights (--init-from)
    class_weights = DeviceWeights(device)
    while t.iteration < t.max_iterations:
        t0 = time.perf_counter()
        task.train()
        task.set_epoch(t.epoch)
        losses = []
        skipped = 0
        drawn: deque = deque()  # the global batches drawn so far; this rank loads its slice of each
        batches = _draw(sampler, batch_size, gens["sample"], ipe, world, drawn)
        bar = log.progress(ipe, f"epoch {t.epoch}", enabled=progress)
        for requests, images, labels in loader.prefetch(batches):
            global_requests = drawn.popleft()
            call(callbacks, "before_batch", t, requests)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.no_grad():
                images, labels = parts.augmenter(images, labels, gens["augment"])
            weights = class_weights.get(parts.weighter)  # copied to the device only when they change
            parts.lr.step(t.iteration)
            step = task.step(images, labels, requests, weights, lambda s: call(callbacks, "after_loss", t, s))
            out_of_time = bool(time_budget_s) and (
                t.elapsed + time.perf_counter() - t0 >= time_budget_s - t.timing.get("reserve_s", 0))
            step, out_of_time = world.merge_step(step, global_requests, out_of_time)  # rank 0 decides the stop
            sampler.update(step)
            call(callbacks, "after_batch", t, step)
            if step.finite:
                losses.append(step.loss)
                t.nonfinite_run = 0
            else:
                skipped += 1
                t.nonfinite_run += 1
                if t.nonfinite_run >= max_nonfinite:
                    bar.close()
                    _diverged(t, log)
            t.iteration += 1
            bar.advance(step.loss)
            if t.iteration >= t.max_iterations:
                break  # a budget-fitted schedule may end inside an epoch
            if out_of_time:
                break  # the budget ends inside this epoch: validate, checkpoint and stop
        bar.close()
        train_time = time.perf_counter() - t0
        record: dict[str, Any] = {"epoch": t.epoch, "iteration": t.iteration,
                                  "train_loss": float(np.mean(losses)) if losses else math.nan,
                                  "nonfinite_steps": skipped,
                                  "lr": task.optimizers[0].param_groups[0]["lr"], "train_time_s": round(train_time, 2)}
        record["sampler"] = sampler.epoch_end(t.epoch)
        projected = t.elapsed + (time.perf_counter() - t0)
        last = world.broadcast_object(t.iteration >= t.max_iterations or bool(
            time_budget_s and projected >= time_budget_s - t.timing.get("reserve_s", 0)))
        if val_ids and ((t.epoch + 1) % int(tr.get("val_every", 1)) == 0 or last):
            v0 = time.perf_counter()
            if patch_validator is not None:  # each rank its share of the patches; counts summed over ranks
                counts = world.all_reduce_sum(patch_validator.counts(task.inference_module()))
                scores = dice_from_counts(counts.cpu(), patch_validator.labels)
            else:
                scores = validate_volumes(task.inference_module(), store, val_case_ids, plan, device, amp,
                                          world=world)
            fg = [scores[c] for c in sorted(scores)]
            mean = float(np.nanmean(fg)) if not all(np.isnan(fg)) else 0.0
            record.update(val_dice={str(c): s for c, s in scores.items()}, val_mean_dice=mean,
                          val_time_s=round(time.perf_counter() - v0, 2))
            if patch_validator is not None:
                record["val_kind"] = "patches"
            if parts.weighter is not None:
                parts.weighter.update(torch.tensor(np.nan_to_num(fg), dtype=torch.float32))
                record["class_weights"] = parts.weighter.weights().tolist()
            parts.lr.step(t.iteration, metric=mean)
            call(callbacks, "after_validation", t, scores)
            if math.isfinite(mean) and mean > t.best and network_is_finite(task.inference_module()):
                t.best = mean
                record["best"] = True
                if world.is_main:
                    ckpt.save_atomic(_export(t), run_dir / "checkpoint_best.pt")
        if val_ids and patch_validator is not None and full_every > 0 and (t.epoch + 1) % full_every == 0:
            v0 = time.perf_counter()  # whole volumes every K epochs, for the record (the run validates at the end)
            vol = validate_volumes(task.inference_module(), store, val_case_ids, plan, device, amp, world=world)
            vf = [vol[c] for c in sorted(vol)]
            record.update(val_volume_dice={str(c): s for c, s in vol.items()},
                          val_volume_mean_dice=float(np.nanmean(vf)) if not all(np.isnan(vf)) else 0.0,
                          val_volume_time_s=round(time.perf_counter() - v0, 2))
        t.elapsed = world.broadcast_object(t.elapsed + time.perf_counter() - t0)  # rank 0's clock decides
        record["elapsed_s"] = round(t.elapsed, 1)
        t.epoch += 1
        t.history.append(record)
        if time_budget_s and not last:  # (re)fit the schedule so it ends at the budget
            t.timing = measure_timing(t.history, ipe, int(tr.get("val_every", 1)), store, val_ids, plan,
                                      patch_validator, reserve_final_validation)
            t.max_iterations = fit_iterations(t, time_budget_s, total)
            t.timing, t.max_iterations = world.broadcast_object((t.timing, t.max_iterations))
            if hasattr(parts.lr, "max_iterations"):
                parts.lr.max_iterations = t.max_iterations
            record["planned_iterations"] = t.max_iterations
            record["timing"] = {k: round(v, 4) for k, v in t.timing.items()}
        state = _state(t, gens)  # every rank's RNG streams (a collective)
        if world.is_main:
            ckpt.save_latest(state, run_dir)
        log.write(record)
        call(callbacks, "on_epoch_end", t, record)
        if time_budget_s and t.elapsed >= time_budget_s - t.timing.get("reserve_s", 0):
            break
    if patch_validator is not None:
        patch_validator.close()
    loader.close()  # worker threads / processes (kept across epochs) end with training
    if world.is_main:
        if not val_ids and network_is_finite(task.inference_module()):  # no validation: the final weights are best
            ckpt.save_atomic(_export(t), run_dir / "checkpoint_best.pt")
        ckpt.save_atomic(_export(t), run_dir / "checkpoint_final.pt")
    world.barrier()  # the final checkpoints exist before any rank goes on
    log.plot(t.history)
    call(callbacks, "on_train_end", t, {"best": t.best})
    return t


def epoch_costs(history: list[dict], ipe: int) -> tuple[float, float | None]:
    """``(seconds per iteration, seconds per validation or None)`` over the epochs of ``history`` (the log
    records, cumulative ``iteration``), leaving the first epoch out once there is a second: the first pays the
    warm-up (allocator, caches, thread pools) and is not what the rest of the run costs."""
    used = list(enumerate(history))[1:] if len(history) > 1 else list(enumerate(history))
    train_s = iters = 0.0
    val = []
    for i, r in used:
        done = int(r["iteration"]) - int(history[i - 1]["iteration"]) if i > 0 else min(int(r["iteration"]), ipe)
        train_s += float(r["train_time_s"])
        iters += max(1, done)
        if "val_time_s" in r:
            val.append(float(r["val_time_s"]))
    return train_s / max(iters, 1.0), (float(np.mean(val)) if val else None)


def measure_timing(history: list[dict], ipe: int, val_every: int, store: PreprocessedStore, val_ids: list[str],
                   plan: dict, patch_validator: PatchValidator | None, reserve_final_validation: bool
                   ) -> dict[str, float]:
    """What an epoch costs, to fit the schedule to a time budget (:func:`fit_iterations`), from the epochs logged
    so far (:func:`epoch_costs`): ``iteration_s`` (training time / iterations), ``validation_s`` (one
    validation), ``val_every``, and ``reserve_s``, the estimated final whole-volume validation
    (:func:`~focusseg.engine.validation.estimate_final_validation_s`, seconds per voxel from the measured
    validations; 0 without validation cases or when the caller validates nothing at the end)."""
    from focusseg.engine.validation import estimate_final_validation_s, window_voxels

    iteration_s, validation_s = epoch_costs(history, ipe)
    timing = {"iteration_s": iteration_s, "validation_s": validation_s or 0.0,
              "val_every": float(max(1, val_every)), "reserve_s": 0.0}
    if reserve_final_validation and val_ids and validation_s is not None:
        patch = plan["patch_size"]
        if patch_validator is not None:
            voxels = len(patch_validator) * float(np.prod(patch))
        else:
            ids = val_ids[: plan["training"]["val_max_cases"]] if plan["training"].get("val_max_cases") else val_ids
            voxels = float(sum(window_voxels(store.shape(c), patch, plan["inference"]["overlap"],
                                             plan.get("slice_axis")) for c in ids))
        s_vox = timing["validation_s"] / max(voxels, 1.0)
        timing["reserve_s"] = estimate_final_validation_s(store, val_ids, plan, s_vox)
    return timing


def fit_iterations(t: Trainer, budget_s: float, total: int) -> int:
    """The total number of iterations that fit ``budget_s`` at iteration granularity (issue 15 part 7):

        left  = budget - elapsed - reserve                    reserve: the final validation's estimated cost
        epoch = ipe * iteration_s + validation_s / val_every  (validation amortised over its interval)
        n     = floor(left / epoch) whole epochs, then as many iterations of a last, partial epoch as fit in
                what is left after that epoch's own validation

    at least the iterations already done, at most the plan's ``max_epochs * iterations_per_epoch``."""
    tm = t.timing
    ipe = int(t.plan["training"]["iterations_per_epoch"])
    it_s = max(float(tm["iteration_s"]), 1e-9)
    val_s = float(tm.get("validation_s", 0.0))
    left = budget_s - t.elapsed - float(tm.get("reserve_s", 0.0))
    epoch_s = ipe * it_s + val_s / max(1.0, float(tm.get("val_every", 1.0)))
    whole = max(0, int(left // epoch_s))
    rest = left - whole * epoch_s - val_s
    extra = min(ipe - 1, max(0, int(rest // it_s)))
    return int(min(total, max(t.iteration, t.iteration + whole * ipe + extra)))


def _validation(store: PreprocessedStore, val_ids: list[str], plan: dict, device: torch.device,
                amp: torch.dtype | None, world: World | None = None) -> tuple[PatchValidator | None, int]:
    """``(patch validator or None, whole-volume every K epochs)`` from ``training.validation`` ("patches", the
    default, or "volumes"), ``training.val_patches`` and ``training.val_full_every``
    (:mod:`focusseg.engine.validation`)."""
    from focusseg.errors import PlanError

    tr = plan["training"]
    mode = str(tr.get("validation") or "patches").lower()
    if mode not in MODES:
        raise PlanError(f"training.validation {tr.get('validation')!r} is not one of {', '.join(MODES)}")
    full_every = tr.get("val_full_every", DEFAULT_FULL_EVERY)
    if not isinstance(full_every, int) or isinstance(full_every, bool) or full_every < 0:
        raise PlanError(f"training.val_full_every {full_every!r} must be a whole number of epochs >= 0 "
                        "(0: no whole-volume validation during training)")
    if mode == "volumes" or not val_ids:
        return None, 0
    world = world or World()
    return PatchValidator(store, val_ids, plan, device, amp, shard=(world.rank, world.size)), full_every


def _device_name(device: torch.device) -> str:
    return device.type  # "cuda:0" and "cuda:1" are the same kind of device for resuming


def _log_device_switch(log: EpochLog, state: dict, device: torch.device, new_amp: str, notes: list[dict],
                       epoch: int) -> None:
    """One ``device_switch`` event line when the run resumes on another device or autocast dtype than the
    checkpoint was written with, or when a part had to adapt (GradScaler state started fresh or ignored).
    Checkpoints from before this record carry no device: only the parts' notes can tell then."""
    old_dev, old_amp = state.get("device"), state.get("amp")
    new_dev = _device_name(device)
    moved = (old_dev is not None and old_dev != new_dev) or (old_amp is not None and old_amp != new_amp)
    if moved or notes:
        log.event("device_switch", at_epoch=epoch, device={"from": old_dev, "to": new_dev},
                  amp={"from": old_amp, "to": new_amp}, parts=notes)


def network_is_finite(module: torch.nn.Module) -> bool:
    """Whether every floating-point parameter and buffer is finite (one host sync)."""
    flags = [torch.isfinite(v).all() for v in module.state_dict().values() if torch.is_floating_point(v)]
    return bool(torch.stack(flags).all()) if flags else True


def _diverged(t: Trainer, log: EpochLog) -> None:
    """Stop: too many non-finite steps in a row (logged as a ``diverged`` event line)."""
    from focusseg.errors import TrainingError
    from focusseg.registry import split_spec

    try:
        lr = float(split_spec(t.plan["training"].get("optimizer") or {"name": "sgd"})[1].get("lr", 0.01))
    except (TypeError, ValueError):
        lr = 0.01
    log.event("diverged", epoch=t.epoch, iteration=t.iteration, nonfinite_steps_in_a_row=t.nonfinite_run)
    raise TrainingError(
        f"training stopped: the loss or its gradient was NaN/inf in {t.nonfinite_run} steps in a row (epoch "
        f"{t.epoch}, iteration {t.iteration})", t.run_dir,
        hint=f"lower the learning rate and start again, e.g. --overwrite --set training.optimizer.lr={lr / 10:g} "
             "(training.max_nonfinite_steps sets how many such steps are tolerated)")


def _export(t: Trainer) -> dict:
    """An inference artefact: the plan and the weights, nothing that needs training code."""
    return {"plan": t.plan, "network": t.parts.task.inference_module().state_dict(), "epoch": t.epoch, "best": t.best,
            "iteration": t.iteration}


def _state(t: Trainer, gens: dict[str, torch.Generator]) -> dict:
    """The resumable state; ``rng`` is this (rank 0's) process's RNG streams, ``rng_ranks`` every rank's (a
    collective: every rank calls this)."""
    p = t.parts
    rng = ckpt.rng_state(gens)
    rng_ranks = t.world.gather_objects(rng) if t.world.active else None
    return {**_export(t), "task": p.task.state_dict(), "lr": p.lr.state_dict(),
            "sampler": t.sampler.state_dict(), "weighter": p.weighter.state_dict() if p.weighter else None,
            "rng": rng, "rng_ranks": rng_ranks, "world_size": t.world.size, "max_iterations": t.max_iterations,
            "elapsed": t.elapsed, "history": t.history, "nonfinite_run": t.nonfinite_run,
            "device": _device_name(t.device), "amp": _amp_name(t), "timing": t.timing}


def _amp_name(t: Trainer) -> str:
    """The autocast dtype the task trains in ("bfloat16", "float16" or "none")."""
    amp = getattr(t.parts.task, "amp", None)
    return str(amp).replace("torch.", "") if amp else "none"


def _draw(sampler: Any, batch_size: int, generator: torch.Generator, n: int, world: World, drawn: deque
          ) -> Iterator[list]:
    """``n`` global batches from the sampler (the same on every rank); each is remembered in ``drawn`` (for the
    sampler's update with the whole world's step) and this rank's slice is yielded to the loader."""
    for _ in range(n):
        requests = sampler.next_batch(batch_size, generator)
        drawn.append(requests)
        yield world.local_slice(requests)


def _freezes(plan: dict) -> bool:
    """Whether fine-tuning freezes parameters for a while (DDP must then allow unused parameters)."""
    entry = (plan.get("training") or {}).get("init_from") or {}
    return bool(isinstance(entry, dict) and entry.get("freeze_encoder_epochs"))


def _load_rng(state: dict, gens: dict[str, torch.Generator], world: World, seed: int, log: Any) -> None:
    """Restore the RNG streams on resume: each rank its own when the world size is the one the checkpoint was
    written with (exact); otherwise every rank takes rank 0's streams (the shared sampling stream is exact), the
    augmentation and global streams of ranks > 0 are re-seeded, and a ``world_size_changed`` event says the run
    goes on but not bit-exactly."""
    saved = int(state.get("world_size", 1) or 1)
    ranks = state.get("rng_ranks")
    if saved == world.size and (world.size == 1 or ranks):
        ckpt.load_rng_state(ranks[world.rank] if world.size > 1 else state["rng"], gens)
        return
    ckpt.load_rng_state(state["rng"], gens)
    if world.rank > 0:
        epoch = int(state.get("epoch", 0))
        torch.manual_seed(seed_for_rank(seed + epoch, world.rank))
        gens["augment"].manual_seed(seed_for_rank(seed + epoch, world.rank) + 2)
    log.event("world_size_changed", world_size={"from": saved, "to": world.size},
              note="resumed with another number of processes: training goes on, but not bit-exactly (other "
                   "batch slices and augmentation streams)")


class QuietLog(EpochLog):
    """The epoch log of a rank other than 0: it keeps nothing and prints nothing (rank 0 writes)."""

    def progress(self, total: int, description: str, enabled: bool = True) -> Any:
        return super().progress(total, description, enabled=False)

    def write(self, record: dict[str, Any]) -> None:
        return None

    def event(self, event: str, **fields: Any) -> None:
        return None

    def restore(self, history: list[dict[str, Any]]) -> None:
        return None

    def plot(self, history: list[dict[str, Any]]) -> None:
        return None
