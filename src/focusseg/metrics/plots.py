"""Violin plots of per-class metric distributions (matplotlib, Agg canvas; no pyplot global state)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from focusseg.io.atomic import atomic_path


def violin_plot(values: Mapping[str, Sequence[float]], metric: str, path: str | Path) -> Path:
    """Write a PNG (atomically) with one violin per class of the finite ``values[class]``; returns the path.

    Classes without any finite value are shown as an empty slot so the x axis keeps every label.
    """
    path = Path(path)
    names = list(values)
    data = [[float(v) for v in values[k] if v is not None and math.isfinite(float(v))] for k in names]
    fig = Figure(figsize=(max(4.0, 0.6 * len(names) + 2.0), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    pos = [i + 1 for i, d in enumerate(data) if len(d) > 0]
    if pos:
        ax.violinplot([data[p - 1] for p in pos], positions=pos, showmedians=True, showextrema=True)
        for p in pos:
            ax.scatter([p] * len(data[p - 1]), data[p - 1], s=6, color="black", alpha=0.5, zorder=3)
    ax.set_xticks(range(1, len(names) + 1))
    ax.set_xticklabels(names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_xlim(0.4, len(names) + 0.6)
    ax.set_xlabel("label")
    ax.set_ylabel(metric)
    ax.set_title(f"per-class {metric}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
