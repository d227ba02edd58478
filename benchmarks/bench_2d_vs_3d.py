"""Issue 15 part 3: the 2D configuration against the default 3D plan on Hippocampus fold 0, same CPU budget.

    .venv/bin/python benchmarks/bench_2d_vs_3d.py --minutes 5        # ~2 x (5 min + final validation)

Both runs train fold 0 of the shared Hippocampus dataset (the same split file, the same preprocessed store: the
2D plan keeps the 3D target spacing, so one store serves both) for ``--minutes`` each on the CPU; each run's final
validation predicts the fold's held-out cases from the raw images and scores them in their original geometry
(``validation/summary.json``). Reported: mean Dice, seconds per iteration, iterations, epochs, patch and batch,
prediction time. Writes benchmarks/results/2d_vs_3d.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = (REPO / ".." / "shared" / "data" / "Dataset004_Hippocampus").resolve()


def train(config: str, out: Path, minutes: float) -> dict:
    """One fold-0 run of ``config`` ("3d" or "2d") into ``out/<config>`` with the shared store; its summary."""
    from focusseg.workflows.train import run_training

    over = {"configuration": config} if config == "2d" else None
    t0 = time.perf_counter()
    summary = run_training(DATA, out / config, fold=0, overrides=over, time_budget_min=minutes, device="cpu",
                           preprocessed_dir=out / "preprocessed", progress=False, overwrite=True)
    summary["wall_s"] = time.perf_counter() - t0
    summary["plan"] = json.loads((out / config / "plan.json").read_text())
    return summary


def row(config: str, s: dict) -> str:
    plan, fv = s["plan"], s.get("final_validation") or {}
    per = fv.get("dice_per_label") or {}
    it = max(1, int(s["iterations"]))
    predict_s = float(s["total_seconds"]) - float(s["train_seconds"])
    patch = "x".join(str(p) for p in plan["patch_size"])
    where = f" (slices along axis {plan['slice_axis']})" if config == "2d" else ""
    dice = fv.get("mean_dice")
    return (f"| {config}{where} | {patch} | {plan['batch_size']} | {plan['network']['name']} | "
            f"{float(s['train_seconds']) / it:.3f} | {s['iterations']} | {s['epochs']} | "
            f"{'n/a' if dice is None else f'{dice:.4f}'} | "
            f"{', '.join(f'{k}: {v:.4f}' for k, v in per.items())} | {predict_s:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget per configuration (default 5)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_2d_vs_3d")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"skipped: {DATA} is absent (needs ../shared/data)")
    sys.path.insert(0, str(HERE))
    from machine import machine_line

    results = {c: train(c, args.out, args.minutes) for c in ("3d", "2d")}
    n_val = len(json.loads((args.out / "3d" / "splits_final.json").read_text())[0]["val"])
    lines = [
        "## 2D vs 3D configuration: Hippocampus fold 0 on CPU, same budget (issue 15 part 3)",
        "",
        f"- Command: `python benchmarks/bench_2d_vs_3d.py --minutes {args.minutes:g}` (= `focusseg train "
        f"Dataset004_Hippocampus --fold 0 --time-budget {args.minutes:g} --device cpu` with and without "
        "`--configuration 2d`, one preprocessed store)",
        f"- Machine: {machine_line()}",
        f"- Date: {date.today().isoformat()}",
        f"- Dice: each run's final validation, the fold's {n_val} held-out cases predicted from the raw images "
        "(Gaussian sliding window, mirror TTA; 2D: slice by slice) "
        "and scored in their original geometry.",
        "",
        "| configuration | patch | batch | network | s / iteration | iterations | epochs | mean Dice | "
        "Dice per label | validation + prediction s |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |",
        *(row(c, s) for c, s in results.items()),
        "",
    ]
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "2d_vs_3d.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
