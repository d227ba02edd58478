"""Launching tiny trainings on several CPU processes (torchrun, Gloo) for the distributed tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

#: A tiny plan whose loss is a mean over samples (CE without class weights) and without augmentation, so that
#: 2 processes x batch 2 must step exactly as 1 process x batch 4; Focused Practice samples (its state must agree).
MEAN_LOSS_PLAN = {
    "network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
    "patch_size": [16, 16, 16], "batch_size": 4,
    "training": {"max_epochs": 2, "iterations_per_epoch": 3, "augmentation": "none", "amp": "none",
                 "loss": {"_replace": True, "name": "ce"},
                 "sampler": {"_replace": True, "name": "focused_practice", "overlap": 0.5, "hard_oversample": 2.0,
                             "drop_hardest": 0.2},
                 "optimizer": {"_replace": True, "name": "sgd", "lr": 0.01, "momentum": 0.9},
                 "val_patches": 6, "loader": {"workers": 1}},
    "inference": {"mirror_axes": []},
}

#: Class weighting (CBS) and a metric-driven learning rate, with augmentation (per-rank streams): states must agree.
STRATEGY_PLAN = {
    **MEAN_LOSS_PLAN,
    "batch_size": 2,
    "training": {**MEAN_LOSS_PLAN["training"], "max_epochs": 4, "augmentation": "light",
                 "loss": {"_replace": True, "name": "dice", "include_background": False},
                 "class_weighter": {"name": "cbs", "window": 2, "epsilon": 0.01, "zeta": 0.001, "max_weight": 2.0},
                 "lr_schedule": {"_replace": True, "name": "metric_driven", "base": 0.9, "divisor": 10,
                                 "dice_in_percent": True}},
}

SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from focusseg.workflows.train import run_training
    data, run, plan, resume, kill_rank, kill_at, dump = sys.argv[1:8]
    kill_rank, kill_at = int(kill_rank), int(kill_at)

    class Probe:
        # every rank writes its strategies' states after each epoch (the test compares the ranks)
        def before_batch(self, trainer, requests):
            first = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"  # a restarted group is not killed
            if trainer.world.rank == kill_rank and trainer.iteration == kill_at and first:
                import time
                (Path(run) / "killed_at").write_text(repr(time.time()))
                os.kill(os.getpid(), signal.SIGKILL)

        def on_epoch_end(self, trainer, record):
            if dump == "-":
                return
            p = trainer.parts
            state = {"sampler": trainer.sampler.state_dict(), "lr": p.lr.state_dict(),
                     "weighter": p.weighter.state_dict() if p.weighter is not None else None,
                     "network": p.task.inference_module().state_dict(), "best": trainer.best,
                     "iteration": trainer.iteration, "max_iterations": trainer.max_iterations,
                     "world": [trainer.world.rank, trainer.world.size]}
            Path(dump).mkdir(parents=True, exist_ok=True)
            torch.save(state, Path(dump) / f"rank{trainer.world.rank}_epoch{record['epoch']}.pt")

    summary = run_training(data, run, fold=0, overrides=json.loads(plan), resume=resume == "1", progress=False,
                           final_validation=False, callbacks=[Probe()])
    print("SUMMARY", json.dumps(summary))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(data: Path, run: Path, plan: dict, nproc: int = 2, resume: bool = False, kill_rank: int = -1,
           kill_at: int = -1, dump: Path | None = None, launcher: list[str] | None = None, timeout: float = 400,
           wait: bool = True, restarts: int = 0) -> subprocess.CompletedProcess | subprocess.Popen:
    """Train ``plan`` on ``data`` with ``nproc`` torchrun processes (0: one plain process, no launcher)."""
    args = [str(data), str(run), json.dumps(plan), "1" if resume else "0", str(kill_rank), str(kill_at),
            str(dump) if dump else "-"]
    if nproc == 0:
        cmd = [sys.executable, "-c", SCRIPT, *args]
    else:
        script = run.parent / f".dist_script_{run.name}.py"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(SCRIPT)
        head = launcher or ["--standalone", f"--nproc_per_node={nproc}"]
        cmd = [sys.executable, "-m", "torch.distributed.run", *head, f"--max-restarts={restarts}", str(script), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8",
                                errors="replace", env=env)
    return subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout, env=env)
