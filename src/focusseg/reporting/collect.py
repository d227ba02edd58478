"""What a report reads from a run or cross-validation folder, tolerant of a run in progress.

Everything is read, nothing executed or changed: JSON files and ``log.jsonl`` (the epoch records and event
lines of :class:`focusseg.runfolder.EpochLog`), ``validation/metrics.csv`` and ``validation/summary.json``
(:func:`focusseg.metrics.evaluate_folders`). A file that is absent is simply absent from the report (a run that
has not validated yet); a file that exists but cannot be read is recorded in ``problems`` (shown on the page,
naming the file) instead of stopping the report. Only a folder that is no run at all is an error.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from focusseg.errors import FocussegError, MissingFileError, RunFolderError, one_line
from focusseg.io.jsonfile import loads_bounded
from focusseg.io.jsonfile import read_json as read_bounded_json
from focusseg.runfolder import CROSSVAL_JSON, finite, fold_dirs


@dataclass
class RunData:
    """A run folder's contents as the report needs them (``None`` / empty where not written yet)."""

    run_dir: Path
    plan: dict | None = None
    info: dict | None = None  # run.json
    summary: dict | None = None  # summary.json (written when training and the final validation finished)
    records: list[dict] = field(default_factory=list)  # epoch lines of log.jsonl
    events: list[dict] = field(default_factory=list)  # event lines of log.jsonl
    val_summary: dict | None = None  # validation/summary.json
    val_rows: list[dict] = field(default_factory=list)  # validation/metrics.csv, numbers parsed (None: undefined)
    postprocessing: dict | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def best_record(self) -> dict | None:
        """The epoch record marked best last (the checkpoint_best.pt epoch)."""
        best = [r for r in self.records if r.get("best")]
        return best[-1] if best else None

    @property
    def labels(self) -> dict[str, str]:
        """``{label value: name}`` of the foreground labels (from the plan), value order."""
        labels = (self.plan or {}).get("labels") or {}
        out = {str(v): str(k) for k, v in labels.items() if isinstance(v, int) and v != 0}
        return dict(sorted(out.items(), key=lambda kv: int(kv[0])))

    def final_dice(self) -> tuple[dict[str, float | None], str]:
        """Per-label Dice of the run and where it comes from: the final (raw, original geometry) validation;
        else the best epoch's validation pseudo-Dice; else nothing."""
        if self.val_summary and self.val_summary.get("per_label"):
            per = {k: (v.get("dice") or {}).get("mean") for k, v in self.val_summary["per_label"].items()}
            return per, "final validation (original geometry)"
        fv = (self.summary or {}).get("final_validation") or {}
        if fv.get("dice_per_label"):
            return dict(fv["dice_per_label"]), "final validation (original geometry)"
        best = self.best_record
        if best is not None and best.get("val_dice"):
            return {str(k): finite(v) for k, v in best["val_dice"].items()}, \
                f"validation pseudo-Dice of the best epoch ({best['epoch']})"
        return {}, "no validation yet"


@dataclass
class CrossvalData:
    """A cross-validation folder: ``crossval.json`` (when pooled), its pooled validation and each fold's run."""

    cv_dir: Path
    result: dict | None
    folds: list[RunData]
    pooled_rows: list[dict] = field(default_factory=list)
    pooled_summary: dict | None = None
    problems: list[str] = field(default_factory=list)


def _one_line(exc: BaseException) -> str:
    return one_line(exc, typed=True)[:300]


def read_json(path: Path, problems: list[str]) -> dict | None:
    """A JSON object from ``path``; None when absent; unreadable or not an object -> a problem, None."""
    if not path.is_file():
        return None
    try:
        data = read_bounded_json(path, FocussegError)  # bounded: size, nesting, digits
    except FocussegError as exc:
        problems.append(f"{path}: unreadable ({exc.problem})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path}: not a JSON object")
        return None
    return data


def read_log_lines(path: Path, problems: list[str]) -> tuple[list[dict], list[dict]]:
    """(epoch records, event lines) of a ``log.jsonl``; a line that is not JSON is reported and skipped (a line
    being appended while we read)."""
    records: list[dict] = []
    events: list[dict] = []
    if not path.is_file():
        return records, events
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: unreadable ({_one_line(exc)})")
        return records, events
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = loads_bounded(line)
        except FocussegError:
            bad += 1
            continue
        if not isinstance(rec, dict):
            bad += 1
        elif "event" in rec:
            events.append(rec)
        elif isinstance(rec.get("epoch"), int):
            records.append(rec)
    if bad:
        problems.append(f"{path}: {bad} line(s) that are not epoch records or events were skipped")
    return records, events


def read_metrics_csv(path: Path, problems: list[str]) -> list[dict]:
    """Rows of an evaluator ``metrics.csv``: ``case`` and ``label`` as text, every metric a float or None
    (empty cell = undefined). NaN never becomes a number here."""
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as fh:
            raw = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(f"{path}: unreadable ({_one_line(exc)})")
        return []
    rows = []
    for r in raw:
        if not r.get("case") or r.get("label") in (None, ""):
            continue
        row: dict[str, Any] = {"case": r["case"], "label": str(r["label"])}
        for k, v in r.items():
            if k not in ("case", "label") and k is not None:
                row[k] = finite(v) if v not in (None, "") else None
        rows.append(row)
    return rows


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder. :class:`MissingFileError` when it does not exist, :class:`RunFolderError` when it
    holds neither ``plan.json`` nor ``log.jsonl`` (not a focusseg run)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise MissingFileError("no such run folder", run_dir)
    if not run_dir.is_dir():
        raise RunFolderError("not a folder (expected a run folder from `focusseg train`)", run_dir)
    if not (run_dir / "plan.json").is_file() and not (run_dir / "log.jsonl").is_file():
        raise RunFolderError("not a focusseg run folder (no plan.json, no log.jsonl)", run_dir,
                             hint="give a folder made by `focusseg train --out` or `focusseg crossval --out`")
    run = RunData(run_dir)
    p = run.problems
    run.plan = read_json(run_dir / "plan.json", p)
    run.info = read_json(run_dir / "run.json", p)
    run.summary = read_json(run_dir / "summary.json", p)
    run.records, run.events = read_log_lines(run_dir / "log.jsonl", p)
    run.val_summary = read_json(run_dir / "validation" / "summary.json", p)
    run.val_rows = read_metrics_csv(run_dir / "validation" / "metrics.csv", p)
    run.postprocessing = read_json(run_dir / "postprocessing.json", p)
    return run


def load_crossval(cv_dir: str | Path) -> CrossvalData:
    """Read a cross-validation folder: ``crossval.json`` (absent before pooling), every ``fold_K`` run folder
    (finished or not), the pooled ``validation/``."""
    cv_dir = Path(cv_dir)
    problems: list[str] = []
    result = read_json(cv_dir / CROSSVAL_JSON, problems)
    folds = []
    for d in fold_dirs(cv_dir, finished_only=False):
        try:
            folds.append(load_run(d))
        except RunFolderError:
            continue  # a fold folder made but nothing written into it yet
    cv = CrossvalData(cv_dir, result, folds, problems=problems)
    cv.pooled_rows = read_metrics_csv(cv_dir / "validation" / "metrics.csv", problems)
    cv.pooled_summary = read_json(cv_dir / "validation" / "summary.json", problems)
    return cv


def is_crossval_folder(path: str | Path) -> bool:
    """A cross-validation folder: ``crossval.json``, or ``fold_K`` run folders and no plan of its own."""
    path = Path(path)
    if (path / "crossval.json").is_file():
        return True
    return not (path / "plan.json").is_file() and any(
        p.is_dir() and p.name[5:].isdigit() for p in path.glob("fold_*"))
