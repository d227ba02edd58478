"""Hippocampus in the 2D configuration (slow; skipped without ../shared/data): plan, train a few iterations on
slices, validate whole volumes slice by slice and predict a case in its own geometry."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from focusseg_testdata import shared_dataset

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_hippocampus_trains_and_predicts_in_2d(tmp_path: Path):
    from focusseg.inference.folders import predict_folder
    from focusseg.inference.predictor import Predictor
    from focusseg.workflows.train import run_training

    data = shared_dataset("Dataset004_Hippocampus")
    over = {"configuration": "2d", "training": {"max_epochs": 2, "iterations_per_epoch": 5, "val_max_cases": 2}}
    summary = run_training(data, tmp_path / "run", fold=0, overrides=over, progress=False)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["configuration"] == "2d" and len(plan["patch_size"]) == 2 and summary["iterations"] == 10
    assert plan["batch_size"] > 2  # slices: a larger batch than the 3D plan
    assert summary["final_validation"]["mean_dice"] is not None
    case_dir = tmp_path / "in"
    case_dir.mkdir()
    src = sorted((data / "imagesTr").glob("*_0000.nii.gz"))[0]
    (case_dir / src.name).symlink_to(src)
    (out,) = predict_folder(Predictor.from_run(tmp_path / "run", device="cpu"), case_dir, tmp_path / "pred",
                            progress=False)
    pred, ref = nib.load(out), nib.load(src)
    assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
