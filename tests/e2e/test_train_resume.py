"""End to end on a tiny dataset: train -> predict (geometry kept) -> evaluate, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from focusseg_testdata import write_tiny_dataset

TINY = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 4, "iterations_per_epoch": 3, "augmentation": "light", "amp": "none"},
        "inference": {"mirror_axes": [0]}}

SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from focusseg.workflows.train import run_training
    data, run, kill_at, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"

    class Killer:
        def before_batch(self, trainer, requests):
            if trainer.iteration == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    run_training(data, run, fold=0, overrides=json.loads(sys.argv[5]), resume=resume, progress=False,
                 final_validation=False, callbacks=[Killer()])
""")


def _run(data: Path, run: Path, kill_at: int = -1, resume: bool = False) -> int:
    cmd = [sys.executable, "-c", SCRIPT, str(data), str(run), str(kill_at), "1" if resume else "0", json.dumps(TINY)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300).returncode


def test_sigkill_and_resume_gives_identical_weights(tmp_path: Path):
    data = write_tiny_dataset(tmp_path / "D", n_cases=5)
    assert _run(data, tmp_path / "straight") == 0
    rc = _run(data, tmp_path / "killed", kill_at=7)  # inside epoch 2: its partial work is lost, as in a real crash
    assert rc == -9, f"the run was expected to die by SIGKILL, exit code {rc}"
    state = torch.load(tmp_path / "killed" / "checkpoint_latest.pt", weights_only=True)
    assert state["epoch"] == 2 and state["iteration"] == 6
    assert _run(data, tmp_path / "killed", resume=True) == 0
    a = torch.load(tmp_path / "straight" / "checkpoint_final.pt", weights_only=True)["network"]
    b = torch.load(tmp_path / "killed" / "checkpoint_final.pt", weights_only=True)["network"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    from focusseg.runfolder import read_log

    assert [r["epoch"] for r in read_log(tmp_path / "killed")] == [0, 1, 2, 3]


def test_train_predict_evaluate_keeps_geometry(tmp_path: Path):
    from typer.testing import CliRunner

    from focusseg.cli import app

    data = write_tiny_dataset(tmp_path / "D", n_cases=5, with_test=True)
    (tmp_path / "tiny.json").write_text(json.dumps({"name": "tiny", "plan": TINY}))
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "run"), "--recipe",
                              str(tmp_path / "tiny.json"), "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["iterations"] == 12 and summary["final_validation"]["mean_dice"] is not None
    # post-processing was chosen on the validation predictions (every trial recorded) and is reported
    pp = json.loads((tmp_path / "run" / "postprocessing.json").read_text())
    assert summary["postprocessing"]["steps"] == pp["steps"] and len(pp["trials"]) == 2 * 5
    assert all(pp["dice_after"][k] >= pp["dice_before"][k] for k in pp["dice_before"])
    res = runner.invoke(app, ["postprocess", str(tmp_path / "run")])
    assert res.exit_code == 0 and "chosen:" in res.output, res.output
    res = runner.invoke(app, ["predict", str(tmp_path / "run"), str(data / "imagesTs"), str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    for p in sorted((data / "imagesTs").glob("*_0000.nii.gz")):
        case = p.name.replace("_0000.nii.gz", "")
        ref, out = nib.load(p), nib.load(tmp_path / "pred" / f"{case}.nii.gz")
        assert out.shape == ref.shape
        np.testing.assert_allclose(out.affine, ref.affine)
        assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2}
    # a run's post-processing is applied by predict (and skipped with --no-postprocess)
    steps = [{"name": "erode", "labels": [1], "iterations": 1}]
    (tmp_path / "run" / "postprocessing.json").write_text(json.dumps({**pp, "steps": steps}))
    for flag, out_dir in (("--postprocess", "pred_pp"), ("--no-postprocess", "pred_raw")):
        res = runner.invoke(app, ["predict", str(tmp_path / "run"), str(data / "imagesTs"), str(tmp_path / out_dir),
                                  flag])
        assert res.exit_code == 0, res.output
    from focusseg.inference.postprocess import apply_postprocessing

    for f in sorted((tmp_path / "pred_raw").glob("*.nii.gz")):
        raw = np.asarray(nib.load(f).dataobj)
        np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "pred" / f.name).dataobj),
                                      apply_postprocessing(raw, pp["steps"]))  # the steps chosen in training
        np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "pred_pp" / f.name).dataobj),
                                      apply_postprocessing(raw, steps))
    res = runner.invoke(app, ["evaluate", str(tmp_path / "pred"), str(data / "labelsTs"), "--out",
                              str(tmp_path / "eval"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    header = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("case,label,dice")


def test_time_budget_stops_inside_an_epoch_and_keeps_best(tmp_path: Path):
    from focusseg.workflows.train import run_training

    data = write_tiny_dataset(tmp_path / "D", n_cases=4)
    over = {**TINY, "training": {**TINY["training"], "max_epochs": 50, "iterations_per_epoch": 10_000}}
    summary = run_training(data, tmp_path / "run", fold=0, overrides=over, time_budget_min=1e-4, progress=False,
                           final_validation=False)
    assert 1 <= summary["iterations"] < 10_000 and summary["epochs"] == 1
    assert (tmp_path / "run" / "checkpoint_best.pt").is_file()
    from focusseg.runfolder import read_log

    assert "val_mean_dice" in read_log(tmp_path / "run")[-1]


def test_weighted_ensemble_cli_with_uncertainty(tmp_path: Path):
    from typer.testing import CliRunner

    from focusseg.cli import app
    from focusseg.workflows.train import run_training

    data = write_tiny_dataset(tmp_path / "D", n_cases=4, with_test=True)
    other = {**TINY, "network": {"name": "unet", "channels": [8, 16], "strides": [2], "num_res_units": 0}}
    for name, over in [("a", TINY), ("b", other)]:
        run_training(data, tmp_path / name, fold=0, overrides=over, progress=False, final_validation=False)
    runner = CliRunner()
    args = ["predict", str(tmp_path / "a"), str(data / "imagesTs")]
    res = runner.invoke(app, [*args, str(tmp_path / "ens"), "--ensemble", str(tmp_path / "b"), "--weights",
                              "0.7,0.3", "--uncertainty", "entropy", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for p in sorted((data / "imagesTs").glob("*_0000.nii.gz")):
        case = p.name.replace("_0000.nii.gz", "")
        ref = nib.load(p)
        seg = nib.load(tmp_path / "ens" / f"{case}.nii.gz")
        unc = nib.load(tmp_path / "ens" / f"{case}_uncertainty.nii.gz")
        assert seg.shape == unc.shape == ref.shape
        np.testing.assert_allclose(unc.affine, ref.affine)
        u = np.asarray(unc.dataobj)
        assert u.min() >= 0 and u.max() <= 1 + 1e-6 and u.max() > 0
    # an ensemble of a run with itself predicts exactly what the run predicts alone
    assert runner.invoke(app, [*args, str(tmp_path / "single"), "--device", "cpu"]).exit_code == 0
    assert runner.invoke(app, [*args, str(tmp_path / "twice"), "--ensemble", str(tmp_path / "a"),
                               "--device", "cpu"]).exit_code == 0
    for p in sorted((tmp_path / "single").glob("*.nii.gz")):
        np.testing.assert_array_equal(np.asarray(nib.load(p).dataobj),
                                      np.asarray(nib.load(tmp_path / "twice" / p.name).dataobj))
