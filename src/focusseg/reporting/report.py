"""``focusseg report``: one self-contained, offline HTML page of a run (or a cross-validation) folder.

The page (inline CSS, every figure an inline base64 PNG, no script, no network reference) has: a header (dataset,
recipe, plan summary, device, times, best epoch); the training curves (train loss, learning rate, per-class
validation Dice and its mean); a panel per active strategy whose data is in the log (class weights of TCF / PCF /
CBS; Focused Practice's threshold, hard / easy / excluded counts and loss histograms; cycle training's kept
fraction and disagreement; the metric-driven learning rate); timing; the final validation (per case and per
class metrics, violin plots, the chosen post-processing); and slice overlays (image, reference, prediction) of
the best, median and worst validation case. A CV folder gets the per-fold table, the pooled metrics and each
fold's curves. Whatever is not there yet (a run in progress, no validation, an input image moved away) is said
on the page; only a folder that is no run at all is an error.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from focusseg.errors import FocussegError, UsageError
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

REPORT_NAME = "report.html"
log = logging.getLogger("focusseg.reporting")


# --------------------------------------------------------------------------------------------------- helpers

def _spec_name(spec: Any) -> str | None:
    """A plan component's name (``{"name": "cbs", ...}`` or ``"cbs"``)."""
    if isinstance(spec, dict):
        return str(spec.get("name")) if spec.get("name") is not None else None
    return str(spec) if spec else None


def _spec_text(spec: Any) -> str:
    if isinstance(spec, dict):
        name = spec.get("name")
        rest = ", ".join(f"{k}={v}" for k, v in spec.items() if k not in ("name", "_replace"))
        return f"{name} ({rest})" if name and rest else str(name or rest or "–")
    return "–" if spec is None else str(spec)


def _duration(seconds: Any) -> str:
    s = finite(seconds)
    if s is None:
        return "–"
    m, sec = divmod(int(round(s)), 60)
    hr, m = divmod(m, 60)
    return f"{hr} h {m:02d} min" if hr else (f"{m} min {sec:02d} s" if m else f"{s:.1f} s")


def _img(png: bytes | None, alt: str, missing: str) -> str:
    return h.png_img(png, alt) if png else h.note(missing)


def _case_means(rows: Sequence[dict], metric: str = "dice") -> dict[str, float]:
    """Mean ``metric`` over labels per case (labels where it is undefined left out)."""
    per: dict[str, list[float]] = {}
    for r in rows:
        v = r.get(metric)
        if v is not None and math.isfinite(v):
            per.setdefault(r["case"], []).append(v)
    return {c: float(np.mean(v)) for c, v in per.items() if v}


# ------------------------------------------------------------------------------------------------- sections

def header_items(run: RunData) -> list[tuple[str, Any]]:
    """The header's (field, value) pairs."""
    plan = run.plan or {}
    tr = plan.get("training") or {}
    info = run.info or {}
    rec = run.records
    best = run.best_record
    items: list[tuple[str, Any]] = [("dataset", plan.get("dataset", "–")), ("data folder", info.get("data_dir", "–")),
                                    ("fold", info.get("fold", "–")),
                                    ("recipe", f"{plan.get('recipe', '–')} ({plan.get('recipe_form', 'cpu')} form)")]
    if run.finished:
        status = "finished"
    elif rec:
        status = f"in progress or stopped: {len(rec)} epoch(s) logged, no summary.json yet"
    else:
        status = "no epoch logged yet"
    items.append(("status", status))
    device = plan.get("device_profile", "–")
    switches = [e for e in run.events if e.get("event") == "device_switch"]
    if switches:
        device = f"{device}; resumed on {(switches[-1].get('device') or {}).get('to')}"
    items += [("device", f"{device}, autocast {tr.get('amp', 'none')}"),
              ("network", _spec_text(plan.get("network"))),
              ("patch size / batch", f"{plan.get('patch_size', '–')} / {plan.get('batch_size', '–')}"),
              ("target spacing", plan.get("target_spacing", "–")),
              ("classes", ", ".join(f"{k} {v}" for k, v in run.labels.items()) or "–"),
              ("schedule", f"{tr.get('max_epochs', '–')} epochs × {tr.get('iterations_per_epoch', '–')} iterations"
                           + (f", time budget {info['time_budget_min']} min" if info.get("time_budget_min") else "")),
              ("loss", _spec_text(tr.get("loss"))), ("optimizer", _spec_text(tr.get("optimizer"))),
              ("learning rate", _spec_text(tr.get("lr_schedule"))),
              ("sampler", _spec_text(tr.get("sampler") or {"name": "foreground"}))]
    if tr.get("class_weighter"):
        items.append(("class weighter", _spec_text(tr["class_weighter"])))
    if tr.get("task"):
        items.append(("task", _spec_text(tr["task"])))
    if rec:
        last = rec[-1]
        items.append(("trained", f"{last.get('epoch', 0) + 1} epoch(s), {last.get('iteration', '–')} iterations, "
                                 f"{_duration(last.get('elapsed_s'))}"))
    if best is not None:
        items.append(("best epoch", f"{best['epoch']} (iteration {best.get('iteration')}, validation mean Dice "
                                    f"{h.fmt(finite(best.get('val_mean_dice')))})"))
    fv = (run.summary or {}).get("final_validation") or {}
    if fv:
        items.append(("final validation mean Dice", h.fmt(finite(fv.get("mean_dice")))))
    if run.summary:
        items.append(("time", f"training {_duration(run.summary.get('train_seconds'))}, in all "
                              f"{_duration(run.summary.get('total_seconds'))}"))
    n_events = {}
    for e in run.events:
        n_events[e.get("event")] = n_events.get(e.get("event"), 0) + 1
    if n_events:
        items.append(("log events", ", ".join(f"{k} × {v}" for k, v in sorted(n_events.items(), key=str))))
    nonfinite = sum(int(r.get("nonfinite_steps") or 0) for r in rec)
    if nonfinite:
        items.append(("skipped non-finite steps", nonfinite))
    return items


def strategy_panels(run: RunData) -> str:
    """One panel per active strategy (from the plan), with its data from the log or a note saying it has none."""
    tr = (run.plan or {}).get("training") or {}
    out: list[str] = []
    weighter = _spec_name(tr.get("class_weighter"))
    if weighter or any("class_weights" in r for r in run.records):
        rule = (weighter or "class weighter").upper()
        png = figures.class_weights(run.records, run.labels, rule)
        out.append(f"<h3>Class weights ({h.esc(rule)})</h3>" + _img(
            png, f"class weights {rule}", "no class weights logged yet (they are set after each validation)"))
    if _spec_name(tr.get("sampler")) == "focused_practice" or any(
            isinstance(r.get("sampler"), dict) and "n_hard" in r["sampler"] for r in run.records):
        png = figures.focused_practice(run.records)
        body = _img(png, "focused practice", "no Focused Practice epoch logged yet")
        last = next((r["sampler"] for r in reversed(run.records) if "n_hard" in (r.get("sampler") or {})), None)
        if last:
            body += h.kv_table([("last epoch", last.get("epoch")), ("threshold", finite(last.get("threshold"))),
                                ("hard / easy / excluded", f"{last.get('n_hard')} / {last.get('n_easy')} / "
                                                           f"{last.get('n_excluded')}"),
                                ("seen / unseen patches", f"{last.get('n_seen')} / {last.get('n_unseen')}")])
        out.append("<h3>Focused Practice</h3>" + body)
    task = tr.get("task")
    if _spec_name(task) == "cycle" or any(e.get("event") == "cycle" for e in run.events):
        stats = [e for e in run.events if e.get("event") == "cycle" and isinstance(e.get("epoch"), int)]
        schedule = _cycle_schedule(task, run)
        png = figures.cycle_training(stats, schedule)
        body = _img(png, "cycle training", "no cycle training data")
        if not stats:
            body += h.note("measured kept fraction and disagreement are not in this run's log (they are logged as "
                           "`cycle` events by focusseg train); the planned keep schedule is shown")
        out.append("<h3>Cycle training</h3>" + body)
    if _spec_name(tr.get("lr_schedule")) == "metric_driven":
        png = figures.metric_lr(run.records)
        lr = tr.get("lr_schedule") or {}
        rule = (f"lr = lr0 · {lr.get('base', 0.9)}^(Dice{'%' if lr.get('dice_in_percent', True) else ''} / "
                f"{lr.get('divisor', 10)}), re-set after each validation (FP-PET eq. 2)")
        out.append("<h3>Metric-driven learning rate</h3>" + h.note(rule) +
                   _img(png, "metric-driven learning rate", "no validation yet: the rate is still lr0"))
    return "".join(out)


def _cycle_schedule(task: Any, run: RunData) -> list[tuple[int, float]]:
    """The plan's keep schedule ``keep(e)`` (:func:`focusseg.strategies.cycle.keep_schedule`) over the epochs."""
    if not isinstance(task, dict):
        return []
    from focusseg.strategies.cycle import keep_schedule

    n = max([r["epoch"] + 1 for r in run.records] or [int(((run.plan or {}).get("training") or {}).get(
        "max_epochs", 0) or 0)])
    try:
        return [(e, keep_schedule(e, float(task.get("keep", 0.75)), int(task.get("ramp_epochs", 0))))
                for e in range(n)]
    except (TypeError, ValueError):
        return []


def timing_section(run: RunData) -> str:
    rec = run.records
    png = figures.timing(rec)
    body = _img(png, "timing", "no epoch logged yet")
    if rec:
        iters = rec[-1].get("iteration") or 0
        train_s = sum(finite(r.get("train_time_s")) or 0.0 for r in rec)
        val_s = sum(finite(r.get("val_time_s")) or 0.0 for r in rec) + sum(
            finite(r.get("val_volume_time_s")) or 0.0 for r in rec)
        items: list[tuple[str, Any]] = [("mean seconds / iteration", train_s / iters if iters else None),
                                        ("training (iterations)", _duration(train_s)),
                                        ("validation during training", _duration(val_s))]
        if any("data_wait_s" in r for r in rec):
            items.append(("data wait", _duration(sum(finite(r.get("data_wait_s")) or 0.0 for r in rec))))
        else:
            items.append(("data wait", "not logged by this run"))
        fitted = next((r for r in rec if "planned_iterations" in r), None)
        if fitted:
            items.append(("time budget: planned iterations", fitted["planned_iterations"]))
            for k, v in (fitted.get("timing") or {}).items():
                items.append((f"measured {k}", v))
        body += h.kv_table(items)
    return body


def validation_table(rows: Sequence[dict], labels: dict[str, str], metrics: Sequence[str] = ("dice", "nsd", "hd95")
                     ) -> str:
    """Per case (rows) and per label (column groups) metrics, then the mean and median over cases."""
    keys = sorted({r["label"] for r in rows}, key=lambda s: (len(s), s))
    cases = sorted({r["case"] for r in rows})
    cell = {(r["case"], r["label"]): r for r in rows}
    header = ["case", *[f"{k} {labels.get(k, '')} {m}".replace("  ", " ") for k in keys for m in metrics],
              "mean Dice"]
    body, classes = [], []
    means = _case_means(rows)
    for c in cases:
        body.append([c, *[(cell.get((c, k)) or {}).get(m) for k in keys for m in metrics], means.get(c)])
        classes.append("")
    for name, fn in (("mean", np.mean), ("median", np.median)):
        line: list[Any] = [name]
        for k in keys:
            for m in metrics:
                vals = [v for c in cases if (v := (cell.get((c, k)) or {}).get(m)) is not None]
                line.append(float(fn(vals)) if vals else None)
        mv = list(means.values())
        line.append(float(fn(mv)) if mv else None)
        body.append(line)
        classes.append("sum")
    return h.table(header, body, row_classes=classes)


def _violins(folder: Path, rows: Sequence[dict]) -> str:
    """The evaluator's violin plots of ``folder`` (``dice_violin.png``, ``nsd_violin.png``), drawn again from the
    rows when a file is missing or not a PNG."""
    from focusseg.metrics.plots import violin_plot

    out = []
    for metric in ("dice", "nsd"):
        path = folder / f"{metric}_violin.png"
        png = path.read_bytes() if path.is_file() else b""
        if not png.startswith(h.PNG_SIGNATURE):
            values: dict[str, list[float]] = {}
            for r in rows:
                values.setdefault(r["label"], []).append(r.get(metric))
            if not any(v is not None for vs in values.values() for v in vs):
                continue
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                png = violin_plot(values, metric, Path(tmp) / "v.png").read_bytes()
        out.append(f"<div>{h.png_img(png, f'{metric} violin plot')}</div>")
    return f'<div class="grid">{"".join(out)}</div>' if out else ""


def validation_section(run: RunData) -> str:
    if not run.val_rows:
        best = run.best_record
        msg = "no final validation yet (it runs when training ends: predictions of the held-out cases in their " \
              "original geometry)"
        body = h.warn(msg)
        if best is not None and best.get("val_dice"):
            body += h.note(f"validation pseudo-Dice of the best epoch ({best['epoch']}) during training:")
            body += h.table(["class", "Dice"], [(f"{k} {run.labels.get(k, '')}", finite(v))
                                                for k, v in best["val_dice"].items()])
        return body
    body = h.note(f"{len({r['case'] for r in run.val_rows})} held-out case(s), predicted with the best checkpoint "
                  "and scored in their original geometry (before post-processing)")
    body += validation_table(run.val_rows, run.labels)
    body += _violins(run.run_dir / "validation", run.val_rows)
    pp = run.postprocessing or (run.summary or {}).get("postprocessing")
    if pp:
        steps = pp.get("steps") or []
        text = "; ".join(_spec_text(s) for s in steps) if steps else "none (nothing improved the validation Dice)"
        body += "<h3>Post-processing chosen</h3>" + h.note(text)
        before, after = pp.get("dice_before") or {}, pp.get("dice_after") or {}
        if before:
            body += h.table(["class", "Dice before", "Dice after"],
                            [(k, finite(before.get(k)), finite(after.get(k))) for k in before])
    return body


def _foreground_slice(seg: np.ndarray, axis: int) -> int | None:
    """The median index along ``axis`` of the foreground voxels of ``seg`` (None when it has none)."""
    other = tuple(i for i in range(seg.ndim) if i != axis)
    counts = np.count_nonzero(seg, axis=other)
    if counts.sum() == 0:
        return None
    cdf = np.cumsum(counts)
    return int(np.searchsorted(cdf, cdf[-1] / 2.0))


def overlay_section(run: RunData, max_voxels: int = 400_000_000) -> str:
    """Slice overlays of the best, median and worst validation case (mean Dice over labels): a slice through
    the middle of the reference's foreground (else the prediction's, else the volume) across the axis of the
    largest spacing (the through-plane axis of anisotropic images)."""
    from focusseg.metrics.files import label_files, read_label_map

    means = _case_means(run.val_rows)
    if not means:
        return h.note("no validated case yet")
    order = sorted(means, key=lambda c: (means[c], c))
    picks: list[tuple[str, str]] = []
    for what, case in (("best", order[-1]), ("median", order[len(order) // 2]), ("worst", order[0])):
        if case not in [c for _, c in picks]:
            picks.append((what, case))
    try:
        preds = label_files(run.run_dir / "validation" / "predictions")
        refs = label_files(run.run_dir / "validation" / "reference")
    except (FocussegError, OSError) as exc:
        return h.warn(f"validation predictions unreadable: {exc}")
    images = _raw_images(run)
    out = []
    for what, case in picks:
        try:
            if case not in preds or case not in refs:
                out.append(h.note(f"{what} case {case}: prediction or reference file is missing"))
                continue
            ref, _, spacing = read_label_map(refs[case])
            pred, _, _ = read_label_map(preds[case])
            if ref.shape != pred.shape or ref.size > max_voxels:
                out.append(h.note(f"{what} case {case}: prediction and reference differ in shape {pred.shape} vs "
                                  f"{ref.shape}"))
                continue
            image, why = _read_image(images.get(case), ref.shape)
            axis = int(np.argmax(spacing)) if len(set(np.round(spacing, 3))) > 1 else ref.ndim - 1
            index = _foreground_slice(ref, axis)
            if index is None:
                index = _foreground_slice(pred, axis)
            if index is None:
                index = ref.shape[axis] // 2
            title = f"{what}: {case} (mean Dice {means[case]:.3f}), slice {index} of axis {axis}"
            out.append(h.png_img(figures.slice_overlay(image, ref, pred, axis, index, spacing, title),
                                 f"{what} case {case}"))
            if why:
                out.append(h.note(why))
        except (FocussegError, OSError, ValueError) as exc:
            out.append(h.note(f"{what} case {case}: cannot draw ({' '.join(str(exc).split())[:200]})"))
    return "".join(out)


def _raw_images(run: RunData) -> dict[str, Path]:
    """``{case id: first channel's raw image}`` of the run's dataset (``run.json`` ``data_dir``), if readable."""
    data_dir = (run.info or {}).get("data_dir")
    if not data_dir or not Path(data_dir).is_dir():
        return {}
    try:
        from focusseg.io import discover_cases, load_dataset_spec

        spec = load_dataset_spec(data_dir)
        return {c.case_id: Path(c.images[0]) for c in discover_cases(data_dir, spec) if c.images}
    except (FocussegError, OSError, ValueError):
        return {}


def _read_image(path: Path | None, shape: tuple[int, ...]) -> tuple[np.ndarray | None, str]:
    if path is None:
        return None, "the raw image was not found (the data folder in run.json moved or is absent)"
    from focusseg.io.image import read_image

    try:
        img, _ = read_image(path)
    except (FocussegError, OSError, ValueError) as exc:
        return None, f"raw image unreadable: {' '.join(str(exc).split())[:200]}"
    if img.ndim == 4:
        img = img[..., 0]
    if tuple(img.shape) != tuple(shape):
        return None, f"raw image {path.name} has shape {img.shape}, the reference {shape}: not drawn"
    return img, ""


def run_body(run: RunData, level: str = "run", compact: bool = False) -> str:
    """The sections of one run (``compact``: curves, strategies and the validation table only, for a CV's folds)."""
    parts: list[str] = []
    if run.problems:
        parts.append(h.section("Problems reading the run", "".join(h.warn(p) for p in run.problems)))
    curves = figures.training_curves(run.records, run.labels)
    parts.append(h.section("Training curves", _img(curves, "training curves", "no epoch logged yet"),
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


def _stamp() -> str:
    from focusseg import __version__

    return f"focusseg {__version__} report, made {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}"


def run_report_html(run: RunData) -> str:
    """The whole page of one run."""
    plan = run.plan or {}
    title = f"focusseg run report: {run.name}"
    head = f"<h1>{h.esc(title)}</h1>" + h.note(f"{plan.get('dataset', '')} · {run.run_dir.resolve()}")
    head += h.section("Run", h.kv_table(header_items(run)), "run")
    return h.page(title, head + run_body(run), _stamp())


def crossval_report_html(cv: CrossvalData) -> str:
    """The whole page of a cross-validation: per-fold table, pooled metrics, pooled validation, each fold."""
    from focusseg.runfolder import describe_rows

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
                           ("; ".join(_spec_text(s) for s in steps) if steps else "none"))
        parts.append(h.section("Per fold and pooled Dice", body, "cv-folds"))
    else:
        parts.append(h.section("Per fold and pooled Dice", h.warn(
            "no crossval.json yet: the folds have not been pooled (focusseg crossval pools them when its folds "
            "finish)") + _fold_progress_table(cv.folds), "cv-folds"))
    if cv.pooled_rows:
        labels = first.labels if first else {}
        body = validation_table(cv.pooled_rows, labels) + _violins(cv.cv_dir / "validation", cv.pooled_rows)
        parts.append(h.section("Pooled validation (every held-out case, predicted by its fold)", body, "cv-pooled"))
    for f in cv.folds:
        parts.append(f"<h2>{h.esc(f.name)}</h2>" + run_body(f, level=f.name, compact=True))
    return h.page(title, "".join(parts), _stamp())


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
    from focusseg.io.atomic import atomic_write_text

    folder = Path(folder)
    if not folder.exists():
        from focusseg.errors import MissingFileError

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
        msg = f"the run report could not be written: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        log.warning(msg)
        try:
            from rich.console import Console

            Console(stderr=True).print(f"[yellow]warning: {msg}[/yellow] (try `focusseg report {run_dir}`)")
        except Exception:  # noqa: BLE001
            pass
        return None


__all__ = ["REPORT_NAME", "crossval_report_html", "report_after_training", "run_report_html", "write_report"]
