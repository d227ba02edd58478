"""Issue 15's cross-validation figure: Hippocampus 5-fold cross-validation on CPU with a short budget per fold,
pooled validation Dice, and the 5-fold ensemble vs each single fold on held-out cases no fold trained on.

    .venv/bin/python benchmarks/bench_crossval.py --minutes 4        # ~5 x 4 min + validation + test predictions

The 208 shared Hippocampus cases are split (seeded) into 40 held-out test cases and 168 cross-validation cases;
the script builds a dataset folder of symbolic links under runs/bench_cv/data (no image is copied), runs
`focusseg crossval` on it, predicts the test cases with the ensemble (`focusseg predict CV`) and with every fold
alone, evaluates each against the test labels and writes benchmarks/results/crossval.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = (REPO / ".." / "shared" / "data" / "Dataset004_Hippocampus").resolve()
N_TEST = 40


def build_split_dataset(out: Path) -> tuple[list[str], list[str]]:
    """``out`` = a dataset folder of links: imagesTr/labelsTr for the CV cases, imagesTs/labelsTs for the test."""
    cases = sorted(p.name[: -len(".nii.gz")] for p in (DATA / "labelsTr").glob("*.nii.gz"))
    test = sorted(np.random.default_rng(2026).choice(cases, N_TEST, replace=False).tolist())
    cv = [c for c in cases if c not in set(test)]
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for ids, img_dir, lab_dir in ((cv, "imagesTr", "labelsTr"), (test, "imagesTs", "labelsTs")):
        for c in ids:
            for src, dst in ((DATA / "imagesTr" / f"{c}_0000.nii.gz", out / img_dir / f"{c}_0000.nii.gz"),
                             (DATA / "labelsTr" / f"{c}.nii.gz", out / lab_dir / f"{c}.nii.gz")):
                if not dst.is_symlink():
                    dst.symlink_to(src)
    spec = json.loads((DATA / "dataset.json").read_text())
    spec["numTraining"] = len(cv)
    (out / "dataset.json").write_text(json.dumps(spec, indent=2))
    return cv, test


def focusseg(*args: str) -> None:
    subprocess.run([str(REPO / ".venv" / "bin" / "focusseg"), *args], check=True)


def mean_dice(eval_dir: Path) -> tuple[float, dict[str, float]]:
    s = json.loads((eval_dir / "summary.json").read_text())
    per = {k: v["dice"]["mean"] for k, v in s["per_label"].items()}
    return float(np.mean(list(per.values()))), per


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=4.0, help="time budget per fold")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_cv")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"skipped: {DATA} is absent (needs ../shared/data)")
    sys.path.insert(0, str(HERE))
    from machine import machine_line

    data = args.out / "data"
    cv_ids, test_ids = build_split_dataset(data)
    cv = args.out / "cv"
    t0 = time.time()
    focusseg("crossval", str(data), "--out", str(cv), "--folds", "0-4", "--time-budget", f"{args.minutes:g}",
             "--no-progress", "--device", "cpu")
    cv_wall = time.time() - t0
    result = json.loads((cv / "crossval.json").read_text())
    rows = []
    t1 = time.time()
    focusseg("predict", str(cv), str(data / "imagesTs"), str(args.out / "test_ensemble"), "--device", "cpu")
    ens_predict_s = time.time() - t1
    focusseg("evaluate", str(args.out / "test_ensemble"), str(data / "labelsTs"), "--out",
             str(args.out / "eval_ensemble"))
    ens, ens_per = mean_dice(args.out / "eval_ensemble")
    singles = {}
    for k in range(5):
        pred = args.out / f"test_fold_{k}"
        focusseg("predict", str(cv / f"fold_{k}"), str(data / "imagesTs"), str(pred), "--device", "cpu")
        focusseg("evaluate", str(pred), str(data / "labelsTs"), "--out", str(args.out / f"eval_fold_{k}"))
        singles[k] = mean_dice(args.out / f"eval_fold_{k}")
    for k, f in sorted(result["folds"].items(), key=lambda kv: int(kv[0])):
        rows.append(f"| fold {k} | {f['val_cases']} | {f['mean_dice']:.4f} | {f['epochs']} | {f['iterations']} | "
                    f"{singles[int(k)][0]:.4f} |")
    best_k = max(singles, key=lambda k: singles[k][0])
    p = result["pooled"]
    lines = [
        "## Cross-validation: Hippocampus 5 folds on CPU, then the 5-fold ensemble on held-out cases (issue 15)",
        "",
        f"- Command: `focusseg crossval runs/bench_cv/data --out runs/bench_cv/cv --folds 0-4 --time-budget "
        f"{args.minutes:g}` then `focusseg predict runs/bench_cv/cv ...` (script: `python benchmarks/bench_crossval.py "
        f"--minutes {args.minutes:g}`)",
        f"- Machine: {machine_line()}",
        f"- Data: the 208 shared Hippocampus cases, {len(cv_ids)} in the cross-validation and {len(test_ids)} held out "
        "(seeded choice; no fold trained or validated on them); default plan and recipe; "
        f"{args.minutes:g} minutes per fold (whole crossval command {cv_wall / 60:.1f} min: one fingerprint, one "
        "preprocessed store for all folds, each fold's final validation and the pooled evaluation).",
        "",
        "| fold | validation cases | validation Dice (fold's held-out cases) | epochs | iterations | "
        "test Dice (this fold alone) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        f"| **pooled** (all {p['cases']} validation cases) | {p['cases']} | **{p['mean_dice']:.4f}** | | | |",
        "",
        f"- Post-processing chosen on the pooled validation: {(result.get('postprocessing') or {}).get('steps')}",
        f"- **Test set ({len(test_ids)} cases): 5-fold ensemble mean Dice {ens:.4f}** (per label "
        f"{', '.join(f'{k}: {v:.4f}' for k, v in ens_per.items())}; predicted in {ens_predict_s:.0f} s) vs the best "
        f"single fold (fold {best_k}) {singles[best_k][0]:.4f} and the mean single fold "
        f"{np.mean([v[0] for v in singles.values()]):.4f}.",
        "",
    ]
    (HERE / "results" / "crossval.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
