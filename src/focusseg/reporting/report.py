"""``focusseg report``: one self-contained, offline HTML page of a run (or a cross-validation) folder.

The page (inline CSS, every figure an inline base64 PNG, no script, no network reference) is assembled here from
the sections of :mod:`focusseg.reporting.sections`: a run's header, training curves, strategy panels, timing,
final validation and slice overlays. A CV folder gets the per-fold table, the pooled metrics and each fold's
curves. Whatever is not there yet is said on the page; only a folder that is no run at all is an error.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from focusseg import __version__
from focusseg.errors import MissingFileError, UsageError, one_line
from focusseg.io.atomic import atomic_write_text
from focusseg.reporting import figures
from focusseg.reporting import html as h
from focusseg.reporting.collect import (
    CrossvalData,
    RunData,
    finite,
    is_crossval_folder,
    load_crossval,
    load_run,
)
from focusseg.reporting.sections import (
    figure_or_note,
    header_items,
    overlay_section,
    spec_text,
    strategy_panels,
    timing_section,
    validation_section,
    validation_table,
    violin_plots,
)
from focusseg.runfolder import describe_rows

REPORT_NAME = "report.html"
log = logging.getLogger("focusseg.reporting")


def run_body(run: RunData, level: str = "run", compact: bool = False) -> str:
    """The sections of one run (``compact``: curves, strategies and the validation table only, for a CV's folds)."""
    parts: list[str] = []
    if run.problems:
        parts.append(h.section("Problems reading the run", "".join(h.warn(p) for p in run.problems)))
    curves = figures.training_curves(run.records, run.labels)
    parts.append(h.section("Training curves", figure_or_note(curves, "training curves", "no epoch logged yet"),
                           f"{level}-curves"))
    strategies = strategy_panels(run)
    if strategies:
        parts.append(h.section("Strategies", strategies, f"{level}-strategies"))
    if compact:
        if run.val_rows:
            parts.append(h.section("Validation", validation_table(run.val_rows, run.labels)))
        return "".join(parts)
    parts.append(h.section("Timing", timing_section(run), f"{level}-timing"))
    parts.append(h.section("Validation", validation_section(run), f"{level}-validation"))
    parts.append(h.section("Slice overlays (best, median, worst validation case)", overlay_section(run),
                           f"{level}-overlays"))
    return "".join(parts)


def stamp() -> str:
    """The footer line of every focusseg HTML page: the version that made it and when (local time, with
    its UTC offset), so a page found later says where it came from."""
    return f"focusseg {__version__} report, made {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}"


def run_report_html(run: RunData) -> str:
    """The whole page of one run."""
    plan = run.plan or {}
    title = f"focusseg run report: {run.name}"
    head = f"<h1>{h.esc(title)}</h1>" + h.note(f"{plan.get('dataset', '')} · {run.run_dir.resolve()}")
    head += h.section("Run", h.kv_table(header_items(run)), "run")
    return h.page(title, head + run_body(run), stamp())


def crossval_report_html(cv: CrossvalData) -> str:
    """The whole page of a cross-validation: per-fold table, pooled metrics, pooled validation, each fold."""
    title = f"focusseg cross-validation report: {cv.cv_dir.name}"
    parts = [f"<h1>{h.esc(title)}</h1>", h.note(str(cv.cv_dir.resolve()))]
    if cv.problems:
        parts.append(h.section("Problems reading the folder", "".join(h.warn(p) for p in cv.problems)))
    res = cv.result
    first = cv.folds[0] if cv.folds else None
    items: list[tuple[str, Any]] = []
    if first is not None:
        items += [x for x in header_items(first) if x[0] in ("dataset", "data folder", "recipe", "device", "network",
                                                                "patch size / batch", "classes", "schedule")]
    items.append(("folds found", ", ".join(f.name for f in cv.folds) or "none"))
    items.append(("folds finished", ", ".join(f.name for f in cv.folds if f.finished) or "none"))
    if res:
        items.append(("plan sha256", str(res.get("plan_sha256", "–"))[:16] + "…"))
        items.append(("pooled mean Dice", finite((res.get("pooled") or {}).get("mean_dice"))))
    parts.append(h.section("Cross-validation", h.kv_table(items), "cv"))
    if res and isinstance(res.get("folds"), dict) and isinstance(res.get("pooled"), dict):
        try:
            rows = describe_rows(res)
            body = h.table(rows[0], rows[1:], row_classes=[""] * (len(rows) - 2) + ["sum"])
        except (KeyError, TypeError, ValueError) as exc:
            body = h.warn(f"crossval.json: unexpected content ({exc})")
        pp = res.get("postprocessing")
        if pp:
            steps = pp.get("steps") or []
            body += h.note("post-processing chosen on the pooled predictions: " +
                           ("; ".join(spec_text(s) for s in steps) if steps else "none"))
        parts.append(h.section("Per fold and pooled Dice", body, "cv-folds"))
    else:
        parts.append(h.section("Per fold and pooled Dice", h.warn(
            "no crossval.json yet: the folds have not been pooled (focusseg crossval pools them when its folds "
            "finish)") + _fold_progress_table(cv.folds), "cv-folds"))
    if cv.pooled_rows:
        labels = first.labels if first else {}
        body = validation_table(cv.pooled_rows, labels) + violin_plots(cv.cv_dir / "validation", cv.pooled_rows)
        parts.append(h.section("Pooled validation (every held-out case, predicted by its fold)", body, "cv-pooled"))
    for f in cv.folds:
        parts.append(f"<h2>{h.esc(f.name)}</h2>" + run_body(f, level=f.name, compact=True))
    return h.page(title, "".join(parts), stamp())


def _fold_progress_table(folds: Sequence[RunData]) -> str:
    rows = []
    for f in folds:
        last = f.records[-1] if f.records else {}
        best = f.best_record or {}
        fv = (f.summary or {}).get("final_validation") or {}
        rows.append((f.name, "finished" if f.finished else "in progress", last.get("epoch"),
                     finite(best.get("val_mean_dice")), finite(fv.get("mean_dice"))))
    return h.table(["fold", "status", "last epoch", "best pseudo-Dice", "final mean Dice"], rows) if rows else ""


# ----------------------------------------------------------------------------------------------------- entry

def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of a run or cross-validation folder to ``out`` (default ``folder/report.html``),
    atomically; returns its path."""
    folder = Path(folder)
    if not folder.exists():
        raise MissingFileError("no such run or cross-validation folder", folder)
    out = folder / REPORT_NAME if out is None else Path(out)
    if out.exists() and out.is_dir():
        raise UsageError("--out is a folder; give the report's file name (e.g. report.html)", out)
    if is_crossval_folder(folder):
        text = crossval_report_html(load_crossval(folder))
    else:
        text = run_report_html(load_run(folder))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    return out


def report_after_training(run_dir: str | Path) -> Path | None:
    """The end-of-training report (``run_dir/report.html``). Never raises: a failure is logged as a warning
    (and printed on stderr), training's result stands."""
    try:
        return write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 -- the report must never fail a finished training
        msg = f"the run report could not be written: {type(exc).__name__}: {one_line(exc)[:300]}"
        log.warning(msg)
        try:
            from rich.console import Console

            Console(stderr=True).print(f"warning: {msg} (try `focusseg report {shlex.quote(str(run_dir))}`)",
                                       markup=False, style="yellow")
        except Exception:  # noqa: BLE001
            pass
        return None


__all__ = ["REPORT_NAME", "crossval_report_html", "report_after_training", "run_report_html", "write_report"]
