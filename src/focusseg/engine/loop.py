"""The training loop: named phases, top to bottom, with strategies and callbacks attached at fixed points.

    setup -> restore (resume) -> per epoch: draw -> load -> augment -> step -> feedback (every iteration)
          -> validate and choose the best -> refit the schedule to the budget -> checkpoint and log -> finish

The parts live in their own modules: the run's state and its checkpoint (:mod:`focusseg.engine.state`), the time
budget (:mod:`focusseg.engine.budget`), the epoch's validation (:mod:`focusseg.engine.epoch_validation`) and the
numerical guard (:mod:`focusseg.engine.guards`). ``docs/training-loop.md`` explains the budget refit, devices,
host syncs and the guard.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from focusseg.data.loader import build_loader
from focusseg.engine.budget import EARLY_FIT_AFTER, TimeBudget
from focusseg.engine.build import build_sampler
from focusseg.engine.distributed import World
from focusseg.engine.epoch_validation import EpochValidator
from focusseg.engine.events import call
from focusseg.engine.guards import StepGuard, network_is_finite
from focusseg.engine.state import QuietLog, Trainer, inference_export, restore, seeded_streams, training_state
from focusseg.engine.task import build_parts
from focusseg.io import checkpoint as ckpt
from focusseg.nets.from_plan import amp_dtype
from focusseg.preprocessing.store import PreprocessedStore
from focusseg.runfolder import EpochLog
from focusseg.settings import training_settings


def train(store: PreprocessedStore, plan: dict, run_dir: Path, train_ids: list[str], val_ids: list[str],
          device: torch.device, time_budget_s: float | None = None, resume: bool = False,
          callbacks: list[Any] | None = None, progress: bool = True, resume_state: dict | None = None,
          replan: bool = False, reserve_final_validation: bool = True, world: World | None = None) -> Trainer:
    """Train the plan's schedule (with ``resume``: continue from ``resume_state`` or the run's latest good checkpoint).

    ``time_budget_s``: fit the schedule to it (:mod:`focusseg.engine.budget`), keeping time for the final
    validation when ``reserve_final_validation``; ``replan``: the schedule length changed on resume (more epochs,
    another budget): refit it; ``callbacks``: observers (:mod:`focusseg.engine.events`); ``world``: the processes
    training together (:mod:`focusseg.engine.distributed`; default: this one)."""
    world, callbacks = world or World(), list(callbacks or [])
    with cuda_speedups(device):
        t, loader = _setup(store, plan, run_dir, train_ids, val_ids, device, world)  # setup
        budget = TimeBudget(time_budget_s, store, plan, val_ids, reserve_final_validation)
        if resume:  # restore
            restore(t, resume_state if resume_state is not None else ckpt.load_resume_state(run_dir)[0],
                    training_settings(plan).seed)
            budget.resume(t, replan)
        elif world.is_main:  # a fresh start: lines of an attempt that never checkpointed an epoch do not belong
            t.log.path.unlink(missing_ok=True)
        validator = EpochValidator(store, plan, val_ids, device, amp_dtype(plan, device), world, callbacks)
        guard, weights = StepGuard(training_settings(plan).max_nonfinite_steps), DeviceWeights(device)
        call(callbacks, "on_train_start", t)
        world.sync_module(t.parts.task.inference_module())  # a callback may have changed rank 0's weights
        while t.iteration < t.max_iterations:  # epochs
            t0 = time.perf_counter()
            record = _train_epoch(t, loader, budget, guard, weights, callbacks, progress and world.is_main, t0)
            last = world.broadcast_object(t.iteration >= t.max_iterations or budget.spent(t, t0))
            validator(t, record, last)  # validate and choose the best
            t.elapsed = world.broadcast_object(t.elapsed + time.perf_counter() - t0)  # rank 0's clock decides
            record["elapsed_s"] = round(t.elapsed, 1)
            t.epoch += 1
            t.history.append(record)
            if not last:
                budget.refit(t, record, validator.patches)  # the schedule ends at the budget
            _checkpoint_and_log(t, record, callbacks)
            if budget.spent(t):
                break
        _finish(t, loader, validator, callbacks)
    return t


def _setup(store: PreprocessedStore, plan: dict, run_dir: Path, train_ids: list[str], val_ids: list[str],
           device: torch.device, world: World) -> tuple[Trainer, Any]:
    """Seeds, parts, sampler and loader; the task joins the world's gradient exchange when it has several ranks."""
    tr = training_settings(plan)
    generators = seeded_streams(tr.seed, world)
    world.batch_sizes(int(plan["batch_size"]))  # fewer samples than ranks is refused here
    total = int(tr.need("max_epochs")) * int(tr.need("iterations_per_epoch"))
    parts = build_parts(plan, total, device)
    sampler = build_sampler(plan, {c: store.shape(c) for c in train_ids}, {c: store.locations(c) for c in train_ids})
    loader = build_loader(store, plan, device)  # training.loader workers, pinned batches on CUDA, uint8 labels
    if world.active:  # fine-tuning that freezes the encoder leaves parameters unused for a while
        probe = (1, len(plan.get("channel_names") or {0: ""}), *plan["patch_size"])
        freezes = bool(tr.init_from and tr.init_from.get("freeze_encoder_epochs"))
        parts.task.distribute(world, int(plan["batch_size"]), find_unused_parameters=freezes, probe_shape=probe)
    log = EpochLog(run_dir) if world.is_main else QuietLog(run_dir)
    return Trainer(plan, run_dir, parts, sampler, device, train_ids, val_ids, max_iterations=total, world=world,
                   log=log, generators=generators), loader


def _train_epoch(t: Trainer, loader: Any, budget: TimeBudget, guard: StepGuard, class_weights: DeviceWeights,
                 callbacks: list[Any], progress: bool, t0: float) -> dict[str, Any]:
    """One epoch's iterations (draw -> load -> augment -> step -> feedback); it ends early at the fitted schedule's
    end or when the budget is spent. Returns the epoch's record (training part)."""
    parts, world, gens = t.parts, t.world, t.generators
    ipe, batch_size = training_settings(t.plan).need("iterations_per_epoch"), int(t.plan["batch_size"])
    parts.task.train()
    parts.task.set_epoch(t.epoch)
    guard.start_epoch()
    drawn: deque = deque()  # the global batches drawn so far; this rank loads its slice of each
    warm_end, early = t0, None
    bar = t.log.progress(ipe, f"epoch {t.epoch}", enabled=progress)
    for requests, images, labels in loader.prefetch(_draw(t.sampler, batch_size, gens["sample"], ipe, world, drawn)):
        global_requests = drawn.popleft()
        call(callbacks, "before_batch", t, requests)
        images, labels = images.to(t.device, non_blocking=True), labels.to(t.device, non_blocking=True)
        with torch.no_grad():
            images, labels = parts.augmenter(images, labels, gens["augment"])
        weights = class_weights.get(parts.weighter)  # copied to the device only when they change
        parts.lr.step(t.iteration)
        step = parts.task.step(images, labels, requests, weights, lambda s: call(callbacks, "after_loss", t, s))
        step, out_of_time = world.merge_step(step, global_requests, budget.spent(t, t0))  # rank 0 decides the stop
        t.sampler.update(step)  # feedback
        call(callbacks, "after_batch", t, step)
        guard.count(t, step, before_stop=bar.close)
        t.iteration += 1
        if t.epoch == 0 and t.iteration == 1:
            warm_end = time.perf_counter()  # the first step pays the warm-up: the early fit measures from here
        elif t.epoch == 0 and t.iteration == EARLY_FIT_AFTER and budget.refit_early(t, t0, warm_end):
            early = {"planned_iterations": t.max_iterations, "timing": {k: round(v, 4) for k, v in t.timing.items()}}
        bar.advance(step.loss)
        if t.iteration >= t.max_iterations or out_of_time:
            break  # a fitted schedule or the budget may end inside an epoch: validate, checkpoint, stop
    bar.close()
    return {"epoch": t.epoch, "iteration": t.iteration, "train_loss": guard.mean_loss(),
            "nonfinite_steps": guard.skipped, "lr": parts.task.optimizers[0].param_groups[0]["lr"],
            "train_time_s": round(time.perf_counter() - t0, 2), "sampler": t.sampler.epoch_end(t.epoch),
            **({"early_fit": early} if early else {})}


def _checkpoint_and_log(t: Trainer, record: dict[str, Any], callbacks: list[Any]) -> None:
    """``checkpoint_latest.pt`` (rank 0; every rank gives its RNG streams), the epoch's log line, ``on_epoch_end``."""
    state = training_state(t)  # a collective
    if t.world.is_main:
        ckpt.save_latest(state, t.run_dir)
    t.log.write(record)
    call(callbacks, "on_epoch_end", t, record)


def _finish(t: Trainer, loader: Any, validator: EpochValidator, callbacks: list[Any]) -> None:
    """Close the workers; ``checkpoint_final.pt`` (without validation also ``_best``, if finite); the curve."""
    validator.close()
    loader.close()  # worker threads / processes (kept across epochs) end with training
    if t.world.is_main:
        if not t.val_ids and network_is_finite(t.parts.task.inference_module()):
            ckpt.save_atomic(inference_export(t), t.run_dir / "checkpoint_best.pt")
        ckpt.save_atomic(inference_export(t), t.run_dir / "checkpoint_final.pt")
    t.world.barrier()
    t.log.plot(t.history)
    call(callbacks, "on_train_end", t, {"best": t.best})


def _draw(sampler: Any, batch_size: int, generator: torch.Generator, n: int, world: World, drawn: deque
          ) -> Iterator[list]:
    """``n`` global batches (the same on every rank, kept in ``drawn``); this rank's slice of each is yielded."""
    for _ in range(n):
        requests = sampler.next_batch(batch_size, generator)
        drawn.append(requests)
        yield world.local_slice(requests)


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
    """On CUDA: ``cudnn.benchmark`` and TF32 matmuls and convolutions, as nnU-Net trains; restored on exit."""
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
