"""Train a fold, predict a NIfTI and evaluate, through focusseg's public API only.

    python examples/api_quickstart.py DATASET_DIR WORK_DIR [--tiny]

DATASET_DIR is an nnU-Net v2 raw dataset (dataset.json, imagesTr/, labelsTr/); WORK_DIR receives the run folder,
the predictions and the metrics. ``--tiny`` trains a few iterations of a small network (a smoke test).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import focusseg

TINY = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 2, "iterations_per_epoch": 2, "augmentation": "light", "amp": "none"},
        "inference": {"mirror_axes": []}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--tiny", action="store_true", help="a few iterations of a small network")
    parser.add_argument("--time-budget", type=float, default=None, help="minutes of training")
    args = parser.parse_args()

    report = focusseg.check(args.data)
    report.raise_for_problems()  # one line per problem, each naming its file

    run = focusseg.train(args.data, args.work / "run", fold=0, overrides=TINY if args.tiny else None,
                         time_budget=args.time_budget, device="auto")
    print(f"trained {run.path}: best validation Dice {run.summary['best_val_mean_dice']}")

    predictor = focusseg.Predictor.load(run.path)
    images = sorted((args.data / "imagesTr").glob("*_0000.nii.gz"))
    labels = predictor.predict(images[0])  # one NIfTI file -> a label array with its shape
    print(f"{images[0].name}: labels {sorted(set(labels.ravel().tolist()))}, shape {labels.shape}")

    preds = args.work / "predictions"
    images_dir = args.data / "imagesTr"
    predictor.predict_folder(images_dir, preds)
    summary = focusseg.evaluate(preds, args.data / "labelsTr", args.work / "metrics")
    print(json.dumps(summary.get("overall", summary), indent=2, default=str))


if __name__ == "__main__":
    main()
