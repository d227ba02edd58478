"""Crash consistency of ``train``: SIGKILL at any point (inside an epoch, in the middle of writing
``checkpoint_latest.pt``, right after an epoch's checkpoint and log line), then ``resume``: the final weights and
the log equal an uninterrupted run's (CPU, one thread)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from focusseg_testdata import write_tiny_dataset

TINY = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 4, "iterations_per_epoch": 3, "augmentation": "light", "amp": "none"},
        "inference": {"mirror_axes": [0]}}

# kill = "none" | "batch:N" (before iteration N) | "epoch_end:E" (after epoch E's checkpoint and log line) |
#        "ckpt_write:E" (half-way through writing the latest checkpoint at the end of epoch E, after the old one
#        was renamed to checkpoint_previous.pt)
SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import focusseg.io.checkpoint as ck
    from focusseg.workflows.train import run_training
    data, run, kill, resume, over = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", sys.argv[5]
    kind, _, at = kill.partition(":")
    at = int(at or -1)

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class Killer:
        def before_batch(self, trainer, requests):
            if kind == "batch" and trainer.iteration == at:
                die()

        def on_epoch_end(self, trainer, record):
            if kind == "epoch_end" and record["epoch"] == at:
                die()

    if kind == "ckpt_write":
        real = ck.save_atomic

        def torn(obj, path):
            if Path(path).name == ck.LATEST and obj["epoch"] == at + 1:
                import io
                buf = io.BytesIO()
                torch.save(ck.plain(obj), buf)
                blob = buf.getvalue()
                (Path(path).parent / ".checkpoint_latest.pt.killed.tmp.pt").write_bytes(blob[: len(blob) // 2])
                die()
            return real(obj, path)

        ck.save_atomic = torn
    run_training(data, run, fold=0, overrides=json.loads(over), resume=resume, progress=False,
                 final_validation=False, callbacks=[Killer()])
""")


def _run(data: Path, run: Path, kill: str = "none", resume: bool = False, over: dict = TINY) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", SCRIPT, str(data), str(run), kill, "1" if resume else "0", json.dumps(over)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    return res.returncode, res.stderr


def _resumable(run: Path) -> bool:
    return (run / "checkpoint_latest.pt").is_file() or (run / "checkpoint_previous.pt").is_file()


def _kill_and_resume(data: Path, run: Path, kills: list[str], over: dict = TINY) -> None:
    for kill in kills:
        rc, err = _run(data, run, kill, resume=_resumable(run), over=over)
        assert rc == -9, f"expected SIGKILL at {kill}, got exit code {rc}: {err[-2000:]}"
    rc, err = _run(data, run, resume=True, over=over)
    assert rc == 0, err[-2000:]


def _assert_same_run(a: Path, b: Path) -> None:
    wa = torch.load(a / "checkpoint_final.pt", weights_only=True)["network"]
    wb = torch.load(b / "checkpoint_final.pt", weights_only=True)["network"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs after kills and resume"
    from focusseg.runfolder import read_log

    la, lb = read_log(a), read_log(b)
    keys = ("epoch", "iteration", "train_loss", "val_mean_dice", "lr", "nonfinite_steps")
    assert [[r.get(k) for k in keys] for r in la] == [[r.get(k) for k in keys] for r in lb]
    for line in (b / "log.jsonl").read_text().splitlines():
        json.loads(line)  # every line whole and valid


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("crash_train")
    data = write_tiny_dataset(root / "D", n_cases=5)
    from focusseg.workflows.train import run_training

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the child processes: same threads, same floating-point sums
    try:
        run_training(data, root / "straight", fold=0, overrides=TINY, progress=False, final_validation=False)
    finally:
        torch.set_num_threads(threads)
    return data, root / "straight"


def test_two_kills_then_resume_gives_identical_weights(straight, tmp_path: Path):
    data, ref = straight
    run = tmp_path / "killed"
    # inside epoch 1; then half-way through writing epoch 2's checkpoint (falls back to checkpoint_previous.pt)
    rc, _ = _run(data, run, "batch:4")
    assert rc == -9
    assert torch.load(run / "checkpoint_latest.pt", weights_only=True)["iteration"] == 3
    rc, _ = _run(data, run, "ckpt_write:2", resume=True)
    assert rc == -9 and not (run / "checkpoint_latest.pt").exists()
    rc, err = _run(data, run, resume=True)
    assert rc == 0, err[-2000:]
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "checkpoint_previous.pt" in warnings[0]
    _assert_same_run(ref, run)


@pytest.mark.slow
def test_kill_after_checkpoint_and_log_line(straight, tmp_path: Path):
    data, ref = straight
    run = tmp_path / "killed"
    _kill_and_resume(data, run, ["epoch_end:1"])
    _assert_same_run(ref, run)


@pytest.mark.slow
def test_many_random_kills_resume_to_identical_weights(straight, tmp_path: Path):
    data, ref = straight
    rng = random.Random(20261201)
    ipe, epochs = TINY["training"]["iterations_per_epoch"], TINY["training"]["max_epochs"]
    points = []  # (position in iterations, kill spec), replayed in order: each is reached after the last resume
    for _ in range(12):
        kind = rng.choice(["batch", "batch", "epoch_end", "ckpt_write"])
        if kind == "batch":
            n = rng.randrange(ipe * epochs)
            points.append((n, f"batch:{n}"))
        else:
            e = rng.randrange(epochs - 1)
            points.append(((e + 1) * ipe - 0.5, f"{kind}:{e}"))
    kills = [spec for _, spec in sorted(points)]
    assert len(kills) >= 10
    run = tmp_path / "killed"
    _kill_and_resume(data, run, kills)
    _assert_same_run(ref, run)
