"""The sections of a run report (:mod:`focusseg.reporting.report` assembles them into pages), each an HTML
fragment built from what the run folder holds (:class:`~focusseg.reporting.collect.RunData`).

The header (dataset, recipe, plan summary, device, times, best epoch); a panel per active strategy whose data is
in the log (class weights of TCF / PCF / CBS; Focused Practice's threshold, hard / easy / excluded counts and loss
histograms; cycle training's kept fraction and disagreement; the metric-driven learning rate); timing; the final
validation (per case and per class metrics, violin plots, the chosen post-processing); and slice overlays (image,
reference, prediction) of the best, median and worst validation case. Whatever is not there yet (a run in
progress, no validation, an input image moved away) is said in the section rather than raised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from focusseg.errors import FocussegError, PlanError, one_line
from focusseg.io import discover_cases, load_dataset_spec
from focusseg.io.image import read_image
from focusseg.metrics.files import label_files, read_label_map
from focusseg.reporting import figures
from focusseg.reporting import html as h
from focusseg.reporting.collect import RunData, finite
from focusseg.settings import Spec, TrainingSettings, training_settings
from focusseg.strategies.cycle import keep_schedule

# --------------------------------------------------------------------------------------------------- helpers

def _or_dash(value: Any) -> Any:
    return "–" if value is None else value


def spec_text(spec: Any) -> str:
    """A plan's component spec (``{"name": ..., options}``) as one line, ``name (k=v, ...)``; ``–`` for none."""
    if isinstance(spec, dict):
        name = spec.get("name")
        rest = ", ".join(f"{k}={v}" for k, v in spec.items() if k not in ("name", "_replace"))
        return f"{name} ({rest})" if name and rest else str(name or rest or "–")
    return "–" if spec is None else str(spec)


def _training(run: RunData) -> tuple[TrainingSettings, str | None]:
    """The run's ``training`` settings and None, or the defaults and the problem when the plan's section is not
    valid (the page says so rather than failing: a report shows whatever a run folder holds)."""
    try:
        return training_settings(run.plan or {}), None
    except PlanError as exc:
        return TrainingSettings(), exc.one_line()


def _name(spec: Spec | None) -> str | None:
    return None if spec is None else spec.name


def _value(spec: Spec | None) -> Any:
    return None if spec is None else spec.to_value()


def _duration(seconds: Any) -> str:
    s = finite(seconds)
    if s is None:
        return "–"
    m, sec = divmod(int(round(s)), 60)
    hr, m = divmod(m, 60)
    return f"{hr} h {m:02d} min" if hr else (f"{m} min {sec:02d} s" if m else f"{s:.1f} s")


def figure_or_note(png: bytes | None, alt: str, missing: str) -> str:
    """An inline PNG figure, or the note ``missing`` when there is no figure (no data logged yet)."""
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
    tr, problem = _training(run)
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
    if problem:
        items.append(("plan", f"training settings not valid: {problem}"))
    device = plan.get("device_profile", "–")
    switches = [e for e in run.events if e.get("event") == "device_switch"]
    if switches:
        device = f"{device}; resumed on {(switches[-1].get('device') or {}).get('to')}"
    items += [("device", f"{device}, autocast {tr.amp or 'none'}"),
              ("network", spec_text(plan.get("network"))),
              ("patch size / batch", f"{plan.get('patch_size', '–')} / {plan.get('batch_size', '–')}"),
              ("target spacing", plan.get("target_spacing", "–")),
              ("classes", ", ".join(f"{k} {v}" for k, v in run.labels.items()) or "–"),
              ("schedule", f"{_or_dash(tr.max_epochs)} epochs × {_or_dash(tr.iterations_per_epoch)} iterations"
                           + (f", time budget {info['time_budget_min']} min" if info.get("time_budget_min") else "")),
              ("loss", spec_text(_value(tr.loss))), ("optimizer", spec_text(_value(tr.optimizer))),
              ("learning rate", spec_text(_value(tr.lr_schedule))),
              ("sampler", spec_text(tr.sampler.to_value()))]
    if tr.class_weighter is not None:
        items.append(("class weighter", spec_text(tr.class_weighter.to_value())))
    if tr.task is not None:
        items.append(("task", spec_text(tr.task.to_value())))
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
    tr, _ = _training(run)
    out: list[str] = []
    weighter = _name(tr.class_weighter)
    if weighter or any("class_weights" in r for r in run.records):
        rule = (weighter or "class weighter").upper()
        png = figures.class_weights(run.records, run.labels, rule)
        out.append(f"<h3>Class weights ({h.esc(rule)})</h3>" + figure_or_note(
            png, f"class weights {rule}", "no class weights logged yet (they are set after each validation)"))
    if tr.sampler.name == "focused_practice" or any(
            isinstance(r.get("sampler"), dict) and "n_hard" in r["sampler"] for r in run.records):
        png = figures.focused_practice(run.records)
        body = figure_or_note(png, "focused practice", "no Focused Practice epoch logged yet")
        last = next((r["sampler"] for r in reversed(run.records) if "n_hard" in (r.get("sampler") or {})), None)
        if last:
            body += h.kv_table([("last epoch", last.get("epoch")), ("threshold", finite(last.get("threshold"))),
                                ("hard / easy / excluded", f"{last.get('n_hard')} / {last.get('n_easy')} / "
                                                           f"{last.get('n_excluded')}"),
                                ("seen / unseen patches", f"{last.get('n_seen')} / {last.get('n_unseen')}")])
        out.append("<h3>Focused Practice</h3>" + body)
    if _name(tr.task) == "cycle" or any(e.get("event") == "cycle" for e in run.events):
        stats = [e for e in run.events if e.get("event") == "cycle" and isinstance(e.get("epoch"), int)]
        schedule = _cycle_schedule(tr, run)
        png = figures.cycle_training(stats, schedule)
        body = figure_or_note(png, "cycle training", "no cycle training data")
        if not stats:
            body += h.note("measured kept fraction and disagreement are not in this run's log (they are logged as "
                           "`cycle` events by focusseg train); the planned keep schedule is shown")
        out.append("<h3>Cycle training</h3>" + body)
    if _name(tr.lr_schedule) == "metric_driven":
        png = figures.metric_lr(run.records)
        lr = tr.lr_schedule
        rule = (f"lr = lr0 · {lr.get('base', 0.9)}^(Dice{'%' if lr.get('dice_in_percent', True) else ''} / "
                f"{lr.get('divisor', 10)}), re-set after each validation (FP-PET eq. 2)")
        out.append("<h3>Metric-driven learning rate</h3>" + h.note(rule) +
                   figure_or_note(png, "metric-driven learning rate", "no validation yet: the rate is still lr0"))
    return "".join(out)


def _cycle_schedule(tr: TrainingSettings, run: RunData) -> list[tuple[int, float]]:
    """The plan's keep schedule ``keep(e)`` (:func:`focusseg.strategies.cycle.keep_schedule`) over the epochs."""
    task = tr.task
    if task is None:
        return []
    n = max([r["epoch"] + 1 for r in run.records] or [tr.max_epochs or 0])
    try:
        return [(e, keep_schedule(e, float(task.get("keep", 0.75)), int(task.get("ramp_epochs", 0))))
                for e in range(n)]
    except (TypeError, ValueError):
        return []


def timing_section(run: RunData) -> str:
    """Time per epoch (figure) and the totals: seconds per iteration, training, validation, data wait."""
    rec = run.records
    png = figures.timing(rec)
    body = figure_or_note(png, "timing", "no epoch logged yet")
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


def violin_plots(folder: Path, rows: Sequence[dict]) -> str:
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
    """The final validation: per case metrics, violin plots and the chosen post-processing (or what is missing)."""
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
    body += violin_plots(run.run_dir / "validation", run.val_rows)
    pp = run.postprocessing or (run.summary or {}).get("postprocessing")
    if pp:
        steps = pp.get("steps") or []
        text = "; ".join(spec_text(s) for s in steps) if steps else "none (nothing improved the validation Dice)"
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
            out.append(h.note(f"{what} case {case}: cannot draw ({one_line(exc)[:200]})"))
    return "".join(out)


def _raw_images(run: RunData) -> dict[str, Path]:
    """``{case id: first channel's raw image}`` of the run's dataset (``run.json`` ``data_dir``), if readable."""
    data_dir = (run.info or {}).get("data_dir")
    if not data_dir or not Path(data_dir).is_dir():
        return {}
    try:
        spec = load_dataset_spec(data_dir)
        return {c.case_id: Path(c.images[0]) for c in discover_cases(data_dir, spec) if c.images}
    except (FocussegError, OSError, ValueError):
        return {}


def _read_image(path: Path | None, shape: tuple[int, ...]) -> tuple[np.ndarray | None, str]:
    if path is None:
        return None, "the raw image was not found (the data folder in run.json moved or is absent)"
    try:
        img, _ = read_image(path)
    except (FocussegError, OSError, ValueError) as exc:
        return None, f"raw image unreadable: {one_line(exc)[:200]}"
    if img.ndim == 4:
        img = img[..., 0]
    if tuple(img.shape) != tuple(shape):
        return None, f"raw image {path.name} has shape {img.shape}, the reference {shape}: not drawn"
    return img, ""
