"""nnU-Net's own trainer on a wall-clock budget: nnU-Net v2's 3d_fullres plan for MSD Hippocampus fold 0 trained by
``nnUNetv2_train`` for ``--minutes`` on this CPU, then ``nnUNetv2_predict`` on the 42 fold-0 held-out cases (its
default mirroring TTA) scored in their original geometry by ``focusseg.api.evaluate`` — the same scorer as the
final validation of ``focusseg train``. The peer of ``focusseg train --nnunet-plans nnUNetPlans.json --configuration
3d_fullres --time-budget 30`` (same plan, same network, other engine).

    bash benchmarks/setup_nnunet_env.sh .bench-nnunet     # once: nnU-Net v2 in its own venv (CPU torch kept)
    .venv/bin/python benchmarks/bench_nnunet_budget.py --minutes 30 --write

The schedule is fitted to the budget as focusseg fits its own: a benchmark-only trainer
(``nnUNetTrainer_focussegBudget``, written into the benchmark venv) runs nnU-Net's default trainer with epochs of
``--iterations`` (25) training and 5 validation iterations, measures its first epoch and then sets the number of
epochs (and the end of its polynomial learning-rate decay) so that training ends at the budget; it stops at the
budget in any case and saves ``checkpoint_final.pth`` (and copies at ``--snapshots`` minutes). Without the refit,
nnU-Net's 1000 x 250 schedule would hold the learning rate near 0.01 for the whole budget. The budget counts from the
trainer's start (data loaders, network) to its last iteration; nnU-Net's planning and preprocessing run before it
and are not counted (focusseg's budget likewise excludes its preprocessing).

Work folder as ``bench_nnunet_agreement.py`` (``--work``, default /tmp/focusseg_nnunet_bench): nnUNet_raw links to
../shared/data/Dataset004_Hippocampus (never copied or modified); the environment variables are set only for
nnU-Net's commands.
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_nnunet_agreement import DATA, held_out_cases, nnunet_env, run  # noqa: E402

TRAINER = "nnUNetTrainer_focussegBudget"
TRAINER_SRC = '''import json
import os
import shutil
import time
from os.path import join

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_focussegBudget(nnUNetTrainer):
    """nnU-Net's default trainer on a wall-clock budget (focusseg's benchmarks): epochs of BENCH_ITERATIONS
    iterations; after the first epoch the number of epochs (and the poly learning-rate horizon) is fitted to the
    budget; training stops at the budget; snapshots at BENCH_SNAPSHOTS minutes; no final validation."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_s = float(os.environ.get("BENCH_MINUTES", "30")) * 60
        self.snapshot_s = sorted(float(m) * 60 for m in os.environ.get("BENCH_SNAPSHOTS", "").split(",") if m)
        self.num_iterations_per_epoch = int(os.environ.get("BENCH_ITERATIONS", "25"))
        self.num_val_iterations_per_epoch = 5
        self.num_epochs = 1000

    def perform_actual_validation(self, save_probabilities=False):
        return None

    def run_training(self):
        t0 = time.perf_counter()
        self.on_train_start()
        pending = list(self.snapshot_s)
        record = {"budget_s": self.budget_s, "iterations": 0, "snapshots": [], "epochs_planned": None}
        first_epoch_s = None
        stop = False
        while self.current_epoch < self.num_epochs and not stop:
            epoch_t0 = time.perf_counter()
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = []
            for _ in range(self.num_iterations_per_epoch):
                outputs.append(self.train_step(next(self.dataloader_train)))
                record["iterations"] += 1
                elapsed = time.perf_counter() - t0
                while pending and elapsed >= pending[0]:
                    name = "checkpoint_%gmin.pth" % (pending.pop(0) / 60)
                    self.save_checkpoint(join(self.output_folder, name))
                    record["snapshots"].append({"file": name, "iterations": record["iterations"],
                                                "seconds": round(elapsed, 1)})
                if elapsed >= self.budget_s:
                    stop = True
                    break
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val = [self.validation_step(next(self.dataloader_val))
                       for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val)
            self.on_epoch_end()
            if first_epoch_s is None:
                first_epoch_s = time.perf_counter() - epoch_t0
                left = self.budget_s - (time.perf_counter() - t0)
                self.num_epochs = max(self.current_epoch + 1, self.current_epoch + int(left // first_epoch_s))
                self.lr_scheduler.max_steps = self.num_epochs
                record["epochs_planned"] = self.num_epochs
        record["train_seconds"] = round(time.perf_counter() - t0, 1)
        record["epochs"] = self.current_epoch
        self.on_train_end()
        with open(join(self.output_folder, "budget_record.json"), "w") as f:
            json.dump(record, f, indent=1)
'''


def install_trainer(venv: Path) -> None:
    pkg = subprocess.run([str(venv / "bin" / "python"), "-c", "import nnunetv2, os; print(os.path.dirname("
                          "nnunetv2.__file__))"], capture_output=True, text=True, check=True).stdout.strip()
    (Path(pkg) / "training" / "nnUNetTrainer" / "variants" / "benchmarking" / f"{TRAINER}.py").write_text(TRAINER_SRC)


def score(pred: Path, cases: list[str], out: Path) -> dict:
    """Mean foreground Dice of ``pred`` against the references, as focusseg's final validation scores it."""
    from focusseg.api import evaluate

    ref = out.parent / "references"
    shutil.rmtree(ref, ignore_errors=True)
    ref.mkdir(parents=True)
    for c in cases:
        (ref / f"{c}.nii.gz").symlink_to(DATA / "labelsTr" / f"{c}.nii.gz")
    summary = evaluate(pred, ref, out, labels=[1, 2])
    return {"mean_dice": summary["overall"]["dice"]["mean"],
            "per_label": {k: v["dice"]["mean"] for k, v in summary["per_label"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, default=REPO / ".bench-nnunet")
    ap.add_argument("--work", type=Path, default=Path("/tmp/focusseg_nnunet_bench"))
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--iterations", type=int, default=25, help="training iterations per nnU-Net epoch")
    ap.add_argument("--snapshots", default="5,10,20", help="minutes at which a checkpoint copy is kept")
    ap.add_argument("--score-snapshots", action="store_true", help="also predict and score the snapshots")
    ap.add_argument("--score-only", action="store_true",
                    help="do not train: predict and score the checkpoints of the last run in --work")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/nnunet_budget.md")
    args = ap.parse_args()
    from machine import machine_line

    env = nnunet_env(args.work)
    env.update(BENCH_MINUTES=str(args.minutes), BENCH_ITERATIONS=str(args.iterations), BENCH_SNAPSHOTS=args.snapshots)
    if not (args.work / "preprocessed" / DATA.name / "nnUNetPlans.json").is_file():
        raise SystemExit(f"{args.work}: no nnU-Net preprocessing; run benchmarks/bench_nnunet_agreement.py first")
    install_trainer(args.venv)
    model = args.work / "results" / DATA.name / f"{TRAINER}__nnUNetPlans__3d_fullres"
    train_cmd = [str(args.venv / "bin" / "nnUNetv2_train"), "4", "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"]
    if args.score_only:
        if not (model / "fold_0" / "budget_record.json").is_file():
            raise SystemExit(f"{model}: no finished budget run to score (run without --score-only first)")
        previous = args.work / "budget_result.json"
        wall = json.loads(previous.read_text())["wall_s"] if previous.is_file() else float("nan")
    else:
        shutil.rmtree(model, ignore_errors=True)
        wall = run(train_cmd, env, args.work / "budget_train.log")
    record = json.loads((model / "fold_0" / "budget_record.json").read_text())

    cases = held_out_cases(args.work, None)
    inp = args.work / "heldout"
    checkpoints = [("final", "checkpoint_final.pth", record["iterations"], record["train_seconds"])]
    if args.score_snapshots:
        checkpoints += [(s["file"][len("checkpoint_"):-4], s["file"], s["iterations"], s["seconds"])
                        for s in record["snapshots"]]
    rows = []
    done = {}
    if args.score_only and (args.work / "budget_result.json").is_file():  # rows scored before are kept
        done = {r["checkpoint"]: r for r in json.loads((args.work / "budget_result.json").read_text())["rows"]}
    for label, chk, its, secs in checkpoints:
        if label in done:
            rows.append(done[label])
            continue
        pred = args.work / f"budget_pred_{label}"
        shutil.rmtree(pred, ignore_errors=True)
        t_pred = run([str(args.venv / "bin" / "nnUNetv2_predict"), "-i", str(inp), "-o", str(pred), "-d", "4",
                      "-c", "3d_fullres", "-tr", TRAINER, "-f", "0", "-chk", chk, "-device", "cpu", "-npp", "1",
                      "-nps", "1", "--disable_progress_bar"], env, args.work / f"budget_predict_{label}.log")
        rows.append({"checkpoint": label, "iterations": its, "seconds": secs, "predict_s": round(t_pred, 1),
                     **score(pred, cases, args.work / f"budget_eval_{label}")})
        print(json.dumps(rows[-1]), flush=True)

    result = {"record": record, "wall_s": round(wall, 1), "rows": rows, "machine": machine_line(),
              "date": time.strftime("%Y-%m-%d")}
    (args.work / "budget_result.json").write_text(json.dumps(result, indent=1))
    final = rows[0]
    lines = [
        f"## nnU-Net v2's trainer on its own 3d_fullres plan, {args.minutes:g} CPU-minutes (Hippocampus fold 0)",
        "",
        f"- Command: `.venv/bin/python benchmarks/bench_nnunet_budget.py --minutes {args.minutes:g} --write` "
        "(nnunetv2 in `.bench-nnunet`; trainer `nnUNetTrainer_focussegBudget`: nnU-Net's default trainer, epochs of "
        f"{args.iterations} iterations, epochs and poly-LR horizon fitted to the budget after the first epoch)",
        f"- Machine: {machine_line()}; nnU-Net data augmentation in 1 worker process "
        "(nnUNet_n_proc_DA=1), nothing else running",
        "",
        "| checkpoint | iterations | training s | s/iteration | held-out mean Dice (42 cases) | "
        "label 1 | label 2 | nnUNetv2_predict s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['checkpoint']} | {r['iterations']} | {r['seconds']:.0f} | "
                     f"{r['seconds'] / max(1, r['iterations']):.2f} | {r['mean_dice']:.4f} | "
                     f"{r['per_label']['1']:.4f} | {r['per_label']['2']:.4f} | {r['predict_s']:.0f} |")
    lines += ["", f"Whole `nnUNetv2_train` process: {wall:.0f} s ({record['epochs']} epochs of {args.iterations}; "
              f"{record['epochs_planned']} planned after the first). Scored by `focusseg.api.evaluate` in the "
              "original geometry, as `focusseg train`'s final validation. Train command: "
              f"`{shlex.join(['nnUNetv2_train', *train_cmd[1:]])}`.", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        (HERE / "results" / "nnunet_budget.md").write_text(text)
    print(f"final: {final['mean_dice']:.4f} after {final['iterations']} iterations")


if __name__ == "__main__":
    main()
