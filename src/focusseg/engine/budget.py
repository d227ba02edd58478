"""The run's time budget: one stop test, the reserve kept for the final validation, and the schedule fitted to it.

The loop measures what an epoch costs (:func:`measure_timing`) and sets the total number of iterations that fit
the budget (:func:`fit_iterations`) after every epoch but the last, so the LR schedule decays to zero at the budget
and the last epoch may be partial; training also stops when the budget less the reserve is spent
(:meth:`TimeBudget.spent`). ``docs/training-loop.md`` ("Time budget") explains why the fit is made again.

Slow steps (a GPU-sized plan on a CPU, a large network) may make the first epoch alone longer than the budget, and
then no epoch ends to measure it: the schedule would keep its full length (the learning rate never decays) and no
time would be kept for the final validation. So when the first :data:`EARLY_FIT_AFTER` iterations project the
first epoch beyond :data:`EARLY_FIT_SHARE` of the budget, the schedule is fitted inside that epoch
(:meth:`TimeBudget.refit_early`) from the measured step time, with the final validation's reserve estimated from
the training step's cost per voxel.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from focusseg.engine.state import Trainer
from focusseg.engine.validation import PatchValidator, estimate_final_validation_s, window_voxels
from focusseg.preprocessing.store import PreprocessedStore
from focusseg.settings import inference_settings, training_settings

#: Iterations of the first epoch measured before the early fit (the first one, the warm-up, is left out).
EARLY_FIT_AFTER = 6
#: The early fit is made when the first epoch is projected to take more than this share of the budget.
EARLY_FIT_SHARE = 0.1
#: A training step's forward, backward and update cost about this many forward passes (for the early reserve).
STEP_FORWARDS = 3.0


class TimeBudget:
    """A run's budget of ``seconds`` (None or 0: no budget; the schedule is the plan's ``max_epochs``).

    Args:
        seconds: the budget, or None.
        store: the preprocessed store (validation case shapes, for the reserve).
        plan: the run's plan.
        val_ids: the validation cases.
        reserve_final_validation: keep the final whole-volume validation's estimated cost out of the budget."""

    def __init__(self, seconds: float | None, store: PreprocessedStore, plan: dict, val_ids: list[str],
                 reserve_final_validation: bool = True) -> None:
        tr = training_settings(plan)
        self.seconds, self.store, self.plan, self.val_ids = seconds, store, plan, list(val_ids)
        self.reserve_final_validation = reserve_final_validation
        self.iterations_per_epoch = int(tr.need("iterations_per_epoch"))
        self.total = int(tr.need("max_epochs")) * self.iterations_per_epoch  # the plan's whole schedule
        self.val_every = tr.val_every

    def spent(self, t: Trainer, epoch_start: float | None = None) -> bool:
        """Whether ``t.elapsed`` (plus the running epoch's time since ``epoch_start``, a ``perf_counter``
        reading) has reached the budget less the reserve; always False without a budget."""
        if not self.seconds:
            return False
        elapsed = t.elapsed if epoch_start is None else t.elapsed + (time.perf_counter() - epoch_start)
        return elapsed >= self.seconds - t.timing.get("reserve_s", 0)

    def resume(self, t: Trainer, replan: bool) -> None:
        """The schedule of a resumed run: the checkpoint's, or with ``replan`` (more epochs, another budget) the
        plan's, refitted to the budget from the stored timing (a checkpoint without one counts whole epochs)."""
        if replan:
            t.max_iterations = self.total
            if self.seconds and t.epoch > 0:
                if not t.timing:
                    t.timing = {"iteration_s": t.elapsed / max(1, t.iteration), "validation_s": 0.0,
                                "reserve_s": 0.0, "val_every": 1.0}
                t.max_iterations = fit_iterations(t, self.seconds, self.total)
        _set_horizon(t)

    def refit_early(self, t: Trainer, epoch_start: float, warm_end: float) -> bool:
        """Inside the first epoch, after :data:`EARLY_FIT_AFTER` iterations (module docstring): when the epoch is
        projected beyond :data:`EARLY_FIT_SHARE` of the budget, fit ``t.max_iterations`` and ``t.timing`` (the
        reserve included) from the step time measured since ``warm_end`` (the end of the first iteration, a
        ``perf_counter`` reading); rank 0's numbers decide. Returns whether it fitted.

        The reserve is :func:`~focusseg.engine.validation.estimate_final_validation_s` with seconds per voxel of
        one forward pass taken as the step time over :data:`STEP_FORWARDS` x batch x patch voxels."""
        if not self.seconds:
            return False
        now = time.perf_counter()
        it_s = (now - warm_end) / max(1, t.iteration - 1)
        timing = None
        if self.iterations_per_epoch * it_s > EARLY_FIT_SHARE * self.seconds:
            reserve = 0.0
            if self.reserve_final_validation and self.val_ids:
                voxels = STEP_FORWARDS * int(self.plan["batch_size"]) * float(np.prod(self.plan["patch_size"]))
                reserve = estimate_final_validation_s(self.store, self.val_ids, self.plan, it_s / voxels)
            timing = {"iteration_s": it_s, "validation_s": 0.0, "val_every": float(max(1, self.val_every)),
                      "reserve_s": reserve}
        timing = t.world.broadcast_object(timing)
        if timing is None:
            return False
        left = self.seconds - (t.elapsed + now - epoch_start) - timing["reserve_s"]
        t.timing = timing
        t.max_iterations = int(min(self.total, max(t.iteration, t.iteration + int(left // timing["iteration_s"]))))
        t.max_iterations = t.world.broadcast_object(t.max_iterations)
        _set_horizon(t)
        return True

    def refit(self, t: Trainer, record: dict[str, Any], validator: PatchValidator | None) -> None:
        """After an epoch that is not the last: measure, refit ``t.max_iterations`` (rank 0's numbers decide) and
        note both in ``record`` (``planned_iterations``, ``timing``). Nothing without a budget."""
        if not self.seconds:
            return
        t.timing = measure_timing(t.history, self.iterations_per_epoch, self.val_every, self.store, self.val_ids,
                                  self.plan, validator, self.reserve_final_validation)
        t.max_iterations = fit_iterations(t, self.seconds, self.total)
        t.timing, t.max_iterations = t.world.broadcast_object((t.timing, t.max_iterations))
        _set_horizon(t)
        record["planned_iterations"] = t.max_iterations
        record["timing"] = {k: round(v, 4) for k, v in t.timing.items()}


def _set_horizon(t: Trainer) -> None:
    """The LR controller ends its schedule at ``t.max_iterations`` (when it has a horizon)."""
    if hasattr(t.parts.lr, "max_iterations"):
        t.parts.lr.max_iterations = t.max_iterations


def epoch_costs(history: list[dict], ipe: int) -> tuple[float, float | None]:
    """``(seconds per iteration, seconds per validation or None)`` over the epochs of ``history`` (the log
    records, cumulative ``iteration``), leaving the first epoch out once there is a second: the first pays the
    warm-up (allocator, caches, thread pools) and is not what the rest of the run costs.

    Args:
        history: the epoch records so far (``iteration``, ``train_time_s``, ``val_time_s`` when validated).
        ipe: iterations per epoch (what the first epoch did when it is the only one and ran whole).

    Returns:
        the mean training seconds per iteration and the mean seconds of one validation (None: none yet)."""
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
    """What an epoch costs, to fit the schedule to a time budget (:func:`fit_iterations`).

    From the epochs logged so far (:func:`epoch_costs`): ``iteration_s`` (training time / iterations),
    ``validation_s`` (one validation), ``val_every``, and ``reserve_s``, the estimated final whole-volume
    validation (:func:`~focusseg.engine.validation.estimate_final_validation_s` with the seconds per voxel of the
    measured validations: patches x patch voxels, or the sliding windows' voxels in ``volumes`` mode; 0 without
    validation cases or when the caller validates nothing at the end).

    Returns:
        ``{"iteration_s", "validation_s", "val_every", "reserve_s"}``."""
    iteration_s, validation_s = epoch_costs(history, ipe)
    timing = {"iteration_s": iteration_s, "validation_s": validation_s or 0.0,
              "val_every": float(max(1, val_every)), "reserve_s": 0.0}
    if reserve_final_validation and val_ids and validation_s is not None:
        patch = plan["patch_size"]
        if patch_validator is not None:
            voxels = len(patch_validator) * float(np.prod(patch))
        else:
            cap = training_settings(plan).val_max_cases
            ids = val_ids[:cap] if cap else val_ids
            voxels = float(sum(window_voxels(store.shape(c), patch, inference_settings(plan).need("overlap"),
                                             plan.get("slice_axis")) for c in ids))
        s_vox = timing["validation_s"] / max(voxels, 1.0)
        timing["reserve_s"] = estimate_final_validation_s(store, val_ids, plan, s_vox)
    return timing


def fit_iterations(t: Trainer, budget_s: float, total: int) -> int:
    """The total number of iterations that fit ``budget_s`` at iteration granularity::

        left  = budget - elapsed - reserve                    reserve: the final validation's estimated cost
        epoch = ipe * iteration_s + validation_s / val_every  (validation amortised over its interval)
        n     = floor(left / epoch) whole epochs, then as many iterations of a last, partial epoch as fit in
                what is left after that epoch's own validation

    Args:
        t: the trainer (``timing``, ``elapsed``, ``iteration``, the plan's ``iterations_per_epoch``).
        budget_s: the budget in seconds.
        total: the plan's ``max_epochs * iterations_per_epoch``.

    Returns:
        the fitted total, at least the iterations already done and at most ``total``."""
    tm = t.timing
    ipe = int(training_settings(t.plan).need("iterations_per_epoch"))
    it_s = max(float(tm["iteration_s"]), 1e-9)
    val_s = float(tm.get("validation_s", 0.0))
    left = budget_s - t.elapsed - float(tm.get("reserve_s", 0.0))
    epoch_s = ipe * it_s + val_s / max(1.0, float(tm.get("val_every", 1.0)))
    whole = max(0, int(left // epoch_s))
    rest = left - whole * epoch_s - val_s
    extra = min(ipe - 1, max(0, int(rest // it_s)))
    return int(min(total, max(t.iteration, t.iteration + whole * ipe + extra)))
