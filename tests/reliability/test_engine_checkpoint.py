"""Checkpoints load without executing code, every recipe's state is weights_only-safe, and resume falls back to
the previous good checkpoint (or says exactly what to do)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from focusseg_testdata import write_tiny_dataset

from focusseg.errors import CheckpointError, MissingFileError, RunFolderError
from focusseg.io import checkpoint as ckpt
from focusseg.workflows.train import run_training

from .conftest import Payload, one_torch_thread

TINY = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 2, "iterations_per_epoch": 2, "augmentation": "light", "amp": "none"},
        "inference": {"mirror_axes": []}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny dataset and a run trained on it for 2 epochs (so it has a latest and a previous checkpoint)."""
    root = tmp_path_factory.mktemp("engine_ckpt")
    data = write_tiny_dataset(root / "D", n_cases=4)
    with one_torch_thread():
        run_training(data, root / "run", fold=0, overrides=TINY, progress=False, final_validation=False)
    return data, root / "run"


def _copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst, symlinks=True)
    return dst


def _malicious(path: Path, marker: Path) -> Path:
    torch.save({"task": Payload(marker), "epoch": 1}, path)
    return path


# ---------------------------------------------------------------------------------------------- safe loading
def test_payload_checkpoint_is_refused_and_runs_nothing(tmp_path: Path):
    marker = tmp_path / "PWNED"
    path = _malicious(tmp_path / "evil.pt", marker)
    with pytest.raises(ckpt.UnsafeCheckpointError) as err:
        ckpt.load_checkpoint(path)
    assert "evil.pt" in str(err.value) and "refusing to load" in str(err.value)
    assert "\n" not in err.value.one_line()
    assert not marker.exists()


def test_resume_refuses_payload_checkpoint_without_falling_back(tmp_path: Path, trained):
    data, run = trained
    run = _copy_run(run, tmp_path / "run")
    marker = tmp_path / "PWNED"
    _malicious(run / "checkpoint_latest.pt", marker)
    assert (run / "checkpoint_previous.pt").is_file()  # a good one exists: still no silent fall-back
    with pytest.raises(ckpt.UnsafeCheckpointError, match="checkpoint_latest.pt"):
        run_training(data, run, fold=0, overrides=TINY, resume=True, progress=False, final_validation=False)
    assert not marker.exists()


def test_resume_cli_refuses_payload(tmp_path: Path, trained, capsys):
    from focusseg.cli import main

    data, run = trained
    run = _copy_run(run, tmp_path / "run")
    marker = tmp_path / "PWNED"
    _malicious(run / "checkpoint_latest.pt", marker)
    code = main(["train", str(data), "--out", str(run), "--resume", "--no-progress", "--no-check"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ") and "checkpoint_latest.pt" in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "not_a_dict"])
def test_damaged_checkpoint_is_one_named_error(tmp_path: Path, trained, damage: str):
    _, run = trained
    path = tmp_path / "c.pt"
    raw = (run / "checkpoint_latest.pt").read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all " * 10)
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError) as err:
        ckpt.load_checkpoint(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_missing_checkpoint(tmp_path: Path):
    with pytest.raises(MissingFileError, match="no such checkpoint"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")


def test_plain_makes_numpy_safe_and_refuses_objects(tmp_path: Path):
    state = {"a": np.arange(3, dtype=np.int64), "b": np.float32(0.5), "c": [np.int64(2), (np.bool_(True),)],
             "d": {"e": Path("/x"), "f": float("nan")}, "g": torch.ones(2)}
    out = ckpt.plain(state)
    assert isinstance(out["a"], torch.Tensor) and out["a"].tolist() == [0, 1, 2]
    assert type(out["b"]) is float and type(out["c"][0]) is int and type(out["c"][1][0]) is bool
    assert out["d"]["e"] == "/x" and out["g"] is state["g"]
    ckpt.save_atomic(state, tmp_path / "s.pt")
    back = torch.load(tmp_path / "s.pt", weights_only=True)
    assert back["a"].tolist() == [0, 1, 2] and np.isnan(back["d"]["f"])
    with pytest.raises(TypeError, match=r"state\['x'\]"):
        ckpt.plain({"x": object()})
    # a module's state dict keeps its _metadata (and is not copied when nothing changes)
    sd = torch.nn.BatchNorm1d(2).state_dict()
    assert ckpt.plain(sd) is sd


# The parts of every recipe: their training state survives weights_only loading and resumes (2 tiny epochs, the
# second one resumed). The tiny network stands in for the recipe's own; everything else is the recipe's.
@pytest.mark.parametrize("name", ["default", "fp-pet", "runtime-freezing", "cycle-flare21", "blob-valdo",
                                  "flare21-fast"])
def test_every_recipe_checkpoint_is_weights_only(tmp_path: Path, name: str):
    from focusseg.recipes import load_recipe

    data = write_tiny_dataset(tmp_path / "D", n_cases=4)
    recipe = load_recipe(name)
    over = json.loads(json.dumps(TINY))
    over["network"]["_replace"] = True
    over["training"]["max_epochs"] = 1
    if name == "flare21-fast":  # keep its deep supervision: a network that has it
        over.pop("network")
    run = tmp_path / "run"
    run_training(data, run, fold=0, recipe=recipe, overrides=over, progress=False, final_validation=False)
    for f in ("checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt"):
        state = torch.load(run / f, map_location="cpu", weights_only=True)  # raises on anything unsafe
        assert "network" in state and "plan" in state
    over["training"]["max_epochs"] = 2
    summary = run_training(data, run, fold=0, recipe=recipe, overrides=over, resume=True, progress=False,
                           final_validation=False)
    assert summary["epochs"] == 2
    state = ckpt.load_checkpoint(run / "checkpoint_latest.pt")
    assert state["epoch"] == 2 and all(k in state for k in ckpt.RESUME_KEYS)
    assert ckpt.load_checkpoint(run / "checkpoint_previous.pt")["epoch"] == 1


# ------------------------------------------------------------------------------------- resume and fall-back
def test_resume_without_checkpoint_is_an_error(tmp_path: Path):
    data = write_tiny_dataset(tmp_path / "D", n_cases=4)
    with pytest.raises(RunFolderError) as err:
        run_training(data, tmp_path / "run", fold=0, overrides=TINY, resume=True, progress=False)
    assert "nothing to resume" in str(err.value) and err.value.hint == "train without --resume to start"
    assert not (tmp_path / "run" / "checkpoint_latest.pt").exists()
    assert err.value.exit_code == 2


def test_latest_rotates_to_previous(tmp_path: Path, trained):
    _, run = trained
    assert ckpt.load_checkpoint(run / "checkpoint_latest.pt")["epoch"] == 2
    assert ckpt.load_checkpoint(run / "checkpoint_previous.pt")["epoch"] == 1


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_resume_falls_back_to_previous(tmp_path: Path, trained, capsys, damage: str):
    data, run = trained
    run = _copy_run(run, tmp_path / "run")
    latest = run / "checkpoint_latest.pt"
    if damage == "truncated":
        latest.write_bytes(latest.read_bytes()[:1000])
    else:
        latest.unlink()
    over = {**TINY, "training": {**TINY["training"], "max_epochs": 2}}
    summary = run_training(data, run, fold=0, overrides=over, resume=True, progress=False, final_validation=False)
    err = capsys.readouterr().err
    warn = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warn) == 1 and "checkpoint_latest.pt" in warn[0] and "checkpoint_previous.pt" in warn[0]
    assert summary["epochs"] == 2  # epoch 1 was trained again from the previous checkpoint
    # identical to the run that was never damaged
    a = ckpt.load_checkpoint(trained[1] / "checkpoint_final.pt")["network"]
    b = ckpt.load_checkpoint(run / "checkpoint_final.pt")["network"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    from focusseg.runfolder import read_log

    assert [r["epoch"] for r in read_log(run)] == [0, 1]


def test_resume_with_both_checkpoints_bad_says_what_to_do(tmp_path: Path, trained):
    data, run = trained
    run = _copy_run(run, tmp_path / "run")
    for name in ("checkpoint_latest.pt", "checkpoint_previous.pt"):
        p = run / name
        p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(CheckpointError) as err:
        run_training(data, run, fold=0, overrides=TINY, resume=True, progress=False, final_validation=False)
    assert "both unusable" in str(err.value) and "--overwrite" in err.value.hint


def test_resume_with_bad_latest_and_no_previous(tmp_path: Path, trained):
    data, run = trained
    run = _copy_run(run, tmp_path / "run")
    (run / "checkpoint_previous.pt").unlink()
    (run / "checkpoint_latest.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        run_training(data, run, fold=0, overrides=TINY, resume=True, progress=False, final_validation=False)
    assert "checkpoint_latest.pt" in str(err.value) and "no checkpoint_previous.pt" in str(err.value)
    assert "--overwrite" in err.value.hint


def test_rng_state_restored_from_cpu_tensors():
    g = {"sample": torch.Generator().manual_seed(3)}
    state = ckpt.plain(ckpt.rng_state(g))
    a = torch.rand(3, generator=g["sample"]), torch.rand(2)
    ckpt.load_rng_state({k: v.clone() for k, v in state.items() if k != "cuda"}, g)
    b = torch.rand(3, generator=g["sample"]), torch.rand(2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
