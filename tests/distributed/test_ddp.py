"""Training on two CPU processes (torchrun, Gloo): exact strategies across ranks, equivalence with one process,
two launchers on localhost, a killed rank, exact resume (issue 14)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from dist_helpers import MEAN_LOSS_PLAN, STRATEGY_PLAN, free_port, launch
from focusseg_testdata import write_tiny_dataset

from focusseg.engine.distributed import World

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with Gloo is not available in this build")


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _same(a, b, exact: bool = True, where: str = "") -> None:
    """Recursively equal (``exact``) or close (float tolerance) states."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], exact, f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, exact, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        if exact:
            assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                         and torch.equal(a[~a.isnan()], b[~b.isnan()])), where
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, equal_nan=True, msg=where)
    elif isinstance(a, float) and exact:
        assert a == b or (a != a and b != b), where
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6) or (a != a and b != b), where
    else:
        assert a == b, where


def _check(proc) -> str:
    out = (proc.stdout or "") + (proc.stderr or "")
    assert proc.returncode == 0, out[-3000:]
    return out


def test_one_process_world_is_a_no_op():
    w = World()
    t = torch.arange(4.0)
    assert not w.active and w.is_main
    assert w.all_gather(t) is t and w.all_reduce_sum(t) is t and w.broadcast_object({"a": 1}) == {"a": 1}
    assert w.shard([1, 2, 3]) == [1, 2, 3] and w.local_slice(["a", "b"]) == ["a", "b"]
    two = World(rank=1, size=2)
    assert two.shard(list(range(5))) == [1, 3] and two.local_slice(list("abcd")) == ["c", "d"]
    assert two.batch_sizes(7) == [4, 3] and two.local_slice(list("abcdefg")) == list("efg")
    assert two.loss_scale(7) == pytest.approx(2 * 3 / 7) and World(0, 2).loss_scale(7) == pytest.approx(2 * 4 / 7)
    from focusseg.errors import UsageError

    with pytest.raises(UsageError, match="smaller than"):
        two.batch_sizes(1)


def test_an_uneven_global_batch_steps_as_one_process(tmp_path: Path):
    """Batch 3 on 2 ranks (2 + 1 samples, losses scaled by W b_r / B): the weights of one process with batch 3."""
    data = write_tiny_dataset(tmp_path / "D", n_cases=5)
    plan = {**MEAN_LOSS_PLAN, "batch_size": 3, "training": {**MEAN_LOSS_PLAN["training"], "max_epochs": 1}}
    _check(launch(data, tmp_path / "one", plan, nproc=0))
    _check(launch(data, tmp_path / "two", plan, nproc=2))
    one, two = _load(tmp_path / "one" / "checkpoint_final.pt"), _load(tmp_path / "two" / "checkpoint_final.pt")
    _same(one["network"], two["network"], exact=False, where="network")


def test_two_ranks_step_as_one_process_with_the_global_batch(tmp_path: Path):
    """CE (a mean over samples), no augmentation: 2 ranks x batch 2 == 1 process x batch 4 after 6 steps, and the
    two ranks hold identical sampler (Focused Practice), LR and network states after every epoch."""
    data = write_tiny_dataset(tmp_path / "D", n_cases=5)
    _check(launch(data, tmp_path / "one", MEAN_LOSS_PLAN, nproc=0, dump=tmp_path / "dump1"))
    out = _check(launch(data, tmp_path / "two", MEAN_LOSS_PLAN, nproc=2, dump=tmp_path / "dump2"))
    assert out.count("SUMMARY") == 2  # every rank returns the summary rank 0 wrote
    one, two = _load(tmp_path / "one" / "checkpoint_final.pt"), _load(tmp_path / "two" / "checkpoint_final.pt")
    _same(one["network"], two["network"], exact=False, where="network")
    for epoch in (0, 1):
        r0, r1 = (_load(tmp_path / "dump2" / f"rank{r}_epoch{epoch}.pt") for r in (0, 1))
        assert r0["world"] == [0, 2] and r1["world"] == [1, 2]
        for key in ("sampler", "lr", "network", "best", "iteration"):
            _same(r0[key], r1[key], exact=True, where=f"epoch {epoch} {key}")
        single = _load(tmp_path / "dump1" / f"rank0_epoch{epoch}.pt")
        _same(single["sampler"], r0["sampler"], exact=False, where=f"epoch {epoch} sampler vs one process")
    # only rank 0 wrote: one log line per epoch, no second set of files
    lines = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if "epoch" in r and "event" not in r] == [0, 1]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2


def test_strategies_agree_across_ranks_and_a_killed_rank_resumes_exactly(tmp_path: Path):
    """CBS class weights, metric-driven LR, Focused Practice with per-rank augmentation: identical on both ranks
    after every epoch; killing rank 1 ends rank 0 with a clear error within 60 s; resuming with 2 processes ends
    with the same weights as the uninterrupted run."""
    data = write_tiny_dataset(tmp_path / "D", n_cases=5)
    _check(launch(data, tmp_path / "straight", STRATEGY_PLAN, dump=tmp_path / "dump"))
    for epoch in range(4):
        r0, r1 = (_load(tmp_path / "dump" / f"rank{r}_epoch{epoch}.pt") for r in (0, 1))
        for key in ("sampler", "lr", "weighter", "network", "best", "max_iterations"):
            _same(r0[key], r1[key], exact=True, where=f"epoch {epoch} {key}")
    assert r0["weighter"] is not None

    killed = launch(data, tmp_path / "killed", STRATEGY_PLAN, kill_rank=1, kill_at=7)
    ended = time.time()
    out = (killed.stdout or "") + (killed.stderr or "")
    assert killed.returncode != 0, out[-2000:]
    assert ended - float((tmp_path / "killed" / "killed_at").read_text()) < 60
    assert "SIGKILL" in out or "Signal 9" in out or "another training process" in out, out[-2000:]
    assert _load(tmp_path / "killed" / "checkpoint_latest.pt")["iteration"] == 6  # epoch 2 was lost

    _check(launch(data, tmp_path / "killed", STRATEGY_PLAN, resume=True))
    a = _load(tmp_path / "straight" / "checkpoint_final.pt")["network"]
    b = _load(tmp_path / "killed" / "checkpoint_final.pt")["network"]
    _same(a, b, exact=True, where="resumed network")

    # torchrun --max-restarts=1: the restarted workers resume from the last checkpoint by themselves
    restarted = launch(data, tmp_path / "restarted", STRATEGY_PLAN, kill_rank=1, kill_at=7, restarts=1)
    _check(restarted)
    c = _load(tmp_path / "restarted" / "checkpoint_final.pt")["network"]
    _same(a, c, exact=True, where="network after torchrun's restart")
    events = [json.loads(x) for x in (tmp_path / "restarted" / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "torchrun_restart" for e in events)


def test_two_launchers_on_localhost_c10d_rendezvous(tmp_path: Path):
    """Two "nodes" (two torchrun launchers, one process each) meet by c10d rendezvous on 127.0.0.1."""
    data = write_tiny_dataset(tmp_path / "D", n_cases=5)
    plan = {**MEAN_LOSS_PLAN, "training": {**MEAN_LOSS_PLAN["training"], "max_epochs": 1}}
    port = free_port()
    procs = [launch(data, tmp_path / "run", plan, dump=tmp_path / "dump", wait=False,
                    launcher=["--nnodes=2", f"--node-rank={i}", "--nproc_per_node=1", "--rdzv-backend=c10d",
                              f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=focusseg-test"]) for i in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    r0, r1 = (_load(tmp_path / "dump" / f"rank{r}_epoch0.pt") for r in (0, 1))
    assert {tuple(r0["world"]), tuple(r1["world"])} == {(0, 2), (1, 2)}
    _same(r0["network"], r1["network"], exact=True, where="network")
    assert (tmp_path / "run" / "checkpoint_final.pt").is_file()


def test_cycle_training_selects_on_the_global_batch_via_devices_flag(tmp_path: Path):
    """Cycle training (three networks, committee selection): `focusseg train --devices 2` (torchrun launched by
    focusseg) ends with the weights of one process training the global batch; the run then predicts."""
    import subprocess
    import sys

    data = write_tiny_dataset(tmp_path / "D", n_cases=5)
    plan = {**MEAN_LOSS_PLAN, "training": {**MEAN_LOSS_PLAN["training"], "max_epochs": 1,
                                           "sampler": {"_replace": True, "name": "foreground"},
                                           "task": {"name": "cycle", "keep": 0.5, "criterion": "agreement"}}}
    _check(launch(data, tmp_path / "one", plan, nproc=0))
    recipe = tmp_path / "cycle.json"
    recipe.write_text(json.dumps({"name": "cycle-tiny", "plan": plan}))
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "focusseg"]
    proc = subprocess.run([*cli, "train", str(data), "--out", str(tmp_path / "two"), "--recipe", str(recipe),
                           "--devices", "2", "--no-progress"], capture_output=True, encoding="utf-8", errors="replace",
                          timeout=400, env=env)
    _check(proc)
    one, two = _load(tmp_path / "one" / "checkpoint_final.pt"), _load(tmp_path / "two" / "checkpoint_final.pt")
    assert any(k.startswith("members.2.") or k.startswith("2.") for k in two["network"]) or len(two["network"])
    _same(one["network"], two["network"], exact=False, where="cycle networks")
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["final_validation"]["mean_dice"] is not None
    pred = subprocess.run([*cli, "predict", str(tmp_path / "two"), str(data / "imagesTr"), str(tmp_path / "pred"),
                           "--no-tta"], capture_output=True, encoding="utf-8", errors="replace", timeout=300, env=env)
    _check(pred)
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 5


def test_a_network_with_parameters_that_get_no_gradient_trains(tmp_path: Path):
    """STU-Net without deep supervision keeps its heads' parameters unused (fp-pet's network): DDP's static graph
    lets it train on 2 ranks, with the weights of one process."""
    data = write_tiny_dataset(tmp_path / "D", n_cases=5)
    plan = {**MEAN_LOSS_PLAN, "network": {"_replace": True, "name": "stunet_s", "deep_supervision": False},
            "training": {**MEAN_LOSS_PLAN["training"], "max_epochs": 1, "iterations_per_epoch": 2}}
    _check(launch(data, tmp_path / "one", plan, nproc=0))
    _check(launch(data, tmp_path / "two", plan, nproc=2))
    one, two = _load(tmp_path / "one" / "checkpoint_final.pt"), _load(tmp_path / "two" / "checkpoint_final.pt")
    _same(one["network"], two["network"], exact=False, where="network")
