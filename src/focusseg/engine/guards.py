"""The numerical guard: what the loop does about NaN/inf.

A step whose loss or gradient is not finite is skipped by the task (:mod:`focusseg.engine.task`) and counted
here, per epoch (``nonfinite_steps`` in the epoch's log line) and in a row across epochs; too many in a row
(``training.max_nonfinite_steps``) stop training with a :class:`~focusseg.errors.TrainingError`. A network with
a non-finite weight is never saved as best, and a NaN validation score never counts as better.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from focusseg.engine.state import Trainer
from focusseg.errors import TrainingError
from focusseg.settings import training_settings


def network_is_finite(module: torch.nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``module`` is finite (one host sync)."""
    flags = [torch.isfinite(v).all() for v in module.state_dict().values() if torch.is_floating_point(v)]
    return bool(torch.stack(flags).all()) if flags else True


def is_new_best(score: float, best: float, module: torch.nn.Module) -> bool:
    """Whether ``score`` makes ``module`` the run's best: a finite score, better than ``best``, of a network
    whose weights are all finite (checked last: it costs a host sync)."""
    return math.isfinite(score) and score > best and network_is_finite(module)


class StepGuard:
    """Counts the epoch's steps: the finite losses (for the epoch's mean), the skipped ones, and the run of
    skipped steps in a row (``trainer.nonfinite_run``, checkpointed, so it spans epochs and resumes)."""

    def __init__(self, max_in_a_row: int) -> None:
        self.max_in_a_row = max_in_a_row
        self.losses: list[float] = []
        self.skipped = 0

    def start_epoch(self) -> None:
        self.losses, self.skipped = [], 0

    def count(self, t: Trainer, step: Any, before_stop: Callable[[], None] | None = None) -> None:
        """Count one step (``step.finite``, ``step.loss``).

        Raises:
            TrainingError: the ``max_in_a_row``-th non-finite step in a row (after ``before_stop``)."""
        if step.finite:
            self.losses.append(step.loss)
            t.nonfinite_run = 0
            return
        self.skipped += 1
        t.nonfinite_run += 1
        if t.nonfinite_run >= self.max_in_a_row:
            if before_stop is not None:
                before_stop()
            diverged(t)

    def mean_loss(self) -> float:
        """The mean of the epoch's finite losses (NaN when every step was skipped)."""
        return float(np.mean(self.losses)) if self.losses else math.nan


def diverged(t: Trainer) -> None:
    """Stop training: too many non-finite steps in a row. Writes a ``diverged`` event line to ``t.log``.

    Raises:
        TrainingError: always, with a hint naming a learning rate ten times lower."""
    lr = training_settings(t.plan).lr
    t.log.event("diverged", epoch=t.epoch, iteration=t.iteration, nonfinite_steps_in_a_row=t.nonfinite_run)
    raise TrainingError(
        f"training stopped: the loss or its gradient was NaN/inf in {t.nonfinite_run} steps in a row (epoch "
        f"{t.epoch}, iteration {t.iteration})", t.run_dir,
        hint=f"lower the learning rate and start again, e.g. --overwrite --set training.optimizer.lr={lr / 10:g} "
             "(training.max_nonfinite_steps sets how many such steps are tolerated)")
