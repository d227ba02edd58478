"""The report's figures as PNG bytes (matplotlib's Agg canvas, no pyplot global state, so reports can be made
from any thread and never open a window).

Each function takes epoch records (``log.jsonl`` lines) and returns PNG bytes, or None when the records hold
nothing for that figure (the page then says what is missing).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from focusseg.reporting.collect import finite


def _num(v: Any) -> float:
    f = finite(v)
    return math.nan if f is None else f


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (tight layout; axes over epochs get whole-number ticks)."""
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _label_name(labels: Mapping[str, str], key: str) -> str:
    return f"{key} {labels[key]}" if key in labels else f"class {key}"


def _validated(records: Sequence[dict], key: str = "val_dice") -> list[dict]:
    return [r for r in records if isinstance(r.get(key), dict)]


def training_curves(records: Sequence[dict], labels: Mapping[str, str]) -> bytes | None:
    """Train loss, learning rate, per-class validation (pseudo-)Dice and its mean, against iterations; whole-
    volume validation Dice (``val_volume_*``) dashed where the run recorded it; the best epoch marked."""
    if not records:
        return None
    its = [r.get("iteration", i) for i, r in enumerate(records)]
    fig = new_figure(11.5, 6.6)
    a1, a2, a3 = fig.add_subplot(2, 2, 1), fig.add_subplot(2, 2, 2), fig.add_subplot(2, 1, 2)
    a1.plot(its, [_num(r.get("train_loss")) for r in records], "-o", ms=2.5, color="#1f5fa8")
    a1.set(xlabel="iteration", ylabel="train loss", title="training loss (mean per epoch)")
    a1.grid(alpha=0.3)
    lrs = [_num(r.get("lr")) for r in records]
    a2.plot(its, lrs, "-", color="#8a3ab9")
    a2.set(xlabel="iteration", ylabel="learning rate", title="learning rate (end of epoch)")
    if all(v > 0 for v in lrs if math.isfinite(v)) and any(math.isfinite(v) for v in lrs):
        a2.set_yscale("log")
    a2.grid(alpha=0.3)
    val = _validated(records)
    if val:
        vi = [r["iteration"] for r in val]
        kind = "patches" if any(r.get("val_kind") == "patches" for r in val) else "volumes"
        a3.plot(vi, [_num(r.get("val_mean_dice")) for r in val], "k-", lw=2.2, label="mean (pseudo-Dice)")
        keys = sorted({k for r in val for k in r["val_dice"]}, key=lambda s: (len(s), s))
        for k in keys:
            a3.plot(vi, [_num(r["val_dice"].get(k)) for r in val], lw=1.1, label=_label_name(labels, k))
        vol = _validated(records, "val_volume_dice")
        if vol:
            a3.plot([r["iteration"] for r in vol], [_num(r.get("val_volume_mean_dice")) for r in vol], "k--o", ms=4,
                    lw=1.5, label="mean (whole volumes)")
        best = [r for r in val if r.get("best")]
        if best:
            b = best[-1]
            a3.axvline(b["iteration"], color="#c0392b", ls=":", lw=1.2, label=f"best (epoch {b['epoch']})")
        a3.set_ylim(-0.02, 1.02)
        a3.set_title(f"validation Dice per class ({kind})")
        a3.legend(fontsize=7, ncol=min(4, len(keys) + 2), loc="lower right")
    else:
        a3.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=a3.transAxes)
    a3.set(xlabel="iteration", ylabel="Dice")
    a3.grid(alpha=0.3)
    return to_png(fig)


def class_weights(records: Sequence[dict], labels: Mapping[str, str], rule: str) -> bytes | None:
    """The class weighter's per-class loss weights (``class_weights``, background first) over epochs."""
    rows = [r for r in records if isinstance(r.get("class_weights"), list)]
    if not rows:
        return None
    ep = [r["epoch"] for r in rows]
    w = np.array([[_num(x) for x in r["class_weights"]] for r in rows], dtype=float)
    fig = new_figure(11.5, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    for c in range(w.shape[1]):
        ax.plot(ep, w[:, c], "-o", ms=3, lw=1.4, label="background" if c == 0 else _label_name(labels, str(c)))
    ax.set(xlabel="epoch", ylabel="loss weight", title=f"class weights per class ({rule})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=min(6, w.shape[1]))
    return to_png(fig)


def focused_practice(records: Sequence[dict]) -> bytes | None:
    """Focused Practice (FP-PET §3.3): the Otsu threshold on the per-patch losses, the hard / easy / excluded
    patch counts per epoch, and the loss histograms of the first and the last epoch (threshold marked)."""
    rows = [r for r in records if isinstance(r.get("sampler"), dict) and "n_hard" in r["sampler"]]
    if not rows:
        return None
    s = [r["sampler"] for r in rows]
    ep = [r["epoch"] for r in rows]
    fig = new_figure(11.5, 3.8)
    a1, a2, a3 = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    a1.plot(ep, [_num(x.get("threshold")) for x in s], "-o", ms=3, color="#c0392b")
    a1.set(xlabel="epoch", ylabel="loss", title="hard/easy threshold (Otsu)")
    a1.grid(alpha=0.3)
    groups = (("n_hard", "#c0392b"), ("n_easy", "#27ae60"), ("n_excluded", "#7f8c8d"), ("n_unseen", "#2980b9"))
    for key, color in groups:
        if any(key in x for x in s):
            a2.plot(ep, [_num(x.get(key)) for x in s], "-o", ms=3, color=color, label=key[2:])
    a2.set(xlabel="epoch", ylabel="patches", title="patches per group")
    a2.legend(fontsize=7)
    a2.grid(alpha=0.3)
    hists = [(r["epoch"], r["sampler"]) for r in rows if isinstance(r["sampler"].get("loss_hist"), dict)]
    if hists:
        for (e, x), color in zip([hists[0], hists[-1]] if len(hists) > 1 else hists[:1], ("#95a5a6", "#1f5fa8")):
            h = x["loss_hist"]
            counts, edges = np.asarray(h.get("counts", []), float), np.asarray(h.get("edges", []), float)
            if len(edges) == len(counts) + 1 and len(counts):
                a3.stairs(counts, edges, fill=True, alpha=0.5, color=color, label=f"epoch {e}")
                t = finite(x.get("threshold"))
                if t is not None:
                    a3.axvline(t, color=color, ls="--", lw=1)
        a3.legend(fontsize=7)
        a3.set(xlabel="per-patch loss", ylabel="patches", title="loss histogram (threshold dashed)")
    else:
        a3.text(0.5, 0.5, "no loss histogram logged", ha="center", va="center", transform=a3.transAxes)
    return to_png(fig)


def cycle_training(stats: Sequence[dict], schedule: Sequence[tuple[int, float]]) -> bytes | None:
    """Cycle training (paper 004 §2.2): the fraction of each mini-batch the committees kept and the networks'
    disagreement (mean |l_B - l_C| between peers' per-sample losses) per epoch when logged (``cycle`` event
    lines), else the keep schedule of the plan."""
    if not stats and not schedule:
        return None
    fig = new_figure(11.5, 3.4)
    a1, a2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    if schedule:
        a1.plot([e for e, _ in schedule], [k for _, k in schedule], "k--", lw=1, label="planned keep(e)")
    if stats:
        a1.plot([s["epoch"] for s in stats], [_num(s.get("kept_fraction")) for s in stats], "-o", ms=3,
                color="#1f5fa8", label="kept (measured)")
        a2.plot([s["epoch"] for s in stats], [_num(s.get("disagreement")) for s in stats], "-o", ms=3, color="#c0392b")
        a2.set(xlabel="epoch", ylabel="mean |l_B - l_C|", title="disagreement between peer networks")
    else:
        a2.text(0.5, 0.5, "disagreement not logged", ha="center", va="center", transform=a2.transAxes)
    a1.set(xlabel="epoch", ylabel="fraction of batch", title="kept fraction", ylim=(0, 1.05))
    a1.legend(fontsize=7)
    a1.grid(alpha=0.3)
    a2.grid(alpha=0.3)
    return to_png(fig)


def metric_lr(records: Sequence[dict]) -> bytes | None:
    """Metric-driven learning rate (FP-PET §3.4, eq. 2): the rate against the validation Dice that set it."""
    val = [r for r in records if finite(r.get("val_mean_dice")) is not None and finite(r.get("lr")) is not None]
    if not val:
        return None
    fig = new_figure(11.5, 3.4)
    a1, a2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ep = [r["epoch"] for r in val]
    a1.plot(ep, [r["val_mean_dice"] for r in val], "-o", ms=3, color="#27ae60", label="validation mean Dice")
    a1.set(xlabel="epoch", ylabel="Dice", title="validation Dice and learning rate")
    b = a1.twinx()
    b.plot(ep, [r["lr"] for r in val], "-s", ms=3, color="#8a3ab9", label="learning rate")
    b.set_ylabel("learning rate")
    a1.grid(alpha=0.3)
    a2.scatter([r["val_mean_dice"] for r in val], [r["lr"] for r in val], c=ep, cmap="viridis", s=18)
    a2.set(xlabel="validation mean Dice", ylabel="learning rate", title="rate against Dice (colour: epoch)")
    a2.grid(alpha=0.3)
    return to_png(fig)


def timing(records: Sequence[dict]) -> bytes | None:
    """Seconds per training iteration per epoch (``train_time_s`` / iterations of the epoch), validation seconds
    per epoch, and the time waiting for data when logged (``data_wait_s``)."""
    rows, prev = [], 0
    for r in records:
        n = int(r.get("iteration", prev)) - prev
        prev = int(r.get("iteration", prev))
        t = finite(r.get("train_time_s"))
        if n > 0 and t is not None:
            rows.append((r["epoch"], t / n, finite(r.get("val_time_s")), finite(r.get("data_wait_s")), n))
    if not rows:
        return None
    fig = new_figure(11.5, 3.2)
    a1, a2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    a1.plot([x[0] for x in rows], [x[1] for x in rows], "-o", ms=3, color="#1f5fa8", label="train s/iteration")
    if any(x[3] is not None for x in rows):
        a1.plot([x[0] for x in rows], [_num(x[3]) / x[4] for x in rows], "-o", ms=3, color="#e67e22",
                label="data wait s/iteration")
    a1.set(xlabel="epoch", ylabel="seconds", title="seconds per iteration")
    a1.legend(fontsize=7)
    a1.grid(alpha=0.3)
    vt = [(x[0], x[2]) for x in rows if x[2] is not None]
    if vt:
        a2.bar([e for e, _ in vt], [v for _, v in vt], color="#27ae60")
    a2.set(xlabel="epoch", ylabel="seconds", title="validation time per epoch")
    a2.grid(alpha=0.3)
    return to_png(fig)


def compare_curves(runs: Sequence[tuple[str, Sequence[dict]]]) -> bytes | None:
    """Several runs overlaid: train loss, validation mean Dice and learning rate against iterations."""
    if not any(recs for _, recs in runs):
        return None
    fig = new_figure(11.5, 3.8)
    axes = [fig.add_subplot(1, 3, i) for i in (1, 2, 3)]
    for name, recs in runs:
        if not recs:
            continue
        its = [r.get("iteration", i) for i, r in enumerate(recs)]
        (line,) = axes[0].plot(its, [_num(r.get("train_loss")) for r in recs], lw=1.3, label=name)
        val = [r for r in recs if "val_mean_dice" in r]
        axes[1].plot([r["iteration"] for r in val], [_num(r["val_mean_dice"]) for r in val], lw=1.3,
                     color=line.get_color(), label=name)
        axes[2].plot(its, [_num(r.get("lr")) for r in recs], lw=1.3, color=line.get_color(), label=name)
    for ax, title in zip(axes, ("train loss", "validation mean Dice", "learning rate")):
        ax.set(xlabel="iteration", title=title)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=7)
    return to_png(fig)


#: Label colours of the slice overlays (label value -> RGB), cycling for many labels.
PALETTE = ((0.90, 0.16, 0.16), (0.16, 0.70, 0.25), (0.15, 0.45, 0.95), (0.98, 0.75, 0.10), (0.70, 0.25, 0.85),
           (0.10, 0.80, 0.80), (0.95, 0.45, 0.10), (0.55, 0.55, 0.55))


def _rgba(seg: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    out = np.zeros((*seg.shape, 4), dtype=float)
    for v in np.unique(seg):
        if v == 0:
            continue
        out[seg == v] = (*PALETTE[(int(v) - 1) % len(PALETTE)], alpha)
    return out


def slice_overlay(image: np.ndarray | None, reference: np.ndarray, prediction: np.ndarray, axis: int, index: int,
                  spacing: Sequence[float], title: str) -> bytes:
    """One slice (``index`` along ``axis``): the image, the image with the reference and the image with the
    prediction overlaid (labels coloured by value, as in :data:`PALETTE`). Displayed with the in-plane voxel
    aspect ratio, rotated so the slice's first axis runs left to right."""
    def cut(a: np.ndarray) -> np.ndarray:
        return np.rot90(np.take(a, index, axis=axis))

    other = [s for i, s in enumerate(spacing) if i != axis]
    aspect = float(other[1] / other[0]) if len(other) == 2 and other[0] > 0 else 1.0
    ref, pred = cut(reference), cut(prediction)
    if image is not None:
        img = cut(image).astype(float)
        finite_vals = img[np.isfinite(img)]
        lo, hi = (np.percentile(finite_vals, [0.5, 99.5]) if finite_vals.size else (0.0, 1.0))
    else:
        img, lo, hi = np.zeros(ref.shape), 0.0, 1.0
    fig = new_figure(11.5, 3.9)
    for i, (over, name) in enumerate(((None, "image"), (ref, "reference"), (pred, "prediction"))):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=aspect, interpolation="nearest")
        if over is not None:
            ax.imshow(_rgba(over), aspect=aspect, interpolation="nearest")
        ax.set_title(name if image is not None or i else "image (not available)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return to_png(fig)
