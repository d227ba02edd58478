"""End to end in the 2D configuration on a tiny dataset: `train --configuration 2d` -> predict -> evaluate through
the CLI, and cycle training (three 2D networks) through ``run_training``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from focusseg_testdata import write_tiny_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_2D = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
           "batch_size": 8, "training": {"max_epochs": 2, "iterations_per_epoch": 3, "amp": "none",
                                         "val_full_every": 1, "loader": {"workers": 1}}}


def test_cli_train_predict_evaluate_in_2d(tmp_path: Path):
    from typer.testing import CliRunner

    from focusseg.cli import app

    data = write_tiny_dataset(tmp_path / "D", n_cases=4, with_test=True)
    (tmp_path / "tiny.json").write_text(json.dumps({"name": "tiny2d", "plan": TINY_2D}))
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "run"), "--configuration", "2d",
                              "--recipe", str(tmp_path / "tiny.json"), "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["configuration"] == "2d" and len(plan["patch_size"]) == 2
    assert plan["slice_axis"] == 2  # the tiny dataset's spacing (1.5, 1, 2): z is the coarsest
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if "train_loss" in r]
    assert len(epochs) == 2 and all(np.isfinite(r["train_loss"]) for r in epochs)
    assert any("val_volume_dice" in r for r in epochs)  # whole-volume validation ran slice by slice
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["iterations"] == 6 and summary["final_validation"]["mean_dice"] is not None
    res = runner.invoke(app, ["predict", str(tmp_path / "run"), str(data / "imagesTs"), str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    for img in sorted((data / "imagesTs").glob("*_0000.nii.gz")):
        case = img.name[: -len("_0000.nii.gz")]
        src, out = nib.load(img), nib.load(tmp_path / "pred" / f"{case}.nii.gz")
        assert out.shape == src.shape and np.allclose(out.affine, src.affine)
        assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2}
    res = runner.invoke(app, ["evaluate", str(tmp_path / "pred"), str(data / "labelsTs"), "--out",
                              str(tmp_path / "eval")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())


def test_cli_refuses_an_unknown_configuration(tmp_path: Path):
    from typer.testing import CliRunner

    from focusseg.cli import app

    data = write_tiny_dataset(tmp_path / "D", n_cases=2)
    from focusseg.errors import UsageError

    res = CliRunner().invoke(app, ["plan", str(data), "--configuration", "2.5d", "--no-check"])
    assert isinstance(res.exception, UsageError) and "--configuration must be one of 3d, 2d" in str(res.exception)


def test_cycle_training_on_2d_batches(tmp_path: Path):
    from focusseg.recipes import load_recipe
    from focusseg.workflows.train import run_training

    data = write_tiny_dataset(tmp_path / "D", n_cases=4)
    recipe = load_recipe("cycle-flare21")
    over = {**TINY_2D, "configuration": "2d", "training": {**TINY_2D["training"], "val_full_every": 0}}
    summary = run_training(data, tmp_path / "run", fold=0, recipe=recipe, overrides=over, progress=False,
                           final_validation=False, device="cpu")
    assert summary["iterations"] == 6
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["configuration"] == "2d" and plan["training"]["task"]["name"] == "cycle"
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in log if "train_loss" in r]
    assert len(losses) == 2 and all(np.isfinite(v) for v in losses)
