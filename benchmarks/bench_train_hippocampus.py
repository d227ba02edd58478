"""Issue 3's acceptance figure: `focusseg train` on MSD Hippocampus, fold 0, default plan, CPU, 30-minute budget.

    .venv/bin/python benchmarks/bench_train_hippocampus.py            # trains (30 min) and writes the report
    .venv/bin/python benchmarks/bench_train_hippocampus.py --from-run runs/hippo_fold0   # report of a finished run

Writes benchmarks/results/train_hippocampus.md and benchmarks/results/hippocampus_curve.png (``--stem S``:
benchmarks/results/S.md and S_curve.png, e.g. a re-measurement beside the first one). The reported Dice is
the final validation of `focusseg train`: the 42 fold-0 held-out cases predicted from the raw images with the
best checkpoint (mirror TTA as planned) and scored in their original geometry by `focusseg.metrics`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from focusseg.runfolder import read_log

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = (REPO / ".." / "shared" / "data" / "Dataset004_Hippocampus").resolve()


def _shown(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it (as the command is typed there)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--from-run", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "hippo_fold0")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--note", default="", help="a line about the conditions of the run")
    ap.add_argument("--stem", default="train_hippocampus", help="the report's name under benchmarks/results")
    ap.add_argument("--heading", default="", help="added to the report's title (what this measurement checks)")
    ap.add_argument("--baseline-run", type=Path, default=None,
                    help="a run of the same command with --set training.validation=volumes (the former per-epoch "
                         "whole-volume validation), measured on the same machine: compared side by side")
    ap.add_argument("--previous", default="", help="the previous measurement to compare with, as text "
                    "(e.g. '0.8778 on 2026-11-23 with whole-volume validation every epoch')")
    ap.add_argument("--time-log", type=Path, default=None,
                    help="output of `/usr/bin/time -v focusseg train ...` for wall time and peak RSS")
    ap.add_argument("--extra", default="", help="more `focusseg train` arguments, e.g. \"--nnunet-plans "
                                                "nnUNetPlans.json --configuration 3d_fullres\"")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from machine import machine_line

    run = args.from_run
    curve = "hippocampus_curve.png" if args.stem == "train_hippocampus" else f"{args.stem}_curve.png"
    cmd = (f"focusseg train ../shared/data/Dataset004_Hippocampus --out {_shown(args.out)} --fold 0 "
           f"--time-budget {args.minutes:g}" + (f" {args.extra}" if args.extra else ""))
    if run is None:
        if not DATA.is_dir():
            sys.exit(f"skipped: {DATA} is absent (needs ../shared/data)")
        t0 = time.time()
        subprocess.run([str(REPO / ".venv" / "bin" / "focusseg"), "train", str(DATA), "--out", str(args.out),
                        "--fold", "0", "--time-budget", str(args.minutes), "--no-progress", *shlex.split(args.extra)],
                       check=True)
        print(f"wall time {time.time() - t0:.0f} s")
        run = args.out
    summary = json.loads((run / "summary.json").read_text())
    plan = json.loads((run / "plan.json").read_text())
    log = read_log(run)
    fv = summary["final_validation"]
    shutil.copy(run / "training_curve.png", HERE / "results" / curve)
    best = max((r for r in log if "val_mean_dice" in r), key=lambda r: r["val_mean_dice"])
    lines = [
        "## Training: MSD Hippocampus, fold 0, default plan, CPU, 30-minute budget (issue 3)"
        + (f": {args.heading}" if args.heading else ""),
        "",
        f"- Command: `{cmd}` (report: `python benchmarks/bench_train_hippocampus.py --from-run {run}`)",
        f"- Machine: {machine_line()}",
        f"- Plan: patch {plan['patch_size']}, batch {plan['batch_size']}, network {plan['network']['name']} "
        f"channels {plan['network'].get('channels')}, amp {plan['training']['amp']}, "
        f"{plan['training']['iterations_per_epoch']} iterations/epoch, augmentation {plan['training']['augmentation']}",
        f"- Trained {summary['iterations']} iterations in {summary['epochs']} epochs, "
        f"{summary['train_seconds']:.0f} s of training; whole command {summary['total_seconds']:.0f} s "
        "(fingerprint, preprocessing, training, final validation).",
        *_time_lines(args.time_log),
        *([f"- Note: {args.note}"] if args.note else []),
        f"- Validation during training (preprocessed grid, no TTA, {_val_kind(log)}): best mean Dice "
        f"{best['val_mean_dice']:.4f} at iteration {best['iteration']}.",
        *_validation_cost_lines(log, plan),
        *([f"- Previous measurement: {args.previous}"] if args.previous else []),
        "",
        "| fold-0 held-out cases (original geometry, best checkpoint, mirror TTA) | Dice |",
        "| --- | ---: |",
    ]
    names = {str(v): k for k, v in plan["labels"].items()}
    for lab, d in fv["dice_per_label"].items():
        lines.append(f"| label {lab} ({names.get(lab, '?')}) | {d:.4f} |")
    lines += [f"| **mean foreground Dice** | **{fv['mean_dice']:.4f}** |", "",
              "Peer (DEVELOPERS.md field notes, same machine type): nnU-Net v2 default plan trained 30 min on this "
              "CPU finishes one epoch and scores mean Dice 0.84.", "",
              f"![training curve](benchmarks/results/{curve})", ""]
    if args.baseline_run is not None:
        lines += _ab_lines(run, args.baseline_run)
    (HERE / "results" / f"{args.stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


def _ab_lines(run: Path, baseline: Path) -> list[str]:
    """The cheap per-epoch validation against the former whole-volume validation, same command and machine."""
    import numpy as np

    out = ["### Per-epoch validation: fixed patches (default) vs whole volumes (former), same 30-minute command",
           "",
           f"Baseline: the same command with `--set training.validation=volumes` ({baseline}), run right after on "
           "the same machine.", "",
           "| per-epoch validation | validation s/epoch | training s/epoch | iterations in 30 min | best in-training "
           "Dice | hold-out mean Dice (final validation) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, folder in (("fixed patches (pseudo-Dice)", run), ("whole volumes", baseline)):
        s = json.loads((folder / "summary.json").read_text())
        log = [r for r in read_log(folder) if "val_time_s" in r]
        out.append(f"| {name} | {np.mean([r['val_time_s'] for r in log]):.2f} | "
                   f"{np.mean([r['train_time_s'] for r in log]):.1f} | {s['iterations']} | "
                   f"{s['best_val_mean_dice']:.4f} | {s['final_validation']['mean_dice']:.4f} |")
    return [*out, ""]


def _val_kind(log: list[dict]) -> str:
    kinds = {r.get("val_kind", "volumes") for r in log if "val_mean_dice" in r}
    return "fixed-patch pseudo-Dice" if kinds == {"patches"} else "whole volumes" if kinds == {"volumes"} else \
        "mixed"


def _validation_cost_lines(log: list[dict], plan: dict) -> list[str]:
    """Per-epoch validation time of the fixed patches vs whole volumes, both measured in this run (whole volumes
    every ``val_full_every`` epochs), and how close the two scores were at those epochs."""
    import numpy as np

    patch = [r["val_time_s"] for r in log if r.get("val_kind") == "patches"]
    both = [r for r in log if r.get("val_kind") == "patches" and "val_volume_time_s" in r]
    if not patch or not both:
        return []
    vol_t = float(np.mean([r["val_volume_time_s"] for r in both]))
    gap = float(np.mean([abs(r["val_mean_dice"] - r["val_volume_mean_dice"]) for r in both]))
    train = float(np.mean([r["train_time_s"] for r in log]))
    return [f"- Validation cost per epoch (this run): fixed patches ({plan['training'].get('val_patches')} "
            f"requested, >= 1 per case) {np.mean(patch):.2f} s vs whole volumes {vol_t:.2f} s (sliding window, "
            f"measured at epochs {', '.join(str(r['epoch']) for r in both)}): {vol_t / np.mean(patch):.1f}x less; "
            f"training {train:.1f} s per epoch. Mean |patch - volume| Dice at those epochs: {gap:.4f}."]


def _time_lines(path: Path | None) -> list[str]:
    """Wall clock and peak RSS from a `/usr/bin/time -v` log."""
    if path is None or not path.is_file():
        return []
    wall = rss = None
    for line in path.read_text().splitlines():
        if "Elapsed (wall clock)" in line:
            wall = line.rsplit(" ", 1)[-1]
        if "Maximum resident set size" in line:
            rss = int(line.rsplit(" ", 1)[-1]) / 1024
    return [f"- `/usr/bin/time -v`: wall clock {wall} (m:ss) for the whole command, peak RSS {rss:.0f} MiB."]


if __name__ == "__main__":
    main()
