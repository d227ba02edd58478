"""The run folder and the cross-validation folder: what focusseg writes there and how it is read back.

One module owns the layout, so training workflows, the report and export read the same names: the run record
(``run.json``: fold, plan hash, data folder, version), the lock (``.lock``, ``flock``), the plan file and its one
reader, focusseg's own products (what ``--overwrite`` may remove), fold folders of a cross-validation, and the
epoch log (``log.jsonl``: one strict-JSON line per epoch or run event, plus the training curve).

Cleaning never follows a symlink out of the folder: a symlinked product is unlinked, never its target, and a
subfolder focusseg cleans or writes into is refused when it is a link (:func:`owned_subfolder`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from focusseg import __version__
from focusseg.errors import MissingFileError, PlanError, RunFolderError, UsageError
from focusseg.io.atomic import append_line, atomic_write_text, save_json
from focusseg.io.checkpoint import LATEST, PREVIOUS
from focusseg.io.jsonfile import loads_bounded, read_json
from focusseg.io.paths import is_inside
from focusseg.settings import parse_plan_settings

RUN_JSON = "run.json"
#: The plan a run trains (written when the run starts, rewritten when a resume changes it).
PLAN_JSON = "plan.json"


LOCK = ".lock"


#: What ``overwrite`` removes from a run folder: focusseg's own products (and their temporaries), nothing else.
PRODUCT_FILES = (LATEST, PREVIOUS, "checkpoint_best.pt", "checkpoint_final.pt", "log.jsonl", "run.json",
                 "plan.json", "summary.json", "postprocessing.json", "training_curve.png", "fingerprint.json",
                 "splits_final.json", "report.html")


PRODUCT_DIRS = ("validation", "preprocessed", "tensorboard")


def plan_hash(plan: dict) -> str:
    """sha256 of the plan's content (canonical JSON: key order and formatting do not matter)."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` exclusively (``flock``, released when the process dies, and on any exception);
    the holder's PID and host are written in it. A second holder gets :class:`RunFolderError` naming them."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no lock
        yield
        return
    path = run_dir / LOCK
    refuse_link(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            who = f"PID {holder[0]} on {holder[1]}" if len(holder) >= 2 else "another process"
            raise RunFolderError(f"run folder in use by {who} (another focusseg train is writing into it)", run_dir,
                                 hint="wait for it to finish, or use another --out") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_run_info(run_dir: Path) -> dict | None:
    """``run_dir/run.json`` (None when absent); unreadable -> :class:`RunFolderError`."""
    path = run_dir / RUN_JSON
    if not path.is_file():
        return None
    try:
        info = read_json(path, RunFolderError, allow_nan=False)
    except RunFolderError as exc:
        raise RunFolderError(f"unreadable run record ({exc.problem})", path,
                             hint="start the run again with --overwrite, or use another --out") from None
    if not isinstance(info, dict):
        raise RunFolderError("not a focusseg run record (expected a JSON object)", path,
                             hint="start the run again with --overwrite, or use another --out")
    return info


def write_run_info(run_dir: Path, data_dir: Path, fold: str, plan: dict, time_budget_min: float | None) -> None:
    save_json({"fold": fold, "plan_sha256": plan_hash(plan), "data_dir": str(data_dir.resolve()),
               "time_budget_min": time_budget_min, "focusseg_version": __version__}, run_dir / RUN_JSON)


def clean_run_folder(run_dir: Path, preprocessed_dir: Path | None = None) -> list[Path]:
    """Remove focusseg's own products from a run folder (:data:`PRODUCT_FILES`, their temporaries,
    :data:`PRODUCT_DIRS`, and ``preprocessed_dir`` when it lies inside the run folder); nothing else.

    Links are removed as links: a product that is a symlink (a file or a folder) is unlinked, its target is left
    alone, and no folder tree is walked through a link.

    Raises:
        RunFolderError: ``run_dir`` itself is a symlink (cleaning it would delete in the folder it points to).
    """
    refuse_link(run_dir)
    removed: list[Path] = []
    for entry in sorted(run_dir.iterdir()):
        name = entry.name
        own = name in PRODUCT_FILES or any(name.startswith(f".{p}.") and ".tmp" in name for p in PRODUCT_FILES)
        if own and remove_file_or_link(entry):
            removed.append(entry)
    dirs = [run_dir / d for d in PRODUCT_DIRS]
    if preprocessed_dir is not None and is_inside(preprocessed_dir, run_dir) and \
            Path(preprocessed_dir).resolve() != run_dir.resolve():
        dirs.append(Path(preprocessed_dir).resolve())  # the folder itself, inside the run folder: no link left
    for d in dirs:
        if d.is_symlink():
            d.unlink()
        elif d.is_dir():
            shutil.rmtree(d)  # never follows links inside the tree (they are unlinked)
        else:
            continue
        removed.append(d)
    return removed


#: How a refused link is reported: focusseg removes links it owns, but never deletes or writes through one.
LINK_REFUSAL = "focusseg does not delete or write through links; remove the link"


def refuse_link(path: str | Path, hint: str | None = None) -> Path:
    """``path``, refused when it is a symbolic link (a folder focusseg would clean or write into, reached
    through a link, lies somewhere else: somebody else's files).

    Args:
        path: a folder (or file) focusseg is about to delete or write in.
        hint: the error's hint (what to do instead).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        RunFolderError: ``path`` is a symlink (one line naming it and where it points).
    """
    p = Path(path)
    if p.is_symlink():
        try:
            target = os.readlink(p)
        except OSError:
            target = "?"
        raise RunFolderError(f"is a symlink (to {target}): {LINK_REFUSAL}", p, hint=hint)
    return p


def owned_subfolder(parent: str | Path, *names: str, create: bool = False) -> Path:
    """``parent / names...``: a subfolder focusseg owns and cleans or writes into, with no symlink at any level
    below ``parent`` (``parent`` is the folder the user named).

    Args:
        parent: the run, cross-validation or output folder.
        names: the path below it, one plain name per level (``"validation", "predictions"``).
        create: make the folders (after the check).

    Returns:
        the subfolder's path.

    Raises:
        RunFolderError: a level is a symlink (naming it), or exists and is no folder.
    """
    path = Path(parent)
    for name in names:
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise ValueError(f"{name!r} is not one plain folder name")
        path = refuse_link(path / name)
        if path.exists() and not path.is_dir():
            raise RunFolderError("exists and is not a folder: focusseg writes its products there", path)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def remove_file_or_link(path: str | Path) -> bool:
    """Remove a file, or a symlink itself (never its target); folders are left alone.

    Returns:
        whether something was removed.
    """
    p = Path(path)
    if p.is_symlink() or p.is_file():
        p.unlink(missing_ok=True)
        return True
    return False


def fold_name(fold: str | int) -> str:
    text = str(fold).strip()
    if text == "all" or (text.isdigit() and not text.startswith("-")):
        return text if text == "all" else str(int(text))
    raise UsageError(f"fold {fold!r} is neither a fold number (0, 1, ...) nor 'all'")


def read_plan(path: str | Path) -> dict:
    """The one reader of a plan file: the JSON object (bounded; NaN and Infinity refused), its ``training``,
    ``inference`` and ``network`` sections and its preprocessing fields (normalization, target spacing, labels,
    regions) and cost bounds checked by :func:`focusseg.settings.parse_plan_settings` (types, ranges, unknown keys,
    finiteness), so a plan read from any file passes one gate before anything is built from it.

    Args:
        path: the plan file (``run_dir / PLAN_JSON`` or a ``--plan`` file).

    Returns:
        the plan as read (a dict; the typed sections are parsed where they are used).

    Raises:
        MissingFileError: no such file.
        PlanError: unreadable (OS error, not UTF-8, not JSON), not a JSON object, or a section out of its
            bounds (the message names the field).
    """
    if not Path(path).exists():
        raise MissingFileError("no such plan file", path)
    try:
        plan = read_json(path, PlanError, allow_nan=False)
    except PlanError as exc:
        raise PlanError(f"unreadable plan ({exc.problem})", path) from None
    if not isinstance(plan, dict):
        raise PlanError("not a plan (expected a JSON object)", path)
    parse_plan_settings(plan, path)
    return plan


def clear_stale(folder: Path, keep: set[str]) -> None:
    """Remove every file in ``folder`` that is not named in ``keep`` (cases of another fold or run); a stale
    symlink is removed itself, never its target.

    Raises:
        RunFolderError: ``folder`` is a symlink (nothing is removed through it).
    """
    refuse_link(folder)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name not in keep:
            remove_file_or_link(p)


def replace_link(target: Path, link: Path) -> None:
    """``link`` -> ``target``, replaced atomically (an existing file or link of that name is replaced itself).

    Raises:
        RunFolderError: ``link``'s folder is a symlink (the link would be written into the folder it points to).
    """
    refuse_link(link.parent)
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.parent / f".{link.name}.{os.getpid()}.tmplink"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)



CROSSVAL_JSON = "crossval.json"


def is_crossval_dir(path: str | Path) -> bool:
    return (Path(path) / CROSSVAL_JSON).is_file()


def fold_dirs(cv_dir: str | Path, finished_only: bool = True) -> list[Path]:
    """The CV folder's fold run folders (``fold_K``), sorted by K; ``finished_only``: those with a
    ``summary.json`` and a best checkpoint."""
    cv = Path(cv_dir)
    out = []
    for p in cv.glob("fold_*"):
        if not p.is_dir() or not p.name[5:].isdigit():
            continue
        if finished_only and not ((p / "summary.json").is_file() and (p / "checkpoint_best.pt").is_file()):
            continue
        out.append(p)
    return sorted(out, key=lambda p: int(p.name[5:]))


def describe_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows ``(fold, cases, label Dice..., mean)`` for a table: one per fold, then ``pooled``."""
    labels = sorted({k for f in result["folds"].values() for k in (f.get("dice_per_label") or {})}
                    | set(result["pooled"].get("dice_per_label") or {}), key=lambda s: int(s))

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{float(v):.4f}"

    rows = []
    for k, f in sorted(result["folds"].items(), key=lambda kv: int(kv[0])):
        d = f.get("dice_per_label") or {}
        rows.append((k, str(f["val_cases"]), *[fmt(d.get(lab)) for lab in labels], fmt(f.get("mean_dice"))))
    p = result["pooled"]
    d = p.get("dice_per_label") or {}
    rows.append(("pooled", str(p["cases"]), *[fmt(d.get(lab)) for lab in labels], fmt(p.get("mean_dice"))))
    return [("fold", "cases", *[f"label {lab}" for lab in labels], "mean"), *rows]




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
                rec = loads_bounded(line, self.path, RunFolderError)
            except RunFolderError:
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


#: The largest epoch log read (a log of ten thousand epochs is a few MiB).
MAX_LOG_BYTES = 256 * 2**20


def _lines(path: Path) -> list[str]:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_LOG_BYTES + 1)
    except FileNotFoundError:
        return []
    if len(data) > MAX_LOG_BYTES:
        raise RunFolderError(f"is larger than {MAX_LOG_BYTES:,} bytes: not an epoch log focusseg reads", path)
    return [x for x in data.decode(errors="replace").splitlines() if x.strip()]


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epoch records of ``run_dir/log.jsonl`` (event lines such as ``{"event": "resume"}`` skipped).

    Raises:
        RunFolderError: a line that is not bounded JSON, or a log over :data:`MAX_LOG_BYTES` (naming the file).
    """
    out = []
    path = Path(run_dir) / "log.jsonl"
    for line in _lines(path):
        rec = loads_bounded(line, path, RunFolderError)
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
