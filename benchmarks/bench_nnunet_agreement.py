"""nnU-Net's model, two predictors: a 3d_fullres Hippocampus model trained here by nnU-Net v2 itself (a short
schedule), predicted on fold 0's held-out cases by ``nnUNetv2_predict`` and by ``focusseg predict MODEL_FOLDER`` with
the same test-time augmentation (mirroring on every axis the checkpoint allows), both on the CPU.

Reports per case: voxel agreement and Dice between the two label maps, the largest difference of their saved class
probabilities, and the wall time of each command (whole processes, one after another, nothing else running).

Round trip (``--roundtrip``): focusseg fine-tunes that model on nnU-Net's own plans (``train --nnunet-plans
nnUNetPlans.json --init-from MODEL``, a few iterations), exports the run with ``export --format nnunet``, and
nnU-Net's ``nnUNetv2_predict_from_modelfolder`` and ``focusseg predict RUN`` predict the held-out cases from it:
voxel agreement between the two.

    bash benchmarks/setup_nnunet_env.sh .bench-nnunet     # once: nnU-Net v2 in its own venv (CPU torch kept)
    .venv/bin/python benchmarks/bench_nnunet_agreement.py --write [--epochs 4 --iterations 100]

nnU-Net runs in a work folder (``--work``, default /tmp/focusseg_nnunet_bench): nnUNet_raw holds a symlink to
../shared/data/Dataset004_Hippocampus (never copied or modified); nnUNet_preprocessed and nnUNet_results are there
too, set only for nnU-Net's commands. A benchmark-only trainer (``nnUNetTrainer_focussegBench``: the default trainer
with ``--epochs`` x ``--iterations`` and no final validation) is written into the benchmark venv. A trained model
is reused when present (``--retrain`` trains again).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = (REPO / ".." / "shared" / "data" / "Dataset004_Hippocampus").resolve()
TRAINER = "nnUNetTrainer_focussegBench"
TRAINER_SRC = '''import os

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_focussegBench(nnUNetTrainer):
    """The default trainer with a short schedule (focusseg's agreement benchmark) and no final validation."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("BENCH_EPOCHS", "4"))
        self.num_iterations_per_epoch = int(os.environ.get("BENCH_ITERATIONS", "100"))
        self.num_val_iterations_per_epoch = 5

    def perform_actual_validation(self, save_probabilities=False):
        return None
'''


def nnunet_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
               nnUNet_results=str(work / "results"), nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1")
    return env


def run(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> float:
    """Run ``cmd``; its wall time in seconds. Raises with the tail of its output when it fails."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if log is not None:
        log.write_text(res.stdout + "\n" + res.stderr)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return seconds


def train_nnunet(venv: Path, work: Path, epochs: int, iterations: int, retrain: bool) -> tuple[Path, float | None]:
    """nnU-Net's plan, preprocessing and a short training of fold 0; the model folder and the training time."""
    env = nnunet_env(work)
    env.update(BENCH_EPOCHS=str(epochs), BENCH_ITERATIONS=str(iterations))
    model = work / "results" / "Dataset004_Hippocampus" / f"{TRAINER}__nnUNetPlans__3d_fullres"
    if any((model / "fold_0" / c).is_file() for c in ("checkpoint_final.pth", "checkpoint_best.pth")) and not retrain:
        return model, None
    (work / "raw").mkdir(parents=True, exist_ok=True)
    link = work / "raw" / DATA.name
    if not link.exists():
        link.symlink_to(DATA)
    pkg = subprocess.run([str(venv / "bin" / "python"), "-c", "import nnunetv2, os; print(os.path.dirname("
                          "nnunetv2.__file__))"], capture_output=True, text=True, check=True).stdout.strip()
    trainer_file = Path(pkg) / "training" / "nnUNetTrainer" / "variants" / "benchmarking" / f"{TRAINER}.py"
    trainer_file.write_text(TRAINER_SRC)
    if not (work / "preprocessed" / DATA.name / "nnUNetPlans.json").is_file():
        run([str(venv / "bin" / "nnUNetv2_plan_and_preprocess"), "-d", "4", "-c", "3d_fullres", "-np", "1"], env,
            work / "plan.log")
    seconds = run([str(venv / "bin" / "nnUNetv2_train"), "4", "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"],
                  env, work / "train.log")
    return model, seconds


def compare(out_a: Path, out_b: Path, cases: list[str], probs: bool = True) -> list[dict]:
    """Per case: voxel agreement, mean foreground Dice between the two label maps, foreground sizes, and the
    largest class-probability difference (nnU-Net's npz is (K, z, y, x); focusseg's (K, x, y, z))."""
    rows = []
    for c in cases:
        a = np.asarray(nib.load(out_a / f"{c}.nii.gz").dataobj).astype(np.int16)
        b = np.asarray(nib.load(out_b / f"{c}.nii.gz").dataobj).astype(np.int16)
        fg = [k for k in np.union1d(np.unique(a), np.unique(b)) if k != 0]
        dice = [2 * np.sum((a == k) & (b == k)) / max(1, np.sum(a == k) + np.sum(b == k)) for k in fg]
        diff = float("nan")
        if probs:
            p_nn = np.load(out_a / f"{c}.npz")["probabilities"].astype(np.float32)
            with np.load(out_b / f"{c}_probabilities.npz") as z:
                key = "probabilities" if "probabilities" in z.files else z.files[0]
                p_fs = z[key].astype(np.float32)
            p_nn = np.transpose(p_nn, (0, 3, 2, 1))
            diff = float(np.abs(p_nn - p_fs).max()) if p_nn.shape == p_fs.shape else float("nan")
        rows.append({"case": c, "agreement": float((a == b).mean()), "dice": float(np.mean(dice)) if dice else 1.0,
                     "fg_nnunet": int((a > 0).sum()), "fg_focusseg": int((b > 0).sum()), "max_prob_diff": diff})
    return rows


def roundtrip(venv: Path, work: Path, model: Path, inp: Path, cases: list[str], iterations: int) -> dict:
    """Fine-tune the nnU-Net checkpoint ``model`` in focusseg on nnU-Net's plans, export it back, predict with both."""
    fs = str(REPO / ".venv" / "bin" / "focusseg")
    run_dir, exported = work / "rt_run", work / "rt_export"
    out_nn, out_fs = work / "rt_pred_nnunet", work / "rt_pred_focusseg"
    for d in (run_dir, exported, out_nn, out_fs):
        shutil.rmtree(d, ignore_errors=True)
    plans = work / "preprocessed" / DATA.name / "nnUNetPlans.json"
    train_s = run([fs, "train", str(DATA), "--out", str(run_dir), "--fold", "0", "--nnunet-plans", str(plans),
                   "--configuration", "3d_fullres", "--init-from", str(model), "--device", "cpu", "--no-progress",
                   "--set", "training.max_epochs=1", "--set", f"training.iterations_per_epoch={iterations}"],
                  None, work / "rt_train.log")
    run([fs, "export", str(run_dir), "--format", "nnunet", "--out", str(exported), "--checkpoint", "final"], None,
        work / "rt_export.log")
    t_nn = run([str(venv / "bin" / "nnUNetv2_predict_from_modelfolder"), "-m", str(exported), "-i", str(inp),
                "-o", str(out_nn), "-f", "0", "-chk", "checkpoint_final.pth", "-device", "cpu", "-npp", "1",
                "-nps", "1", "--disable_progress_bar"], nnunet_env(work), work / "rt_predict_nnunet.log")
    t_fs = run([fs, "predict", str(run_dir), str(inp), str(out_fs), "--checkpoint", "final", "--device", "cpu",
                "--no-postprocess"], None, work / "rt_predict_focusseg.log")
    return {"rows": compare(out_nn, out_fs, cases, probs=False), "train_s": train_s, "t_nn": t_nn, "t_fs": t_fs,
            "iterations": iterations}


def held_out_cases(work: Path, n: int | None) -> list[str]:
    splits = json.loads((work / "preprocessed" / DATA.name / "splits_final.json").read_text())
    cases = sorted(splits[0]["val"])
    return cases[:n] if n else cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, default=REPO / ".bench-nnunet")
    ap.add_argument("--work", type=Path, default=Path("/tmp/focusseg_nnunet_bench"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--cases", type=int, default=None, help="only the first N held-out cases")
    ap.add_argument("--checkpoint", choices=("final", "best"), default="final",
                    help="which checkpoint of the nnU-Net model both predict with (best: a training stopped early)")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--note", default=None, help="a remark on the model, printed in the report")
    ap.add_argument("--roundtrip", type=int, default=0, metavar="N",
                    help="also fine-tune N iterations in focusseg on nnU-Net's plans, export, predict with both")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/nnunet_agreement.md")
    args = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found: this benchmark needs ../shared/data")
    if not (args.venv / "bin" / "nnUNetv2_predict").is_file():
        raise SystemExit(f"no nnU-Net venv at {args.venv}: bash benchmarks/setup_nnunet_env.sh {args.venv}")
    sys.path.insert(0, str(HERE))
    from machine import machine_line

    model, train_s = train_nnunet(args.venv, args.work, args.epochs, args.iterations, args.retrain)
    cases = held_out_cases(args.work, args.cases)
    inp, out_nn, out_fs = args.work / "heldout", args.work / "pred_nnunet", args.work / "pred_focusseg"
    for d in (inp, out_nn, out_fs):
        shutil.rmtree(d, ignore_errors=True)
    inp.mkdir()
    for c in cases:
        (inp / f"{c}_0000.nii.gz").symlink_to(DATA / "imagesTr" / f"{c}_0000.nii.gz")
    env = nnunet_env(args.work)
    t_nn = run([str(args.venv / "bin" / "nnUNetv2_predict"), "-i", str(inp), "-o", str(out_nn), "-d", "4",
                "-c", "3d_fullres", "-tr", TRAINER, "-f", "0", "-chk", f"checkpoint_{args.checkpoint}.pth",
                "-device", "cpu", "-npp", "1", "-nps", "1", "--save_probabilities", "--disable_progress_bar"], env,
               args.work / "predict_nnunet.log")
    t_fs = run([str(REPO / ".venv" / "bin" / "focusseg"), "predict", str(model), str(inp), str(out_fs),
                "--folds", "0", "--checkpoint", args.checkpoint, "--device", "cpu", "--save-probabilities",
                "--no-postprocess"], None, args.work / "predict_focusseg.log")
    rows = compare(out_nn, out_fs, cases)
    worst = min(r["agreement"] for r in rows)
    lines = [
        "## nnU-Net's model, two predictors: agreement and speed",
        "",
        f"- Command: `.venv/bin/python benchmarks/bench_nnunet_agreement.py {shlex.join(sys.argv[1:])}` (nnU-Net v2 "
        "in `.bench-nnunet`, `benchmarks/setup_nnunet_env.sh`)",
        f"- Machine: {machine_line()}",
        f"- Model: nnU-Net v2 3d_fullres on MSD Hippocampus fold 0, trained here by `nnUNetv2_train` on the CPU "
        f"(schedule {args.epochs} x {args.iterations} iterations" + (f", {train_s / 60:.1f} min" if train_s else "")
        + f"); both predict with its `checkpoint_{args.checkpoint}.pth`" + (args.note or "") + ".",
        f"- {len(cases)} held-out cases (fold 0's validation split), mirroring TTA on the checkpoint's axes in both, "
        "no post-processing; nnU-Net with `-npp 1 -nps 1 -device cpu`; whole processes, one after another.",
        "",
        "| predictor | wall time (s) | ratio |",
        "| --- | ---: | ---: |",
        f"| `nnUNetv2_predict` | {t_nn:.1f} | 1.00 |",
        f"| `focusseg predict MODEL_FOLDER` | {t_fs:.1f} | {t_fs / t_nn:.2f} |",
        "",
        f"Voxel agreement: worst case {100 * worst:.3f} %, mean {100 * np.mean([r['agreement'] for r in rows]):.3f} %; "
        f"mean Dice between the two {np.mean([r['dice'] for r in rows]):.4f}; largest class-probability difference "
        f"{np.nanmax([r['max_prob_diff'] for r in rows]):.2e} (focusseg saves float16).",
        "",
        "<details><summary>per case</summary>",
        "",
        "| case | voxel agreement | Dice between | foreground voxels nnU-Net / focusseg | max prob. diff |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {r['case']} | {100 * r['agreement']:.3f} % | {r['dice']:.4f} | {r['fg_nnunet']} / "
              f"{r['fg_focusseg']} | {r['max_prob_diff']:.2e} |" for r in rows]
    lines += ["", "</details>", ""]
    if args.roundtrip:
        rt = roundtrip(args.venv, args.work, model / "fold_0" / f"checkpoint_{args.checkpoint}.pth", inp, cases,
                       args.roundtrip)
        agree = [r["agreement"] for r in rt["rows"]]
        lines += [
            "### Round trip: a focusseg run on nnU-Net's plans, exported back and predicted by nnU-Net",
            "",
            f"`focusseg train DATA --fold 0 --nnunet-plans nnUNetPlans.json --configuration 3d_fullres --init-from "
            f"MODEL` ({rt['iterations']} iterations, {rt['train_s']:.0f} s with its final validation), "
            "`focusseg export RUN --format nnunet --out FOLDER`, then `nnUNetv2_predict_from_modelfolder -m FOLDER "
            "-f 0 -chk checkpoint_final.pth` and `focusseg predict RUN --no-postprocess` on the same held-out cases "
            "(mirroring TTA in both):",
            "",
            "| predictor | wall time (s) |",
            "| --- | ---: |",
            f"| `nnUNetv2_predict_from_modelfolder` (the exported folder) | {rt['t_nn']:.1f} |",
            f"| `focusseg predict RUN` | {rt['t_fs']:.1f} |",
            "",
            f"Voxel agreement: worst case {100 * min(agree):.3f} %, mean {100 * np.mean(agree):.3f} %; mean Dice "
            f"between the two {np.mean([r['dice'] for r in rt['rows']]):.4f}; foreground voxels in all "
            f"{sum(r['fg_nnunet'] for r in rt['rows'])} (nnU-Net) / {sum(r['fg_focusseg'] for r in rt['rows'])} "
            "(focusseg).",
            "",
        ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        (HERE / "results" / "nnunet_agreement.md").write_text(text)


if __name__ == "__main__":
    main()
