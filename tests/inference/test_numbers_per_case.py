"""Numbers checked on the way through inference, case by case: a normalised input, logits or probabilities holding
NaN/inf stop that case with one line naming its file, the other cases are predicted, the command exits non-zero;
a prediction that post-processing empties entirely is reported. The check itself is one sum (no mask, no copy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from inference.run_helpers import blob_image, make_run, tiny_plan, tiny_weights, write_array, write_inputs

from focusseg.errors import FocussegError, PartialFailure
from focusseg.inference.folders import predict_folder
from focusseg.inference.predictor import EnsemblePredictor, Predictor, case_named, check_finite, count_nonfinite


def _overflowing_run(run_dir: Path) -> Path:
    """A run whose finite weights overflow: the last layer scaled to +-3e38 (loading accepts them)."""
    plan = tiny_plan()
    weights = tiny_weights(plan)
    last = [k for k, v in weights.items() if v.is_floating_point() and k.endswith("weight") and v.ndim >= 2][-1]
    gen = torch.Generator().manual_seed(0)
    weights[last] = torch.where(torch.rand(weights[last].shape, generator=gen) < 0.5, -3e38, 3e38)
    return make_run(run_dir, plan, state={"plan": plan, "network": weights, "epoch": 1, "best": 0.5,
                                          "iteration": 3})


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_count_nonfinite(kind: str):
    def arr(values):
        a = np.asarray(values, dtype=np.float32)
        return a if kind == "numpy" else torch.from_numpy(a)

    assert count_nonfinite(arr(np.ones((4, 5, 6)))) == 0
    bad = np.ones((4, 5, 6), np.float32)
    bad[0, 0, 0], bad[1, 2, 3], bad[3, 4, 5] = np.nan, np.inf, -np.inf
    assert count_nonfinite(arr(bad)) == 3
    # finite values whose float32 sum overflows: the cheap sum says "maybe", the exact count says none
    assert count_nonfinite(arr(np.full((10,), 3e38))) == 0
    assert count_nonfinite(arr(np.array([3e38, -3e38, 3e38, 3e38]))) == 0
    ints = np.arange(10)
    assert count_nonfinite(ints if kind == "numpy" else torch.from_numpy(ints)) == 0


def test_check_finite_message_and_case_named():
    logits = torch.zeros((3, 4, 4, 4))
    logits[1, 0, 0, :2] = float("nan")
    with pytest.raises(FocussegError) as info, case_named("/data/case007_0000.nii.gz"):
        check_finite(logits, "the network's logits hold", "why")
    text = str(info.value)
    assert text.startswith("/data/case007_0000.nii.gz: the network's logits hold NaN/inf (2 of 192 values)")
    check_finite(torch.ones(3), "x holds", "y")  # finite: nothing
    with pytest.raises(FocussegError) as info, case_named("/data/other.nii.gz"):  # an error naming a file keeps it
        raise FocussegError("own problem", "/data/own.json")
    assert str(info.value) == "/data/own.json: own problem"


def test_overflowing_weights_stop_every_case_with_one_line_each(tmp_path: Path):
    run = _overflowing_run(tmp_path / "run")
    write_inputs(tmp_path / "in", n_cases=2)
    with pytest.raises(PartialFailure) as info:
        predict_folder(Predictor.from_run(run, device="cpu"), tmp_path / "in", tmp_path / "out", progress=False)
    failures = info.value.failures
    assert sorted(f.path.name for f in failures) == ["case000_0000.nii.gz", "case001_0000.nii.gz"]
    assert all("the network's logits hold NaN/inf" in f.problem for f in failures)
    assert info.value.done == 0 and not list((tmp_path / "out").glob("*.nii.gz"))


def test_overflowing_weights_in_the_tta_noise_path_are_caught_as_probabilities(tmp_path: Path):
    run = _overflowing_run(tmp_path / "run")
    write_inputs(tmp_path / "in", n_cases=1)
    predictor = Predictor.from_run(run, device="cpu")
    predictor.plan["inference"].update(noise_passes=1, noise_sigma=0.1)
    with pytest.raises(PartialFailure) as info:
        predict_folder(predictor, tmp_path / "in", tmp_path / "out", progress=False)
    assert "the network's probabilities hold NaN/inf" in info.value.failures[0].problem


def test_one_case_with_a_nonfinite_normalised_input_fails_alone(tmp_path: Path, capsys):
    """Intensities of 3e38 are finite (the reader takes them) but overflow the z-score's mean: that case stops,
    naming its file; the other cases are written; the CLI exits 1 with one line per failed case."""
    from focusseg.cli import main

    run = make_run(tmp_path / "run")
    write_inputs(tmp_path / "in", n_cases=3)
    huge = blob_image(seed=10)
    huge[5:7, 5:7, 5:7] = 3e38
    write_array(tmp_path / "in" / "case001_0000.nii.gz", huge)
    rc = main(["predict", str(run), str(tmp_path / "in"), str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert any("case001_0000.nii.gz: the normalised input (after preprocessing) holds NaN/inf" in line
               for line in errors), err
    assert "1 case(s) failed, 2 done" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["case000.nii.gz", "case002.nii.gz"]


def test_prediction_emptied_by_postprocessing_is_reported(tmp_path: Path, capsys):
    """Post-processing that removes every foreground voxel the network predicted: a warning naming the case."""
    run = make_run(tmp_path / "run")
    write_inputs(tmp_path / "in", n_cases=1)
    member = Predictor.from_run(run, device="cpu")
    seg = EnsemblePredictor([member], postprocessing=[]).segment(
        *_read(tmp_path / "in" / "case000_0000.nii.gz"))
    assert seg.any(), "the seeded network predicts some foreground here"
    # remove components smaller than the whole volume: nothing survives
    steps = [{"name": "remove_small_components", "min_size": int(seg.size) + 1}]
    predict_folder(EnsemblePredictor([member], postprocessing=steps), tmp_path / "in", tmp_path / "out",
                   progress=False)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "case000_0000.nii.gz: the prediction is empty after post-processing" in lines[0], err
    capsys.readouterr()
    predict_folder(EnsemblePredictor([member], postprocessing=[]), tmp_path / "in", tmp_path / "out2",
                   progress=False)
    assert "warning:" not in capsys.readouterr().err


def _read(path: Path):
    from focusseg.io import read_case

    image, _, geo = read_case([path])
    return image, geo
