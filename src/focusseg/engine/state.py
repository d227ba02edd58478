"""The run's state: :class:`Trainer` (what the loop and callbacks see), saved whole at every epoch end and
restored whole on resume.

:func:`training_state` builds the one resumable dict (network, optimiser, LR, sampler, class weighter, scaler,
RNG streams, counters, the device and autocast dtype it was written with); :func:`restore` puts it back onto a
Trainer, each part moving itself to where it lives now (``docs/training-loop.md``, "Devices"). The file format and
the safe loader are :mod:`focusseg.io.checkpoint`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from focusseg.engine.distributed import World, seed_for_rank
from focusseg.engine.task import Parts
from focusseg.io import checkpoint as ckpt
from focusseg.runfolder import EpochLog


@dataclass
class Trainer:
    """What callbacks see: the plan, the parts and the counters of the run.

    ``log`` is the run's one epoch log (rank 0's :class:`~focusseg.runfolder.EpochLog`; a log that keeps nothing
    on the other ranks): callbacks write their event lines through it. ``generators`` are the run's seeded RNG
    streams (``sample``: the same on every rank, one global batch; ``augment``: per rank)."""

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
    log: EpochLog | None = None  # the run's one EpochLog (a QuietLog on ranks other than 0)
    generators: dict[str, torch.Generator] = field(default_factory=dict)


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


def seeded_streams(seed: int, world: World) -> dict[str, torch.Generator]:
    """Seed torch's global generator for this rank and return the run's two streams.

    Args:
        seed: the plan's ``training.seed``.
        world: the processes training together.

    Returns:
        ``{"sample": ...}`` seeded ``seed + 1`` on every rank (all ranks draw the same global batch) and
        ``{"augment": ...}`` seeded per rank (``seed_for_rank(seed, rank) + 2``)."""
    torch.manual_seed(seed_for_rank(seed, world.rank))
    return {"sample": torch.Generator().manual_seed(seed + 1),
            "augment": torch.Generator().manual_seed(seed_for_rank(seed, world.rank) + 2)}


def inference_export(t: Trainer) -> dict:
    """An inference artefact (``checkpoint_best.pt``, ``checkpoint_final.pt``): the plan and the weights,
    nothing that needs training code."""
    return {"plan": t.plan, "network": t.parts.task.inference_module().state_dict(), "epoch": t.epoch, "best": t.best,
            "iteration": t.iteration}


def training_state(t: Trainer) -> dict:
    """The resumable state, saved whole as ``checkpoint_latest.pt``.

    ``rng`` is this (rank 0's) process's RNG streams and ``rng_ranks`` every rank's: a collective, every rank
    calls it. ``device`` and ``amp`` record where the state was written, for :func:`restore`'s switch note."""
    p = t.parts
    rng = ckpt.rng_state(t.generators)
    rng_ranks = t.world.gather_objects(rng) if t.world.active else None
    return {**inference_export(t), "task": p.task.state_dict(), "lr": p.lr.state_dict(),
            "sampler": t.sampler.state_dict(), "weighter": p.weighter.state_dict() if p.weighter else None,
            "rng": rng, "rng_ranks": rng_ranks, "world_size": t.world.size, "max_iterations": t.max_iterations,
            "elapsed": t.elapsed, "history": t.history, "nonfinite_run": t.nonfinite_run,
            "device": t.device.type, "amp": amp_name(t), "timing": t.timing}


def restore(t: Trainer, state: dict, seed: int) -> None:
    """Put :func:`training_state`'s dict back onto ``t`` whole: parts, RNG streams, counters, history and log.

    Tensors land where their part lives (network and optimiser state on the parameters' device; sampler and
    class-weighter state on the CPU). The log's epoch lines become exactly the stored history; a resume on
    another device or autocast dtype, or a part that had to adapt, is logged as one ``device_switch`` line.

    Args:
        t: the freshly built trainer of the resumed run.
        state: the checkpoint's dict (:func:`focusseg.io.checkpoint.load_resume_state`).
        seed: the plan's ``training.seed`` (re-seeds ranks > 0 when the world size changed)."""
    p = t.parts
    notes = p.task.load_state_dict(state["task"]) or []
    p.lr.load_state_dict(state["lr"])
    t.sampler.load_state_dict(state["sampler"])
    if p.weighter is not None:
        p.weighter.load_state_dict(state["weighter"])
    _load_rng(t, state, seed)
    t.epoch, t.iteration, t.max_iterations = int(state["epoch"]), int(state["iteration"]), int(state["max_iterations"])
    t.best, t.elapsed, t.history = float(state["best"]), float(state["elapsed"]), list(state["history"])
    t.nonfinite_run = int(state.get("nonfinite_run", 0))
    t.timing = dict(state.get("timing") or {})
    t.log.restore(t.history)  # the log says exactly what the checkpoint holds
    _note_device_switch(t, state, notes)


def amp_name(t: Trainer) -> str:
    """The autocast dtype the task trains in (``"bfloat16"``, ``"float16"`` or ``"none"``)."""
    amp = getattr(t.parts.task, "amp", None)
    return str(amp).replace("torch.", "") if amp else "none"


def _note_device_switch(t: Trainer, state: dict, notes: list[dict]) -> None:
    """One ``device_switch`` line when the device kind ("cuda:0" and "cuda:1" are one kind) or the autocast dtype
    differs from the checkpoint's, or a part adapted (GradScaler state started fresh or ignored). Checkpoints
    without a device record leave only the parts' notes to tell."""
    old_dev, old_amp, new_dev, new_amp = state.get("device"), state.get("amp"), t.device.type, amp_name(t)
    moved = (old_dev is not None and old_dev != new_dev) or (old_amp is not None and old_amp != new_amp)
    if moved or notes:
        t.log.event("device_switch", at_epoch=t.epoch, device={"from": old_dev, "to": new_dev},
                    amp={"from": old_amp, "to": new_amp}, parts=notes)


def _load_rng(t: Trainer, state: dict, seed: int) -> None:
    """Each rank its own streams when the world size is the checkpoint's (exact); otherwise every rank takes rank
    0's (the shared sampling stream stays exact), ranks > 0 re-seed their augmentation and global streams, and a
    ``world_size_changed`` line says the run goes on, not bit-exactly."""
    world, gens = t.world, t.generators
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
    t.log.event("world_size_changed", world_size={"from": saved, "to": world.size},
                note="resumed with another number of processes: training goes on, but not bit-exactly (other "
                     "batch slices and augmentation streams)")
