"""The epoch's validation and what it drives: one score per validated epoch (pseudo-Dice on the fixed patches, or
whole volumes in ``volumes`` mode, :mod:`focusseg.engine.validation`), then the class weighter's update, the
metric-driven learning rate, ``after_validation`` callbacks and the best checkpoint; every ``val_full_every``
epochs the whole held-out volumes for the record.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from focusseg.engine.distributed import World
from focusseg.engine.events import call
from focusseg.engine.guards import is_new_best
from focusseg.engine.state import Trainer, inference_export
from focusseg.engine.validation import PatchValidator, dice_from_counts, validate_volumes
from focusseg.io import checkpoint as ckpt
from focusseg.preprocessing.store import PreprocessedStore
from focusseg.settings import training_settings


def mean_foreground(scores: dict[int, float]) -> float:
    """The NaN-aware mean of per-class (or per-region) scores; 0.0 when every one is NaN."""
    values = [scores[c] for c in sorted(scores)]
    return float(np.nanmean(values)) if not all(np.isnan(values)) else 0.0


class EpochValidator:
    """Validates at the end of an epoch when due and records the result in the epoch's record.

    ``training.validation``: ``"patches"`` (default; a :class:`PatchValidator` built once, each rank scoring its
    share) or ``"volumes"``; ``val_every`` sets the interval (the last epoch always validates), ``val_max_cases``
    caps the cases, ``val_full_every`` the whole-volume record (patch mode only; 0: never).

    Args:
        store: the preprocessed store.
        plan: the run's plan.
        val_ids: the validation cases (none: nothing is ever validated).
        device: the training device.
        amp: the training autocast dtype, or None.
        world: the processes training together.
        callbacks: observers told ``after_validation``."""

    def __init__(self, store: PreprocessedStore, plan: dict, val_ids: list[str], device: torch.device,
                 amp: torch.dtype | None, world: World, callbacks: list[Any]) -> None:
        tr = training_settings(plan)
        self.store, self.plan, self.device, self.amp, self.world = store, plan, device, amp, world
        self.callbacks = callbacks
        self.case_ids = val_ids[: tr.val_max_cases] if tr.val_max_cases else list(val_ids)
        self.every = tr.val_every
        self.patches: PatchValidator | None = None
        self.full_every = 0
        if tr.validation == "patches" and self.case_ids:
            self.patches = PatchValidator(store, self.case_ids, plan, device, amp, shard=(world.rank, world.size))
            self.full_every = tr.val_full_every

    def due(self, epoch: int, last: bool) -> bool:
        """Whether epoch ``epoch`` (0-based) validates: every ``val_every`` epochs and at the last."""
        return bool(self.case_ids) and ((epoch + 1) % self.every == 0 or last)

    def __call__(self, t: Trainer, record: dict[str, Any], last: bool) -> None:
        """Validate epoch ``t.epoch`` when due, then the whole-volume record when due (both into ``record``)."""
        if self.due(t.epoch, last):
            self._validate(t, record)
        if self.patches is not None and self.full_every > 0 and (t.epoch + 1) % self.full_every == 0:
            v0 = time.perf_counter()  # for the record: the run validates whole volumes at the end anyway
            vol = self._volumes(t)
            record.update(val_volume_dice={str(c): s for c, s in vol.items()},
                          val_volume_mean_dice=mean_foreground(vol),
                          val_volume_time_s=round(time.perf_counter() - v0, 2))

    def _validate(self, t: Trainer, record: dict[str, Any]) -> None:
        """Score, then what the score drives: class weights, the metric-driven LR, callbacks, the best."""
        parts, v0 = t.parts, time.perf_counter()
        if self.patches is not None:  # each rank its share of the patches; counts summed over ranks
            counts = self.world.all_reduce_sum(self.patches.counts(parts.task.inference_module()))
            scores = dice_from_counts(counts.cpu(), self.patches.labels)
        else:
            scores = self._volumes(t)
        mean = mean_foreground(scores)
        record.update(val_dice={str(c): s for c, s in scores.items()}, val_mean_dice=mean,
                      val_time_s=round(time.perf_counter() - v0, 2))
        if self.patches is not None:
            record["val_kind"] = "patches"
        if parts.weighter is not None:
            fg = [scores[c] for c in sorted(scores)]
            parts.weighter.update(torch.tensor(np.nan_to_num(fg), dtype=torch.float32))
            record["class_weights"] = parts.weighter.weights().tolist()
        parts.lr.step(t.iteration, metric=mean)
        call(self.callbacks, "after_validation", t, scores)
        if is_new_best(mean, t.best, parts.task.inference_module()):
            t.best = mean
            record["best"] = True
            if self.world.is_main:
                ckpt.save_atomic(inference_export(t), t.run_dir / "checkpoint_best.pt")

    def _volumes(self, t: Trainer) -> dict[int, float]:
        return validate_volumes(t.parts.task.inference_module(), self.store, self.case_ids, self.plan, self.device,
                                self.amp, world=self.world)

    def close(self) -> None:
        """Stop the patch loader's worker (kept across epochs)."""
        if self.patches is not None:
            self.patches.close()
