"""Crash consistency of ``predict`` and ``evaluate`` (issue 12, point 10): SIGKILL at chosen points (just before
or after an output's atomic rename) and at seeded random moments, then rerun: the outputs equal those of an
uninterrupted run byte for byte, and what the killed runs left behind (temporaries) is never seen as a case.

Fast suite: two kills per command. ``-m slow``: twelve kills per command at seeded random delays (evaluate with
two worker processes, the whole process group killed)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from inference.run_helpers import make_run, tree_hashes, visible_files, write_array, write_inputs

from focusseg.metrics.files import label_files

N_CASES = 4
AFF = np.diag([1.5, 1.0, 2.0, 1.0])

KILLER = textwrap.dedent("""
    import os, signal, sys, threading, time

    def kill():
        os.killpg(os.getpgrp(), signal.SIGKILL)  # the script and any worker process it started

    def arm(mode, arg):
        '''hook "K:before|after": die at the K-th atomic rename; delay "S": die S seconds from now.'''
        if mode == "hook":
            k, when = int(arg.split(":")[0]), arg.split(":")[1]
            real, count = os.replace, [0]

            def replace(src, dst):
                count[0] += 1
                if count[0] == k and when == "before":
                    kill()
                real(src, dst)
                if count[0] == k and when == "after":
                    kill()

            os.replace = replace  # focusseg.io.atomic renames through os.replace
        elif mode == "delay":
            t = threading.Timer(float(arg), kill)
            t.daemon = True
            t.start()
""")

PREDICT = KILLER + textwrap.dedent("""
    import torch
    torch.set_num_threads(1)
    from focusseg.inference.folders import predict_folder
    from focusseg.inference.predictor import Predictor

    mode, arg, run, in_dir, out_dir = sys.argv[1:6]
    predictor = Predictor.from_run(run, device="cpu")
    t0 = time.perf_counter()
    arm(mode, arg)
    predict_folder(predictor, in_dir, out_dir, progress=False)
    print(f"seconds {time.perf_counter() - t0:.4f}")
""")

EVALUATE = KILLER + textwrap.dedent("""
    from focusseg.metrics import evaluate_folders

    mode, arg, pred_dir, gt_dir, out_dir, workers = sys.argv[1:7]
    t0 = time.perf_counter()
    arm(mode, arg)
    evaluate_folders(pred_dir, gt_dir, out_dir, workers=int(workers), progress=False)
    print(f"seconds {time.perf_counter() - t0:.4f}")
""")


def _launch(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                         start_new_session=True, env=env)
    assert res.returncode in (0, -signal.SIGKILL), res.stderr[-3000:]
    return res


def _seconds(res: subprocess.CompletedProcess) -> float:
    return float(res.stdout.split("seconds")[-1])


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.exists() else []


@pytest.fixture(scope="module")
def predict_setup(tmp_path_factory):
    """A tiny run, four input cases and the outputs of an uninterrupted ``predict``."""
    from focusseg.inference.folders import predict_folder
    from focusseg.inference.predictor import Predictor

    root = tmp_path_factory.mktemp("crash_predict")
    run = make_run(root / "run")
    ids = write_inputs(root / "in", N_CASES)
    predict_folder(Predictor.from_run(run, device="cpu"), root / "in", root / "straight", progress=False)
    assert visible_files(root / "straight") == [f"{c}.nii.gz" for c in ids]
    return root, run, tree_hashes(root / "in"), tree_hashes(root / "straight")


def _rerun_predict_and_compare(root: Path, run: Path, out: Path, inputs: dict, straight: dict) -> None:
    from focusseg.inference.folders import predict_folder
    from focusseg.inference.predictor import Predictor

    assert set(label_files(out)) <= {f"case{i:03d}" for i in range(N_CASES)}  # temporaries are not cases
    predict_folder(Predictor.from_run(run, device="cpu"), root / "in", out, progress=False)
    assert {k: v for k, v in tree_hashes(out).items() if not k.startswith(".")} == straight
    assert list(label_files(out)) == [f"case{i:03d}" for i in range(N_CASES)]
    assert tree_hashes(root / "in") == inputs  # inputs never modified


def test_predict_killed_twice_then_rerun_equals_uninterrupted(predict_setup):
    root, run, inputs, straight = predict_setup
    out = root / "killed_fast"
    for point in ("2:before", "3:after"):  # case 2's temporary written, not renamed / case 3 renamed, then death
        res = _launch(PREDICT, "hook", point, str(run), str(root / "in"), str(out))
        assert res.returncode == -signal.SIGKILL, f"kill at {point} did not happen"
    assert _temporaries(out), "the kill before a rename should leave a temporary behind"
    assert visible_files(out) == ["case000.nii.gz", "case001.nii.gz", "case002.nii.gz"]
    _rerun_predict_and_compare(root, run, out, inputs, straight)


@pytest.mark.slow
def test_predict_killed_at_random_moments_then_rerun_equals_uninterrupted(predict_setup):
    root, run, inputs, straight = predict_setup
    calibrate = _launch(PREDICT, "none", "-", str(run), str(root / "in"), str(root / "calibrate"))
    duration = _seconds(calibrate)
    rng = random.Random(12)
    out, kills = root / "killed_slow", 0
    for _ in range(12):
        res = _launch(PREDICT, "delay", f"{rng.uniform(0.0, duration):.4f}", str(run), str(root / "in"), str(out))
        kills += res.returncode == -signal.SIGKILL
        assert set(label_files(out)) <= {f"case{i:03d}" for i in range(N_CASES)} if out.exists() else True
    assert kills >= 10, f"only {kills} of 12 runs were killed (predict took {duration:.3f} s)"
    for k in range(1, N_CASES + 1):  # and at every rename, before and after
        for when in ("before", "after"):
            _launch(PREDICT, "hook", f"{k}:{when}", str(run), str(root / "in"), str(out))
    _rerun_predict_and_compare(root, run, out, inputs, straight)


@pytest.fixture(scope="module")
def evaluate_setup(tmp_path_factory):
    """Prediction and reference folders and the outputs of an uninterrupted ``evaluate``."""
    from focusseg.metrics import evaluate_folders

    root = tmp_path_factory.mktemp("crash_evaluate")
    rng = np.random.default_rng(3)
    for sub in ("pred", "gt"):
        (root / sub).mkdir()
    for i in range(N_CASES):
        gt = np.zeros((24, 20, 16), np.uint8)
        o = rng.integers(2, 8, 3)
        gt[o[0]:o[0] + 9, o[1]:o[1] + 7, o[2]:o[2] + 5] = 1
        gt[15:20, 12:17, 9:13] = 2
        pred = np.roll(gt, int(rng.integers(0, 3)), axis=int(rng.integers(0, 3)))
        write_array(root / "pred" / f"c{i}.nii.gz", pred, AFF)
        write_array(root / "gt" / f"c{i}.nii.gz", gt, AFF)
    evaluate_folders(root / "pred", root / "gt", root / "straight", workers=1, progress=False)
    return root, (root / "straight" / "metrics.csv").read_bytes(), (root / "straight" / "summary.json").read_bytes()


def _rerun_evaluate_and_compare(root: Path, out: Path, csv_bytes: bytes, summary_bytes: bytes) -> None:
    from focusseg.metrics import evaluate_folders

    # the killed runs' leftovers in the prediction folder are not cases either
    shutil.copy(root / "pred" / "c0.nii.gz", root / "pred" / ".c0.nii.gz.dead1234.tmp.nii.gz")
    try:
        evaluate_folders(root / "pred", root / "gt", out, workers=1, progress=False)
    finally:
        (root / "pred" / ".c0.nii.gz.dead1234.tmp.nii.gz").unlink()
    assert (out / "metrics.csv").read_bytes() == csv_bytes
    assert (out / "summary.json").read_bytes() == summary_bytes
    assert visible_files(out) == ["dice_violin.png", "metrics.csv", "nsd_violin.png", "summary.json"]


def test_evaluate_killed_twice_then_rerun_equals_uninterrupted(evaluate_setup):
    root, csv_bytes, summary_bytes = evaluate_setup
    out = root / "killed_fast"
    for point in ("1:before", "2:before"):  # metrics.csv's temporary / metrics.csv renamed, summary's temporary
        res = _launch(EVALUATE, "hook", point, str(root / "pred"), str(root / "gt"), str(out), "1")
        assert res.returncode == -signal.SIGKILL, f"kill at {point} did not happen"
    assert _temporaries(out) and visible_files(out) == ["metrics.csv"]
    assert (out / "metrics.csv").read_bytes() == csv_bytes  # whole, never torn
    _rerun_evaluate_and_compare(root, out, csv_bytes, summary_bytes)


@pytest.mark.slow
def test_evaluate_killed_at_random_moments_then_rerun_equals_uninterrupted(evaluate_setup):
    root, csv_bytes, summary_bytes = evaluate_setup
    calibrate = _launch(EVALUATE, "none", "-", str(root / "pred"), str(root / "gt"), str(root / "calibrate"), "2")
    duration = _seconds(calibrate)
    rng = random.Random(34)
    out, kills = root / "killed_slow", 0
    for _ in range(12):
        res = _launch(EVALUATE, "delay", f"{rng.uniform(0.0, duration):.4f}", str(root / "pred"), str(root / "gt"),
                      str(out), "2")
        kills += res.returncode == -signal.SIGKILL
        if (out / "metrics.csv").exists():  # whatever survived is a whole file of the right content
            assert (out / "metrics.csv").read_bytes() == csv_bytes
        if (out / "summary.json").exists():
            assert (out / "summary.json").read_bytes() == summary_bytes
    assert kills >= 10, f"only {kills} of 12 runs were killed (evaluate took {duration:.3f} s)"
    time.sleep(0.2)  # let the killed pools' workers vanish
    _rerun_evaluate_and_compare(root, out, csv_bytes, summary_bytes)
