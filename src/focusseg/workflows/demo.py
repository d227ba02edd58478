"""``focusseg demo``: the whole pipeline on data the package makes itself, in a few minutes on 2 CPU cores.

A synthetic dataset of 3D phantoms (a large organ, small organs and tiny lesions, noise and bias field, so
class imbalance is real) -> check -> plan -> preprocess -> train (time-budgeted) -> predict the test images ->
evaluate -> print where the run folder, the metrics and the training curve are.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from focusseg.data.check import check_dataset
from focusseg.inference.folders import predict_folder
from focusseg.inference.predictor import Predictor
from focusseg.metrics import evaluate_folders
from focusseg.synth import generate_phantom_dataset
from focusseg.workflows.train import run_training

DEMO_OVERRIDES = {
    "training": {"iterations_per_epoch": 40, "val_every": 2, "augmentation": "light", "max_epochs": 100,
                 "foreground_oversampling": 0.5},
    "inference": {"mirror_axes": [0]},
}


def run_demo(out: Path, minutes: float = 2.5, console: Console | None = None, n_cases: int = 24,
             progress: bool = True) -> dict:
    console = console or Console()
    t0 = time.perf_counter()
    out = Path(out)
    data = out / "Dataset900_Phantoms"
    if not (data / "dataset.json").is_file():
        generate_phantom_dataset(data, n_cases=n_cases, seed=0, n_test=4)
    console.print(f"[bold]1/5 data[/bold]   {data}")
    problems = check_dataset(data)
    if problems:
        raise RuntimeError("the generated demo dataset has problems:\n" + "\n".join(map(str, problems)))
    console.print("[bold]2/5 check[/bold]  no problems")
    run_dir = out / "run"
    summary = run_training(data, run_dir, fold=0, overrides=DEMO_OVERRIDES, time_budget_min=minutes,
                           device="cpu", progress=progress, resume=(run_dir / "checkpoint_latest.pt").is_file())
    console.print(f"[bold]3/5 train[/bold]  best validation Dice {summary['best_val_mean_dice']:.3f} "
                  f"after {summary['iterations']} iterations")
    pred_dir = out / "predictions"
    predict_folder(Predictor.from_run(run_dir, device="cpu"), data / "imagesTs", pred_dir, progress=progress)
    console.print(f"[bold]4/5 predict[/bold] {pred_dir}")
    ev = evaluate_folders(pred_dir, data / "labelsTs", out / "evaluation", progress=progress)
    console.print(f"[bold]5/5 evaluate[/bold] {out / 'evaluation' / 'metrics.csv'}")
    per_label = {k: v["dice"]["mean"] for k, v in ev.get("per_label", {}).items() if "dice" in v}
    console.print(f"test Dice per label: {per_label}")
    console.print(f"run folder:      {run_dir}\nmetrics:         {out / 'evaluation' / 'metrics.csv'}\n"
                  f"summary:         {out / 'evaluation' / 'summary.json'}\n"
                  f"training curve:  {run_dir / 'training_curve.png'}\n"
                  f"total time:      {time.perf_counter() - t0:.0f} s")
    return {"train": summary, "evaluation": ev}
