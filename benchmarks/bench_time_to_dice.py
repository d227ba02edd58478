"""Time to Dice: held-out mean Dice on MSD Hippocampus fold 0 against wall-clock training minutes, for focusseg's
default plan, nnU-Net v2's trainer on its own plan and a plain MONAI loop, on one machine.

Each point is one JSON file in ``benchmarks/results/time_to_dice/`` (``<tool>_<minutes>.json``: mean foreground
Dice over the 42 held-out cases in their original geometry, scored by ``focusseg.api.evaluate``, with the
iterations, how the point was made, the machine, the date and the command), so the figure can be built up over
several sessions, each run alone on the machine; this script makes points and draws the figure from all of them:

    .venv/bin/python benchmarks/bench_time_to_dice.py --focusseg 5 10 20   # focusseg train --time-budget M, each
    .venv/bin/python benchmarks/bench_time_to_dice.py --focusseg-run runs/hippo 30   # a finished 30-min run
    .venv/bin/python benchmarks/bench_time_to_dice.py --nnunet /tmp/focusseg_nnunet_bench/budget_result.json
    .venv/bin/python benchmarks/bench_monai_loop.py --minutes 30 --snapshots 5,10,20 --write
    .venv/bin/python benchmarks/bench_time_to_dice.py            # only the table and the figure

How the points are made (the ``how`` field):

- focusseg: one ``focusseg train DATA --fold 0 --time-budget M`` per budget (its schedule is fitted to each
  budget, as a user running it for M minutes gets); the Dice is its final validation (best checkpoint, mirror TTA).
- nnU-Net: ``bench_nnunet_budget.py --minutes 30 --score-snapshots`` (nnU-Net's trainer with its schedule fitted to
  30 minutes, checkpoint copies at 5 / 10 / 20 minutes, each predicted by ``nnUNetv2_predict`` with its TTA): the
  30-minute point is a fitted run, the earlier ones are snapshots of it (their learning rate had not decayed).
- MONAI: ``bench_monai_loop.py`` (a plain loop without a schedule): snapshots of one run.

Writes ``benchmarks/results/time_to_dice.md`` and ``time_to_dice.png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
DATA = (REPO / ".." / "shared" / "data" / "Dataset004_Hippocampus").resolve()
POINTS = HERE / "results" / "time_to_dice"
TOOLS = {"focusseg": "focusseg (default plan)", "nnunet": "nnU-Net v2 (its 3d_fullres plan and trainer)",
         "monai": "plain MONAI loop"}


def write_point(point: dict) -> Path:
    POINTS.mkdir(parents=True, exist_ok=True)
    path = POINTS / f"{point['tool']}_{point['minutes']:g}.json"
    path.write_text(json.dumps(point, indent=1))
    print(f"{path.relative_to(REPO)}: {point['mean_dice']:.4f}", flush=True)
    return path


def focusseg_point(run: Path, minutes: float, command: str, wall_s: float | None) -> dict:
    from machine import machine_line

    summary = json.loads((run / "summary.json").read_text())
    final = summary["final_validation"]
    return {"tool": "focusseg", "minutes": minutes, "mean_dice": final["mean_dice"],
            "per_label": final["dice_per_label"], "iterations": summary["iterations"],
            "how": "focusseg train --time-budget (schedule fitted to the budget); final validation, best checkpoint",
            "whole_command_s": wall_s, "machine": machine_line(), "date": time.strftime("%Y-%m-%d"),
            "command": command}


def run_focusseg(minutes: float) -> None:
    run = REPO / "runs" / f"time_to_dice_focusseg_{minutes:g}"
    cmd = [str(REPO / ".venv" / "bin" / "focusseg"), "train", str(DATA), "--out", str(run), "--fold", "0",
           "--time-budget", f"{minutes:g}", "--no-progress", "--overwrite"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    shown = f"focusseg train ../shared/data/Dataset004_Hippocampus --out {run.relative_to(REPO)} --fold 0 " \
            f"--time-budget {minutes:g}"
    write_point(focusseg_point(run, minutes, shown, round(wall, 1)))


def nnunet_points(result_file: Path) -> None:
    result = json.loads(result_file.read_text())
    for r in result["rows"]:
        fitted = r["checkpoint"] == "final"
        minutes = round(result["record"]["budget_s"] / 60, 1) if fitted else float(r["checkpoint"][:-3])
        write_point({"tool": "nnunet", "minutes": minutes, "mean_dice": r["mean_dice"], "per_label": r["per_label"],
                     "iterations": r["iterations"],
                     "how": ("nnU-Net's trainer, schedule fitted to the budget" if fitted else
                             f"snapshot at {minutes:g} min of the {result['record']['budget_s'] / 60:g}-min run"),
                     "machine": result["machine"], "date": result["date"],
                     "command": ".venv/bin/python benchmarks/bench_nnunet_budget.py --minutes "
                                f"{result['record']['budget_s'] / 60:g} --score-snapshots"})


def draw() -> None:
    points = [json.loads(p.read_text()) for p in sorted(POINTS.glob("*.json"))]
    if not points:
        raise SystemExit(f"{POINTS}: no points yet")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, zoom in zip(axes, (False, True), strict=True):
        for tool, name in TOOLS.items():
            pts = sorted((p for p in points if p["tool"] == tool), key=lambda p: p["minutes"])
            if pts:
                ax.plot([p["minutes"] for p in pts], [p["mean_dice"] for p in pts], "o-", label=name)
        ax.set_xlabel("training wall-clock minutes (2 CPU cores)")
        ax.set_xticks([5, 10, 20, 30, 60])
        ax.grid(alpha=0.3)
        if zoom:
            ax.set_ylim(0.8, 0.9)
            ax.set_title("the same, Dice 0.80-0.90")
        else:
            ax.set_ylabel("held-out mean Dice (42 cases)")
            ax.set_title("MSD Hippocampus fold 0: time to Dice")
            ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(HERE / "results" / "time_to_dice.png", dpi=110)
    lines = ["## Time to Dice: focusseg, nnU-Net v2 and a plain MONAI loop (Hippocampus fold 0, 2 CPU cores)", "",
             "- Command: `.venv/bin/python benchmarks/bench_time_to_dice.py` (points made as its docstring says; "
             "each point's own command below)",
             f"- Machine: {sorted({p['machine'] for p in points})[0]}; nothing else running",
             "- Score: mean foreground Dice over the 42 fold-0 held-out cases, original geometry, "
             "`focusseg.api.evaluate` for every tool", "",
             "| tool | minutes | held-out mean Dice | label 1 | label 2 | iterations | how | date |",
             "|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (list(TOOLS).index(p["tool"]), p["minutes"])):
        lines.append(f"| {TOOLS[p['tool']]} | {p['minutes']:g} | {p['mean_dice']:.4f} | {p['per_label']['1']:.4f} | "
                     f"{p['per_label']['2']:.4f} | {p['iterations']} | {p['how']} | {p['date']} |")
    missing = [f"{t} {m}" for t in TOOLS for m in (5, 10, 20, 30, 60)
               if not any(p["tool"] == t and p["minutes"] == m for p in points)]
    lines += ["", "![time to Dice](benchmarks/results/time_to_dice.png)", ""]
    if missing:
        lines += [f"Not measured yet: {', '.join(missing)} (minutes).", ""]
    lines += ["Commands per point: " + "; ".join(sorted({f"`{p['command']}`" for p in points})), ""]
    (HERE / "results" / "time_to_dice.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--focusseg", type=float, nargs="*", default=[], help="train focusseg for these budgets")
    ap.add_argument("--focusseg-run", nargs=2, metavar=("RUN", "MINUTES"), help="a point from a finished run")
    ap.add_argument("--nnunet", type=Path, help="bench_nnunet_budget.py's budget_result.json (scored snapshots)")
    args = ap.parse_args()
    if args.focusseg and not (DATA / "dataset.json").is_file():
        raise SystemExit(f"{DATA} not found: the benchmark needs ../shared/data/Dataset004_Hippocampus")
    for minutes in args.focusseg:
        run_focusseg(minutes)
    if args.focusseg_run:
        run, minutes = Path(args.focusseg_run[0]), float(args.focusseg_run[1])
        shown = f"focusseg train ../shared/data/Dataset004_Hippocampus --out {run} --fold 0 --time-budget {minutes:g}"
        write_point(focusseg_point(run, minutes, shown, None))
    if args.nnunet:
        nnunet_points(args.nnunet)
    draw()


if __name__ == "__main__":
    main()
