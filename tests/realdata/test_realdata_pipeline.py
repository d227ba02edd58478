"""Real data end to end (slow; skipped without ../shared/data): check, train briefly, predict, geometry kept."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from focusseg_testdata import shared_dataset

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

BRIEF = {"training": {"max_epochs": 1, "iterations_per_epoch": 2, "augmentation": "light", "val_max_cases": 1},
         "inference": {"mirror_axes": []}}


def test_check_real_datasets_are_clean():
    from focusseg.data.check import check_dataset

    for name in ["Dataset101_MSLesionLjubljana", "Dataset105_SpleenCase8", "Dataset102_BraTS2015Subset"]:
        assert check_dataset(shared_dataset(name)) == [], name


def test_ms_lesion_four_channels_train_and_predict(tmp_path: Path):
    from focusseg.inference.folders import predict_folder
    from focusseg.inference.predictor import Predictor
    from focusseg.workflows.train import run_training

    data = shared_dataset("Dataset101_MSLesionLjubljana")
    over = {**BRIEF, "patch_size": [64, 64, 64], "batch_size": 2}
    summary = run_training(data, tmp_path / "run", fold=0, overrides=over, progress=False)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert len(plan["channel_names"]) == 4 and summary["iterations"] == 2
    case_dir = tmp_path / "in"
    case_dir.mkdir()
    for p in sorted((data / "imagesTr").glob("patient07_*.nii.gz")):
        (case_dir / p.name).symlink_to(p)
    (out,) = predict_folder(Predictor.from_run(tmp_path / "run", device="cpu"), case_dir, tmp_path / "pred",
                            progress=False)
    ref, pred = nib.load(data / "imagesTr" / "patient07_0000.nii.gz"), nib.load(out)
    assert pred.shape == ref.shape == (182, 218, 182)
    np.testing.assert_allclose(pred.affine, ref.affine)


def test_hippocampus_predict_keeps_geometry(tmp_path: Path):
    from focusseg.inference.folders import predict_folder
    from focusseg.inference.predictor import Predictor
    from focusseg.workflows.train import run_training

    data = shared_dataset("Dataset004_Hippocampus")
    run_training(data, tmp_path / "run", fold=0, overrides=BRIEF, progress=False, final_validation=False)
    case_dir = tmp_path / "in"
    case_dir.mkdir()
    images = sorted((data / "imagesTr").glob("*_0000.nii.gz"))[:5]
    for p in images:
        (case_dir / p.name).symlink_to(p)
    written = predict_folder(Predictor.from_run(tmp_path / "run", device="cpu"), case_dir, tmp_path / "pred",
                             progress=False)
    assert len(written) == 5
    for p in images:
        ref = nib.load(p)
        pred = nib.load(tmp_path / "pred" / p.name.replace("_0000", ""))
        assert pred.shape == ref.shape
        np.testing.assert_allclose(pred.affine, ref.affine)
