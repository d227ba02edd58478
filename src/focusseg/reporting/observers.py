"""Training observers (``focusseg.engine.events``) that record what reports show; they never change training.

- :class:`TensorBoardLogger` (``focusseg train --logger tensorboard``): every epoch record as TensorBoard scalars
  in ``RUN/tensorboard/`` (``torch.utils.tensorboard.SummaryWriter``; needs the ``tensorboard`` package, extra
  ``tracking``), plus the per-iteration training loss.
- :class:`CycleStats`: cycle training's measured kept fraction and committee disagreement per epoch, as ``cycle``
  event lines of ``log.jsonl`` (the report's cycle-training panel). Silent for any other task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from focusseg.errors import UsageError
from focusseg.runfolder import finite

TENSORBOARD_DIR = "tensorboard"
LOGGERS = ("none", "tensorboard")


def _is_main(trainer: Any) -> bool:
    """Only the main process of a multi-process run writes (every rank sees the same records)."""
    return bool(getattr(getattr(trainer, "world", None), "is_main", True))


def epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of one epoch record (``tag -> value``; NaN / absent values left out):

    ``train/loss``, ``train/lr``, ``train/nonfinite_steps``, ``time/s_per_iteration`` (of this epoch),
    ``time/train_s``, ``time/val_s``, ``time/data_wait_s`` (when logged), ``val/mean_dice``, ``val/dice/<label>``,
    ``val_volume/mean_dice``, ``val_volume/dice/<label>``, ``class_weights/<class>``, ``sampler/<key>`` (Focused
    Practice's threshold and counts)."""
    out: dict[str, float] = {}

    def put(tag: str, v: Any) -> None:
        f = finite(v)
        if f is not None:
            out[tag] = f

    put("train/loss", record.get("train_loss"))
    put("train/lr", record.get("lr"))
    put("train/nonfinite_steps", record.get("nonfinite_steps"))
    put("time/train_s", record.get("train_time_s"))
    put("time/val_s", record.get("val_time_s"))
    put("time/data_wait_s", record.get("data_wait_s"))
    put("val/mean_dice", record.get("val_mean_dice"))
    for k, v in (record.get("val_dice") or {}).items():
        put(f"val/dice/{k}", v)
    put("val_volume/mean_dice", record.get("val_volume_mean_dice"))
    for k, v in (record.get("val_volume_dice") or {}).items():
        put(f"val_volume/dice/{k}", v)
    for c, w in enumerate(record.get("class_weights") or []):
        put(f"class_weights/{c}", w)
    for k, v in (record.get("sampler") or {}).items():
        if k != "epoch" and not isinstance(v, (dict, list)):
            put(f"sampler/{k}", v)
    return out


class TensorBoardLogger:
    """Writes each epoch's scalars (:func:`epoch_scalars`, step = the iteration count) and each iteration's
    training loss (``train/loss_iteration``) to ``run_dir/tensorboard``. On resume the writer purges events at
    or after the checkpoint's iteration (``purge_step``), so a crash's lost epochs do not stay in the curves."""

    def __init__(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise UsageError("--logger tensorboard needs the tensorboard package",
                             hint="pip install 'focusseg[tracking]' (or pip install tensorboard)") from exc
        self._writer_cls = SummaryWriter
        self.writer: Any = None
        self.log_dir: Path | None = None

    def on_train_start(self, trainer: Any) -> None:
        if not _is_main(trainer):
            return
        self.log_dir = Path(trainer.run_dir) / TENSORBOARD_DIR
        self.writer = self._writer_cls(log_dir=str(self.log_dir),
                                       purge_step=int(trainer.iteration) if trainer.iteration else None)

    def after_batch(self, trainer: Any, step: Any) -> None:
        if self.writer is not None and getattr(step, "finite", True):
            f = finite(step.loss)  # already a Python float (the loop read it): no device sync here
            if f is not None:
                self.writer.add_scalar("train/loss_iteration", f, int(trainer.iteration) + 1)

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = int(record.get("iteration", trainer.iteration))
        for tag, value in epoch_scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def on_train_end(self, trainer: Any, summary: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class CycleStats:
    """Cycle training's per-epoch statistics from each step's ``extras`` (:class:`focusseg.strategies.cycle.
    CycleTask`): ``kept_fraction`` = mean over steps and the three networks of the fraction of the batch the
    committee selected; ``disagreement`` = mean over steps, networks and samples of ``|l_B - l_C|``, the peers'
    per-sample loss difference that eq. 1 (paper 004 §2.2) sorts on. Sums stay on the device (one host sync per
    epoch). Written as ``{"event": "cycle", "epoch", "kept_fraction", "disagreement", "keep_planned"}``."""

    def __init__(self) -> None:
        self._kept: Any = None
        self._dis: Any = None
        self._n = 0
        self._keep: float | None = None

    def after_batch(self, trainer: Any, step: Any) -> None:
        extras = getattr(step, "extras", None) or {}
        masks, losses = extras.get("masks"), extras.get("per_network_loss")
        if masks is None or losses is None or not getattr(step, "finite", True):
            return
        kept = masks.float().mean()
        dis = sum((losses[(i + 1) % 3] - losses[(i + 2) % 3]).abs().mean() for i in range(3)) / 3
        self._kept = kept if self._kept is None else self._kept + kept
        self._dis = dis if self._dis is None else self._dis + dis
        self._n += 1
        self._keep = finite(extras.get("keep"))

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if not self._n or not _is_main(trainer):
            self._kept, self._dis, self._n = None, None, 0
            return
        trainer.log.event("cycle", epoch=int(record["epoch"]), kept_fraction=float(self._kept) / self._n,
                          disagreement=float(self._dis) / self._n, keep_planned=self._keep, steps=self._n)
        self._kept, self._dis, self._n = None, None, 0


def make_loggers(name: str | None) -> list[Any]:
    """The observers for ``--logger NAME`` (``none`` or ``tensorboard``) plus :class:`CycleStats`."""
    key = (name or "none").strip().lower()
    if key not in LOGGERS:
        raise UsageError(f"--logger {name!r} is not one of {', '.join(LOGGERS)}")
    out: list[Any] = [CycleStats()]
    if key == "tensorboard":
        out.append(TensorBoardLogger())
    return out
