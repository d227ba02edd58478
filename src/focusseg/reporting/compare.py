"""``focusseg compare RUN_A RUN_B ...``: one offline HTML page with the runs' curves overlaid and a per-class
Dice table, each run's difference against the first (the baseline).

A run's Dice is its final validation (raw cases in their original geometry) where it has one, else the best
epoch's validation pseudo-Dice (the table says which); a cross-validation folder counts with its pooled Dice and
its folds' curves. Runs validated on different cases are not strictly comparable: the table shows each run's
number of validation cases so that a reader sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from focusseg.errors import UsageError
from focusseg.io.atomic import atomic_write_text
from focusseg.reporting import figures
from focusseg.reporting import html as h
from focusseg.reporting.collect import finite, is_crossval_folder, load_crossval, load_run
from focusseg.reporting.report import stamp


class _Entry:
    """One compared folder: a name, curves, per-label Dice and where the Dice comes from."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = folder, name
        self.curves: list[tuple[str, list[dict]]] = []
        self.dice: dict[str, float | None] = {}
        self.source = ""
        self.cases: int | None = None
        self.labels: dict[str, str] = {}
        self.recipe: Any = None
        if is_crossval_folder(folder):
            cv = load_crossval(folder)
            self.curves = [(f"{name}/{f.name}", f.records) for f in cv.folds]
            pooled = (cv.result or {}).get("pooled") or {}
            self.dice = {str(k): finite(v) for k, v in (pooled.get("dice_per_label") or {}).items()}
            self.source = "pooled cross-validation" if self.dice else "not pooled yet"
            self.cases = pooled.get("cases")
            self.labels = cv.folds[0].labels if cv.folds else {}
            self.recipe = (cv.result or {}).get("recipe")
        else:
            run = load_run(folder)
            self.curves = [(name, run.records)]
            self.dice, self.source = run.final_dice()
            self.cases = len({r["case"] for r in run.val_rows}) or None
            self.labels = run.labels
            self.recipe = (run.plan or {}).get("recipe")

    @property
    def mean(self) -> float | None:
        vals = [v for v in self.dice.values() if v is not None]
        return sum(vals) / len(vals) if vals else None


def _names(folders: Sequence[Path]) -> list[str]:
    """Short unique names: the folder names, with the parent's name added where two are equal."""
    names = [f.name or str(f) for f in folders]
    if len(set(names)) < len(names):
        names = [f"{f.parent.name}/{f.name}" for f in folders]
    if len(set(names)) < len(names):
        names = [str(f) for f in folders]
    return names


def _diff(v: float | None, base: float | None) -> h.Markup | None:
    if v is None or base is None:
        return None
    d = v - base
    cls = "pos" if d > 0 else "neg" if d < 0 else ""
    return h.Markup(f'<span class="{cls}">{d:+.4f}</span>')


def compare_html(folders: Sequence[str | Path]) -> str:
    """The comparison page of ``folders`` (the first is the baseline)."""
    paths = [Path(f) for f in folders]
    if len(paths) < 2:
        raise UsageError("compare needs at least two run or cross-validation folders")
    entries = [_Entry(p, n) for p, n in zip(paths, _names(paths))]
    labels: dict[str, str] = {}
    for e in entries:
        for k, v in e.labels.items():
            labels.setdefault(k, v)
    keys = sorted({k for e in entries for k in e.dice} | set(labels), key=lambda s: (len(s), s))
    base = entries[0]
    header = ["run", "recipe", "Dice from", "cases", *[f"{k} {labels.get(k, '')}".strip() for k in keys], "mean"]
    rows: list[list[Any]] = []
    for i, e in enumerate(entries):
        rows.append([e.name, e.recipe, e.source, e.cases, *[e.dice.get(k) for k in keys], e.mean])
        if i:
            rows.append([h.Markup(f"&nbsp;&nbsp;Δ vs {h.esc(base.name)}"), "", "", "",
                         *[_diff(e.dice.get(k), base.dice.get(k)) for k in keys], _diff(e.mean, base.mean)])
    table = h.table(header, rows, left=3)
    curves = figures.compare_curves([c for e in entries for c in e.curves])
    body = f"<h1>{h.esc('focusseg comparison')}</h1>" + h.note(" · ".join(str(p.resolve()) for p in paths))
    body += h.section("Per-class Dice (differences against the first run)", table, "dice")
    body += h.section("Curves", h.png_img(curves, "curves overlaid") if curves else h.note("no epoch logged"),
                      "curves")
    return h.page("focusseg comparison: " + " vs ".join(e.name for e in entries), body, stamp())


def write_compare(folders: Sequence[str | Path], out: str | Path) -> Path:
    """Write the comparison page to ``out`` atomically; returns its path."""
    out = Path(out)
    if out.is_dir():
        raise UsageError("--out is a folder; give the page's file name (e.g. compare.html)", out)
    text = compare_html(folders)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    return out
