"""A run folder remembers its fold and plan, is locked while a run writes into it, is cleaned only of
focusseg's own products by ``overwrite``, accepts only safe changes on ``resume``, and holds only this run's
validation cases. Training checks the dataset and the fold first."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from focusseg_testdata import write_tiny_dataset

from focusseg.errors import CheckFailed, DatasetError, RunFolderError, UsageError
from focusseg.io import checkpoint as ckpt
from focusseg.runfolder import plan_hash, read_log, run_lock
from focusseg.workflows.train import run_training

from .conftest import one_torch_thread

TINY = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 2, "iterations_per_epoch": 2, "augmentation": "light", "amp": "none"},
        "inference": {"mirror_axes": []}}


def _with(**training) -> dict:
    return {**TINY, "training": {**TINY["training"], **training}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny dataset (5 cases) and a fold-0 run on it, with its final validation."""
    root = tmp_path_factory.mktemp("engine_runfolder")
    data = write_tiny_dataset(root / "D", n_cases=5)
    with one_torch_thread():
        run_training(data, root / "run", fold=0, overrides=TINY, progress=False)
    return data, root / "run"


@pytest.fixture
def run_copy(tmp_path: Path, trained) -> tuple[Path, Path]:
    data, run = trained
    dst = tmp_path / "run"
    shutil.copytree(run, dst, symlinks=True)
    return data, dst


# ------------------------------------------------------------------------------------------- run memory
def test_run_json_records_fold_plan_data_version(trained):
    from focusseg import __version__

    data, run = trained
    info = json.loads((run / "run.json").read_text())
    plan = json.loads((run / "plan.json").read_text())
    assert info["fold"] == "0" and info["plan_sha256"] == plan_hash(plan)
    assert info["data_dir"] == str(data.resolve()) and info["focusseg_version"] == __version__


def test_retrain_into_trained_folder_is_refused(run_copy):
    data, run = run_copy
    before = (run / "checkpoint_latest.pt").read_bytes()
    with pytest.raises(RunFolderError) as err:
        run_training(data, run, fold=0, overrides=TINY, progress=False)
    assert "already holds a trained run" in str(err.value) and "--resume" in err.value.hint
    assert "--overwrite" in err.value.hint
    assert (run / "checkpoint_latest.pt").read_bytes() == before


def test_folder_of_another_fold_is_refused(run_copy):
    data, run = run_copy
    for resume in (False, True):
        with pytest.raises(RunFolderError) as err:
            run_training(data, run, fold=1, overrides=TINY, progress=False, resume=resume)
        assert "made for fold 0, not fold 1" in str(err.value)
        assert "another --out" in err.value.hint


def test_folder_of_another_plan_is_refused(run_copy):
    data, run = run_copy
    for name in ("checkpoint_latest.pt", "checkpoint_previous.pt"):  # as if killed before its first epoch
        (run / name).unlink()
    with pytest.raises(RunFolderError) as err:
        run_training(data, run, fold=0, overrides={**TINY, "batch_size": 3}, progress=False)
    assert "made for another plan: batch_size was 2, now 3" in str(err.value)
    # the same plan again is fine: the run starts (and ends) normally
    summary = run_training(data, run, fold=0, overrides=TINY, progress=False, final_validation=False)
    assert summary["iterations"] == 4


def test_overwrite_removes_only_focusseg_products(run_copy, tmp_path: Path):
    data, run = run_copy
    (run / "notes.txt").write_text("mine")
    (run / "mine").mkdir()
    (run / "mine" / "plan.json").write_text("{}")  # a user's file of the same name, one folder down
    (run / ".checkpoint_latest.pt.abc123.tmp.pt").write_bytes(b"x")  # a killed write's temporary
    outside = tmp_path / "store"
    shutil.copytree(run / "preprocessed", outside)
    n_outside = len(list(outside.rglob("*")))
    summary = run_training(data, run, fold=1, overrides=TINY, progress=False, overwrite=True,
                           preprocessed_dir=outside)
    assert (run / "notes.txt").read_text() == "mine" and (run / "mine" / "plan.json").read_text() == "{}"
    assert not (run / ".checkpoint_latest.pt.abc123.tmp.pt").exists()
    assert not (run / "preprocessed").exists()  # the old in-folder store went; this run used the outside one
    assert len(list(outside.rglob("*"))) >= n_outside  # a store outside the run folder is never removed
    assert json.loads((run / "run.json").read_text())["fold"] == "1" and summary["fold"] == "1"
    assert [r["epoch"] for r in read_log(run)] == [0, 1]  # a fresh log, not the old one continued


def test_resume_and_overwrite_contradict(run_copy):
    data, run = run_copy
    with pytest.raises(UsageError, match="contradict"):
        run_training(data, run, fold=0, overrides=TINY, resume=True, overwrite=True, progress=False)


def test_validation_holds_only_this_runs_cases(run_copy):
    data, run = run_copy
    pred, ref = run / "validation" / "predictions", run / "validation" / "reference"
    val = json.loads((run / "splits_final.json").read_text())[0]["val"]
    assert sorted(p.name for p in pred.iterdir()) == sorted(f"{c}.nii.gz" for c in val)
    shutil.copy(pred / f"{val[0]}.nii.gz", pred / "case999.nii.gz")  # a stale case of another fold
    (ref / "case999.nii.gz").symlink_to((data / "labelsTr" / "case000.nii.gz").resolve())
    run_training(data, run, fold=0, overrides=_with(max_epochs=3), resume=True, progress=False)
    assert sorted(p.name for p in pred.iterdir()) == sorted(f"{c}.nii.gz" for c in val)
    assert sorted(p.name for p in ref.iterdir()) == sorted(f"{c}.nii.gz" for c in val)
    cases = {line.split(",")[0] for line in (run / "validation" / "metrics.csv").read_text().splitlines()[1:]}
    assert cases == set(val)


# ------------------------------------------------------------------------------------------------- lock
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from focusseg.workflows.train import run_lock
    with run_lock(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_lock_refuses_a_second_process_and_names_it(run_copy):
    data, run = run_copy
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError) as err:
            run_training(data, run, fold=0, overrides=_with(max_epochs=3), resume=True, progress=False)
        assert f"in use by PID {child.pid} on {socket.gethostname()}" in str(err.value)
        assert ckpt.load_checkpoint(run / "checkpoint_latest.pt")["epoch"] == 2  # untouched
    finally:
        child.kill()
        child.wait()
    # the lock dies with its holder: the run can go on now
    summary = run_training(data, run, fold=0, overrides=_with(max_epochs=3), resume=True, progress=False,
                           final_validation=False)
    assert summary["epochs"] == 3


def test_lock_released_after_an_error(run_copy):
    data, run = run_copy
    with pytest.raises(RunFolderError):
        run_training(data, run, fold=0, overrides=TINY, progress=False)  # refused inside the lock
    with run_lock(run):  # would raise if the failed call still held it
        assert (run / ".lock").read_text().split()[0] == str(os.getpid())
    assert (run / ".lock").read_text() == ""


# -------------------------------------------------------------------------------------- check before work
def test_train_checks_the_dataset_first(tmp_path: Path):
    data = write_tiny_dataset(tmp_path / "D", n_cases=4)
    p = data / "labelsTr" / "case002.nii.gz"
    img = nib.load(p)
    lab = np.asarray(img.dataobj).copy()
    lab[lab == 1] = 9  # undeclared
    nib.save(nib.Nifti1Image(lab, img.affine), p)
    with pytest.raises(CheckFailed) as err:
        run_training(data, tmp_path / "run", fold=0, overrides=TINY, progress=False)
    assert any("case002.nii.gz" in str(pr) for pr in err.value.problems)
    assert not (tmp_path / "run" / "plan.json").exists() and not (tmp_path / "run" / "preprocessed").exists()


def test_no_check_skips_it(tmp_path: Path, monkeypatch):
    import focusseg.data.check as check

    def boom(*a, **k):
        raise AssertionError("check_dataset ran although check=False")

    monkeypatch.setattr(check, "check_dataset", boom)
    data = write_tiny_dataset(tmp_path / "D", n_cases=4)
    summary = run_training(data, tmp_path / "run", fold=0, overrides=_with(max_epochs=1), progress=False,
                           check=False, final_validation=False)
    assert summary["epochs"] == 1


@pytest.mark.parametrize("fold", ["x", "-1", "1.5"])
def test_malformed_fold(tmp_path: Path, fold: str):
    data = write_tiny_dataset(tmp_path / "D", n_cases=4)
    with pytest.raises(UsageError, match="neither a fold number"):
        run_training(data, tmp_path / "run", fold=fold, overrides=TINY, progress=False)


def test_fold_out_of_range_names_the_split_file(tmp_path: Path):
    data = write_tiny_dataset(tmp_path / "D", n_cases=4)
    with pytest.raises(UsageError) as err:
        run_training(data, tmp_path / "run", fold=7, overrides=TINY, progress=False)
    assert "splits_final.json" in str(err.value) and "fold 7 does not exist" in str(err.value)
    assert "4 fold(s)" in str(err.value)
    assert not (tmp_path / "run" / "checkpoint_latest.pt").exists()


def test_split_naming_a_missing_case(tmp_path: Path):
    data = write_tiny_dataset(tmp_path / "D", n_cases=4)
    (data / "splits_final.json").write_text(json.dumps([{"train": ["case000", "case404"], "val": ["case001"]}]))
    with pytest.raises(DatasetError) as err:
        run_training(data, tmp_path / "run", fold=0, overrides=TINY, progress=False)
    assert str(err.value).startswith(str(data / "splits_final.json")) and "case404" in str(err.value)


# ------------------------------------------------------------------------------------------------ resume
def test_resume_applies_and_logs_safe_changes(run_copy):
    data, run = run_copy
    over = {**_with(max_epochs=3, val_every=2), "inference": {"mirror_axes": [], "overlap": 0.25}}
    summary = run_training(data, run, fold=0, overrides=over, resume=True, progress=False, time_budget_min=30,
                           final_validation=False)
    assert summary["epochs"] == 3 and summary["iterations"] == 6
    plan = json.loads((run / "plan.json").read_text())
    assert plan["training"]["max_epochs"] == 3 and plan["inference"]["overlap"] == 0.25
    assert json.loads((run / "run.json").read_text())["plan_sha256"] == plan_hash(plan)
    assert ckpt.load_checkpoint(run / "checkpoint_best.pt")["plan"]["inference"]["overlap"] == 0.25
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    events = [x for x in lines if x.get("event") == "resume"]
    assert len(events) == 1 and events[0]["changes"] == {
        "inference.overlap": {"from": 0.5, "to": 0.25}, "time_budget_min": {"from": None, "to": 30},
        "training.max_epochs": {"from": 2, "to": 3}, "training.val_every": {"from": 1, "to": 2}}
    assert [r["epoch"] for r in read_log(run)] == [0, 1, 2]
    assert lines.index(events[0]) == 2  # after the epochs it followed


@pytest.mark.parametrize("over, key", [
    ({"training": {"optimizer": {"lr": 0.5}}}, "training.optimizer.lr"),
    ({"patch_size": [32, 32, 32]}, "patch_size"),
    ({"training": {"iterations_per_epoch": 5}}, "training.iterations_per_epoch"),
])
def test_resume_refuses_unsafe_changes(run_copy, over: dict, key: str):
    from focusseg.planning.planner import deep_merge

    data, run = run_copy
    plan_before = (run / "plan.json").read_text()
    with pytest.raises(UsageError) as err:
        run_training(data, run, fold=0, overrides=deep_merge(TINY, over), resume=True, progress=False)
    msg = str(err.value)
    assert msg.startswith(str(run / "plan.json")) and f"--resume cannot change {key}: stored " in msg
    assert "requested" in msg and "safe on resume" in err.value.hint
    assert (run / "plan.json").read_text() == plan_before
    assert ckpt.load_checkpoint(run / "checkpoint_latest.pt")["epoch"] == 2


def test_resume_with_another_recipe_is_refused(run_copy):
    from focusseg.recipes import load_recipe

    data, run = run_copy
    with pytest.raises(UsageError, match="--resume cannot change"):
        run_training(data, run, fold=0, recipe=load_recipe("runtime-freezing"), overrides=TINY, resume=True,
                     progress=False)


def test_resume_with_default_recipe_keeps_stored_plan(run_copy):
    from focusseg.recipes import load_recipe

    data, run = run_copy
    plan_before = (run / "plan.json").read_text()
    t0 = time.time()
    summary = run_training(data, run, fold=0, recipe=load_recipe("default"), resume=True, progress=False,
                           final_validation=False)
    assert summary["epochs"] == 2 and time.time() - t0 < 30
    assert (run / "plan.json").read_text() == plan_before
    assert not any(x.get("event") for x in map(json.loads, (run / "log.jsonl").read_text().splitlines()))
