"""Run observers: the JSONL epoch log, the rich progress bar and the training-curve PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class _Bar:
    def __init__(self, total: int, description: str, enabled: bool) -> None:
        self.enabled = enabled
        self.n, self.loss = 0, 0.0
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(), transient=True)
            self._p.start()
            self._task = self._p.add_task(description, total=total, loss=float("nan"))

    def advance(self, loss: float) -> None:
        self.n += 1
        self.loss += (loss - self.loss) / self.n
        if self.enabled:
            self._p.update(self._task, advance=1, loss=self.loss)

    def close(self) -> None:
        if self.enabled:
            self._p.stop()


class EpochLog:
    """Appends one JSON line per epoch to ``log.jsonl``; plots ``training_curve.png``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "log.jsonl"

    def progress(self, total: int, description: str, enabled: bool = True) -> _Bar:
        return _Bar(total, description, enabled)

    def write(self, record: dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
        try:
            from rich.console import Console

            dice = record.get("val_mean_dice")
            msg = f"epoch {record['epoch']:>4}  it {record['iteration']:>6}  loss {record['train_loss']:.4f}"
            msg += f"  lr {record['lr']:.2e}" + (f"  val dice {dice:.4f}" if dice is not None else "")
            msg += f"  {record['elapsed_s']:.0f}s" + ("  *best*" if record.get("best") else "")
            Console(stderr=True).print(msg, highlight=False)
        except Exception:  # logging must never stop training
            pass

    def plot(self, history: list[dict[str, Any]]) -> Path | None:
        if not history:
            return None
        return plot_history(history, self.run_dir / "training_curve.png")


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def plot_history(history: list[dict[str, Any]], out: Path) -> Path:
    """Training loss and validation Dice (mean and per class) against iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [h["iteration"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(its, [h["train_loss"] for h in history], label="train loss")
    a1.set_xlabel("iteration")
    a1.set_ylabel("loss")
    a1.legend()
    val = [h for h in history if "val_mean_dice" in h]
    if val:
        vi = [h["iteration"] for h in val]
        a2.plot(vi, [h["val_mean_dice"] for h in val], "k-", lw=2, label="mean")
        for c in val[0]["val_dice"]:
            ys = [h["val_dice"].get(c, math.nan) for h in val]
            a2.plot(vi, ys, lw=1, label=f"class {c}")
        a2.set_ylim(0, 1)
        a2.legend(fontsize=8)
    a2.set_xlabel("iteration")
    a2.set_ylabel("validation Dice")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
