"""Issue 15 part 4's measurement: region-based training (nnU-Net's format) on the BraTS 2015 subset.

    .venv/bin/python benchmarks/bench_brats_regions.py --minutes 5      # train fold 0 for 5 minutes, report
    .venv/bin/python benchmarks/bench_brats_regions.py --from-run       # only the report, from the finished run

Setup: Dataset102_BraTS2015Subset (6 cases, FLAIR + T1c, BRATS 2015 labels necrosis 1, edema 2,
non-enhancing 3, enhancing 4) is given the standard BraTS regions in a *region variant* of its dataset.json,
written into ``--work`` beside symlinks to the shared ``imagesTr``/``labelsTr`` (the shared data is neither
modified nor copied):

    "labels": {"background": 0, "whole_tumor": [1, 2, 3, 4], "tumor_core": [1, 3, 4], "enhancing_tumor": 4},
    "regions_class_order": [2, 1, 4]

(whole tumour minus core is edema, 2; core minus enhancing is necrosis / non-enhancing, painted 1; enhancing 4).
``focusseg train`` plans it (one sigmoid output per region, Dice + BCE with batch Dice), trains fold 0 on the CPU
for ``--minutes`` (fingerprint, preprocessing and the final validation included in the budget), and its final
validation predicts the held-out fold-0 cases from the raw images with the best checkpoint (sigmoid > 0.5 per
region, painted back with ``regions_class_order``) and scores Dice per region on the region masks of prediction
and reference. Writes benchmarks/results/brats_regions.md. Without ../shared/data it prints why it skips and
exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = (REPO / ".." / "shared" / "data").resolve()
DATA = "Dataset102_BraTS2015Subset"
REGIONS = {"background": 0, "whole_tumor": [1, 2, 3, 4], "tumor_core": [1, 3, 4], "enhancing_tumor": 4}
ORDER = [2, 1, 4]
NAMES = {"1": "WT", "2": "TC", "3": "ET"}


def region_dataset(source: Path, work: Path) -> Path:
    """``work/Dataset102r_BraTS2015Regions``: the region dataset.json and symlinks to the shared images/labels."""
    from focusseg.io.atomic import atomic_write_text

    out = work / "Dataset102r_BraTS2015Regions"
    out.mkdir(parents=True, exist_ok=True)
    ds = json.loads((source / "dataset.json").read_text())
    ds["labels"], ds["regions_class_order"] = REGIONS, ORDER
    ds["description"] = f"Region variant of {source} (benchmarks/bench_brats_regions.py): " + ds.get("description", "")
    atomic_write_text(out / "dataset.json", json.dumps(ds, indent=1) + "\n")
    for sub in ("imagesTr", "labelsTr"):
        link = out / sub
        if link.is_symlink() and link.resolve() != (source / sub).resolve():
            link.unlink()
        if not link.exists():
            link.symlink_to((source / sub).resolve(), target_is_directory=True)
    return out


def region_rows(run: Path) -> tuple[dict, dict]:
    """``(summary.json of the run, summary.json of its final validation)``."""
    summary = json.loads((run / "summary.json").read_text())
    val = json.loads(Path(summary["final_validation"]["summary_json"]).read_text())
    return summary, val


def _post_line(run: Path) -> str:
    """What ``postprocessing.json`` says: the steps kept and the mean region Dice before / after."""
    f = run / "postprocessing.json"
    if not f.is_file():
        return "none (no postprocessing.json)"
    post = json.loads(f.read_text())
    trials = post.get("trials", [])
    kept = [f"{t['step']['name']} on {t['region']} "
            f"({t['label'] if t['label'] == 'foreground' else 'region ' + str(t['label'])})"
            for t in trials if t.get("accepted")]
    refused = sum(1 for t in trials if t.get("lowers_other_regions"))

    def d(x: dict) -> str:
        return ", ".join(f"{k}: {v:.4f}" for k, v in x.items() if v is not None)

    return (f"{'; '.join(kept) or 'no step kept'} ({len(trials)} trials, {refused} raised their region but lowered "
            f"another and were refused); region Dice before {d(post.get('dice_before', {}))}, after "
            f"{d(post.get('dice_after', {}))}. The table below is before post-processing (the raw final validation).")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=5, help="time budget of the training run (CPU)")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "brats_regions", help="dataset variant and run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--from-run", action="store_true", help="report the run already in --work")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "brats_regions.md")
    ap.add_argument("--note", default="", help="a line about the conditions of the run")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from machine import machine_line

    from focusseg.io.atomic import atomic_write_text

    source = SHARED / DATA
    if not source.is_dir():
        print(f"skipped: {source} is absent (this benchmark needs ../shared/data beside the repository)")
        return 0
    data = region_dataset(source, args.work)
    run = args.work / "run_fold0"
    cmd = [sys.executable, "-m", "focusseg.cli", "train", str(data), "--out", str(run), "--fold", "0",
           "--time-budget", str(args.minutes), "--device", args.device, "--no-progress", "--overwrite"]
    wall = None
    if not args.from_run:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": os.environ.get(
            "OMP_NUM_THREADS", str(os.cpu_count() or 1))})
        wall = time.perf_counter() - t0
    summary, val = region_rows(run)
    plan = json.loads((run / "plan.json").read_text())
    per = val.get("per_label", {})
    metrics = (run / "validation" / "metrics.csv").read_text().splitlines()
    cases = sorted({line.split(",")[0] for line in metrics[1:]})
    lines = [
        "## Region-based training on BraTS 2015 (issue 15 part 4)",
        "",
        f"- Command: `.venv/bin/python benchmarks/bench_brats_regions.py --minutes {args.minutes:g}`",
        f"  - train: `{shlex.join(['focusseg', *cmd[3:]])}`",
        f"- Machine: {machine_line()}",
        f"- Data: {DATA} (6 cases, FLAIR + T1c) with the region dataset.json variant "
        f"`{json.dumps(REGIONS)}`, `regions_class_order` {ORDER}; fold 0, held-out cases: {', '.join(cases)}",
        f"- Plan: patch {plan['patch_size']}, batch {plan['batch_size']}, network {plan['network'].get('name')}, "
        f"loss {json.dumps(plan['training']['loss'])}, {len(plan['regions'])} sigmoid outputs, mirror TTA "
        f"{plan['inference'].get('mirror_axes')}",
        f"- Training: {summary.get('iterations')} iterations, {summary.get('epochs')} epochs, "
        f"{summary.get('train_seconds')} s training of a {args.minutes:g}-minute budget "
        f"(total {summary.get('total_seconds')} s{'' if wall is None else f', wall {wall:.0f} s'}); best per-epoch "
        f"region pseudo-Dice (mean) {summary.get('best_val_mean_dice')}",
        f"- Post-processing chosen per region on the held-out cases: {_post_line(run)}",
        *([f"- Note: {args.note}"] if args.note else []),
        "",
        "Final validation: the held-out cases predicted from the raw images (best checkpoint, sigmoid > 0.5 per "
        "region, painted back with regions_class_order), Dice on the region masks of prediction and reference, in "
        "the original geometry:",
        "",
        "| region | label values | Dice mean | Dice per case | HD95 mean (mm) |",
        "| --- | --- | ---: | --- | ---: |",
    ]
    by_case: dict[str, dict[str, str]] = {}
    header = metrics[0].split(",")
    for line in metrics[1:]:
        row = dict(zip(header, line.split(",")))
        by_case.setdefault(row["label"], {})[row["case"]] = row["dice"]
    for i, region in enumerate(plan["regions"]):
        key = str(i + 1)
        d = (per.get(key) or {}).get("dice", {}).get("mean")
        h = (per.get(key) or {}).get("hd95", {}).get("mean")
        cells = ", ".join(f"{c}: {float(v):.4f}" if v else f"{c}: n/a" for c, v in sorted(by_case.get(key, {}).items()))
        lines.append(f"| {NAMES.get(key, key)} ({plan['region_names'][i]}) | {region} | "
                     f"{'n/a' if d is None else f'{d:.4f}'} | {cells} | {'n/a' if h is None else f'{h:.1f}'} |")
    lines += ["", f"Run folder: `{run}` (summary.json, validation/metrics.csv, validation/summary.json).", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
