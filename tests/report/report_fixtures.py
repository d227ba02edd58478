"""A tiny trained run for report tests (imported as ``report_fixtures``; tests/report is on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

TINY = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 3, "iterations_per_epoch": 3, "augmentation": "light", "amp": "none",
                     "class_weighter": {"name": "cbs", "window": 2}},
        "inference": {"mirror_axes": [0]}}


def tiny_run(root: Path, n_cases: int = 10) -> Path:
    """Train a 3-epoch run (CBS class weights) on a tiny generated dataset into ``root/run`` (a few seconds)."""
    from focusseg_testdata import write_tiny_dataset

    from focusseg.workflows.train import run_training

    data = write_tiny_dataset(root / "Dataset001_Tiny", n_cases=n_cases)
    run_training(data, root / "run", fold=0, recipe={"name": "tiny", "plan": json.loads(json.dumps(TINY))},
                 progress=False, device="cpu")
    return root / "run"
