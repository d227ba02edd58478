"""Run observers: the JSONL epoch log, the rich progress bar and the training-curve PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from focusseg.io.atomic import append_line, atomic_write_text


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
    """``log.jsonl``: one JSON line per epoch (``{"epoch": ...}``) and one per run event (``{"event": "resume",
    ...}``), each written whole (:func:`~focusseg.io.atomic.append_line`) and valid JSON (NaN/inf become
    ``null``). Readers take the epoch lines with :func:`read_log`. Also plots ``training_curve.png``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "log.jsonl"

    def progress(self, total: int, description: str, enabled: bool = True) -> _Bar:
        return _Bar(total, description, enabled)

    def write(self, record: dict[str, Any]) -> None:
        """Append an epoch record and print its one-line summary on stderr."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        append_line(self.path, dumps_line(record))
        try:
            from rich.console import Console

            dice = finite(record.get("val_mean_dice"))
            msg = f"epoch {record['epoch']:>4}  it {record['iteration']:>6}  loss {_fmt(record.get('train_loss'))}"
            msg += f"  lr {record['lr']:.2e}" + (f"  val dice {dice:.4f}" if dice is not None else "")
            if record.get("nonfinite_steps"):
                msg += f"  non-finite steps {record['nonfinite_steps']}"
            msg += f"  {record['elapsed_s']:.0f}s" + ("  *best*" if record.get("best") else "")
            Console(stderr=True).print(msg, highlight=False)
        except Exception:  # logging must never stop training
            pass

    def event(self, event: str, **fields: Any) -> None:
        """Append a run event line ``{"event": event, **fields}`` (not an epoch: :func:`read_log` skips it)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        append_line(self.path, dumps_line({"event": event, **fields}))

    def restore(self, history: list[dict[str, Any]]) -> None:
        """Make the log agree with a checkpoint being resumed: its epoch lines become exactly ``history`` (lines
        of epochs the checkpoint does not hold -- work lost to a crash -- go; a line lost between checkpoint and
        log write comes back), event lines stay after the epoch they followed. Rewritten atomically."""
        events_after: dict[int | None, list[str]] = {}
        last: int | None = None
        for line in _lines(self.path):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line from an old focusseg: drop it
            if isinstance(rec, dict) and "event" in rec:  # event lines may name an epoch too (diverged)
                events_after.setdefault(last, []).append(line)
            elif isinstance(rec, dict) and isinstance(rec.get("epoch"), int):
                last = rec["epoch"]
        out = list(events_after.pop(None, []))
        for rec in history:
            out.append(dumps_line(rec))
            out.extend(events_after.pop(rec["epoch"], []))
        for rest in events_after.values():
            out.extend(rest)
        if out or self.path.exists():
            atomic_write_text(self.path, "".join(x + "\n" for x in out))

    def plot(self, history: list[dict[str, Any]]) -> Path | None:
        if not history:
            return None
        return plot_history(history, self.run_dir / "training_curve.png")


def _lines(path: Path) -> list[str]:
    try:
        return [x for x in path.read_text().splitlines() if x.strip()]
    except FileNotFoundError:
        return []


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epoch records of ``run_dir/log.jsonl`` (event lines such as ``{"event": "resume"}`` skipped)."""
    out = []
    for line in _lines(Path(run_dir) / "log.jsonl"):
        rec = json.loads(line)
        if isinstance(rec, dict) and "epoch" in rec and "event" not in rec:
            out.append(rec)
    return out


def sanitize(o: Any) -> Any:
    """``o`` as strict JSON data: NaN/inf -> None, numpy and tensors -> Python numbers and lists."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, (bool, int, str)) or o is None:
        return o
    if isinstance(o, dict):
        return {str(k): sanitize(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [sanitize(v) for v in o]
    if hasattr(o, "tolist"):  # numpy arrays and scalars, tensors
        return sanitize(o.tolist())
    return str(o)


def dumps_line(record: dict[str, Any]) -> str:
    """One strict-JSON line (no NaN literals)."""
    return json.dumps(sanitize(record), allow_nan=False)


def finite(v: Any) -> float | None:
    """``v`` as a finite float, else None (None, NaN, inf, anything that is no number)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _num(v: Any) -> float:
    f = finite(v)
    return math.nan if f is None else f


def _fmt(v: Any) -> str:
    f = finite(v)
    return "nan" if f is None else f"{f:.4f}"


def plot_history(history: list[dict[str, Any]], out: Path) -> Path:
    """Training loss and validation Dice (mean and per class) against iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [h["iteration"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(its, [_num(h.get("train_loss")) for h in history], label="train loss")
    a1.set_xlabel("iteration")
    a1.set_ylabel("loss")
    a1.legend()
    val = [h for h in history if "val_mean_dice" in h]
    if val:
        vi = [h["iteration"] for h in val]
        a2.plot(vi, [_num(h["val_mean_dice"]) for h in val], "k-", lw=2, label="mean")
        for c in val[0]["val_dice"]:
            ys = [_num(h["val_dice"].get(c)) for h in val]
            a2.plot(vi, ys, lw=1, label=f"class {c}")
        a2.set_ylim(0, 1)
        a2.legend(fontsize=8)
    a2.set_xlabel("iteration")
    a2.set_ylabel("validation Dice")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
