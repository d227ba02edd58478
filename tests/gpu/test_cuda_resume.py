"""Resume across devices (issue 13, part 1): checkpoints load onto the CPU and every part moves itself.

On the CPU: a checkpoint carrying what a CUDA fp16 run writes (CUDA RNG states, a GradScaler state, device
"cuda", amp "float16") resumes on a CPU-only machine and ends with exactly the weights of an uninterrupted CPU
run (the CUDA parts are ignored and the switch is logged); a CPU checkpoint (no scaler state) resumed by a task
that uses a scaler gets a fresh scaler; optimiser state lands on the parameters' device (shown with the meta
device). Marked ``cuda``: the same runs on a GPU, and CPU <-> CUDA both ways.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from focusseg_testdata import write_tiny_dataset

from focusseg.engine.task import load_scaler_state
from focusseg.io import checkpoint as ckpt
from focusseg.runfolder import read_log
from focusseg.workflows.train import run_training

TINY = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 3, "iterations_per_epoch": 2, "augmentation": "light", "amp": "none"},
        "inference": {"mirror_axes": []}}

#: What ``torch.amp.GradScaler("cuda").state_dict()`` holds after a few fp16 steps.
CUDA_SCALER_STATE = {"scale": 32768.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                     "_growth_tracker": 7}


class Stop(Exception):
    pass


class StopAt:
    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def before_batch(self, trainer, requests) -> None:
        if trainer.iteration == self.iteration:
            raise Stop


def _events(run: Path, name: str) -> list[dict]:
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    return [x for x in lines if x.get("event") == name]


def _train(data: Path, run: Path, device: str = "cpu", overrides: dict | None = None, **kw) -> dict:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_training(data, run, fold=0, overrides=overrides or TINY, device=device, progress=False,
                            final_validation=False, **kw)
    finally:
        torch.set_num_threads(n)


def _stopped(data: Path, run: Path, at: int, device: str = "cpu", overrides: dict | None = None) -> None:
    with pytest.raises(Stop):
        _train(data, run, device, overrides, callbacks=[StopAt(at)])


def _same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa = ckpt.load_checkpoint(a / "checkpoint_final.pt")["network"]
    wb = ckpt.load_checkpoint(b / "checkpoint_final.pt")["network"]
    assert wa.keys() == wb.keys()
    for k in wa:
        if atol == 0.0:
            assert torch.equal(wa[k], wb[k]), f"{k} differs after resume"
        else:
            assert torch.allclose(wa[k].float(), wb[k].float(), atol=atol, rtol=atol), f"{k} differs after resume"


def _as_if_written_on_cuda(path: Path) -> None:
    """Rewrite a CPU checkpoint the way a CUDA fp16 run writes it: CUDA RNG states of two GPUs, a GradScaler
    state, the device and autocast dtype."""
    state = ckpt.load_checkpoint(path)
    state["rng"]["cuda"] = [torch.randint(0, 255, (16,), dtype=torch.uint8) for _ in range(2)]
    state["task"]["scaler"] = dict(CUDA_SCALER_STATE)
    state["device"], state["amp"] = "cuda", "float16"
    ckpt.save_atomic(state, path)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("cuda_resume") / "D", n_cases=4)


# ----------------------------------------------------------------------------------------------- on the CPU
def test_cuda_written_checkpoint_resumes_on_cpu_exactly(data: Path, tmp_path: Path):
    _train(data, tmp_path / "straight")
    run = tmp_path / "moved"
    _stopped(data, run, at=4)  # epoch 2 never finished: checkpoint_latest holds epochs 0-1
    _as_if_written_on_cuda(run / "checkpoint_latest.pt")
    summary = _train(data, run, resume=True)
    assert summary["epochs"] == 3
    _same_weights(tmp_path / "straight", run)  # CUDA RNG and scaler state ignored, nothing else disturbed
    (ev,) = _events(run, "device_switch")
    assert ev["device"] == {"from": "cuda", "to": "cpu"} and ev["amp"] == {"from": "float16", "to": "none"}
    assert ev["parts"] == [{"part": "grad_scaler", "action": "ignored"}]
    assert [r["epoch"] for r in read_log(run)] == [0, 1, 2]
    # the next checkpoint records where it was written
    latest = ckpt.load_checkpoint(run / "checkpoint_latest.pt")
    assert latest["device"] == "cpu" and latest["amp"] == "none" and "cuda" not in latest["rng"]


def test_same_device_resume_logs_no_switch(data: Path, tmp_path: Path):
    run = tmp_path / "run"
    _stopped(data, run, at=2)
    _train(data, run, resume=True)
    assert _events(run, "device_switch") == []


def test_scaler_state_fresh_loaded_or_ignored():
    enabled = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    assert load_scaler_state(enabled, {}) == "fresh"  # a CPU / bf16 checkpoint resumed with fp16
    assert enabled.get_scale() == 2.0 ** 16
    assert load_scaler_state(enabled, None) == "fresh"  # a checkpoint from before scalers were saved
    assert load_scaler_state(enabled, dict(CUDA_SCALER_STATE)) is None
    assert enabled.get_scale() == CUDA_SCALER_STATE["scale"]
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    assert load_scaler_state(disabled, dict(CUDA_SCALER_STATE)) == "ignored"  # fp16 on CUDA -> CPU / bf16
    assert load_scaler_state(disabled, {}) is None


def test_cpu_checkpoint_into_a_scaler_task_gets_a_fresh_scaler(data: Path, tmp_path: Path):
    """The task half of CPU -> CUDA fp16: a CPU task state (empty scaler state) loads into a task whose scaler
    is enabled (stood in for by a CPU GradScaler) and reports a fresh scaler."""
    from focusseg.engine.task import build_parts

    run = tmp_path / "run"
    _stopped(data, run, at=2)
    state = ckpt.load_checkpoint(run / "checkpoint_latest.pt")
    assert state["task"]["scaler"] == {}
    plan = json.loads((run / "plan.json").read_text())
    parts = build_parts(plan, 6, torch.device("cpu"))
    parts.task.scaler = torch.amp.GradScaler("cpu")
    assert parts.task.load_state_dict(state["task"]) == [{"part": "grad_scaler", "action": "fresh"}]
    assert parts.task.scaler.is_enabled() and parts.task.scaler.get_scale() == 2.0 ** 16


def test_optimizer_state_moves_to_the_parameters_device():
    """torch's ``Optimizer.load_state_dict`` casts state tensors to each parameter's device (shown with the meta
    device, which a CPU machine has): a CPU checkpoint's momentum buffers follow CUDA parameters the same way."""
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    saved = ckpt.plain(opt.state_dict())
    meta_net = torch.nn.Linear(3, 2, device="meta")
    meta_opt = torch.optim.SGD(meta_net.parameters(), lr=0.1, momentum=0.9)
    meta_opt.load_state_dict(saved)
    bufs = [s["momentum_buffer"] for s in meta_opt.state.values()]
    assert len(bufs) == 2 and all(b.device.type == "meta" for b in bufs)


def test_rng_state_with_cuda_entries_loads_on_a_cpu_machine():
    g = {"sample": torch.Generator().manual_seed(3)}
    state = ckpt.plain(ckpt.rng_state(g))
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    a = torch.rand(3, generator=g["sample"]), torch.rand(2)
    ckpt.load_rng_state(state, g)  # CUDA entries are skipped without a device (set only where one exists)
    b = torch.rand(3, generator=g["sample"]), torch.rand(2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --------------------------------------------------------------------------------------------------- on CUDA
@pytest.mark.cuda
def test_resume_on_cuda(data: Path, tmp_path: Path):
    """Killed and resumed on CUDA: the run finishes, the log holds every epoch once, no switch is logged, and
    the weights match the uninterrupted CUDA run (to 1e-3: cuDNN autotuning may pick non-deterministic kernels)."""
    _train(data, tmp_path / "straight", device="cuda")
    run = tmp_path / "killed"
    _stopped(data, run, at=4, device="cuda")
    summary = _train(data, run, device="cuda", resume=True)
    assert summary["epochs"] == 3 and [r["epoch"] for r in read_log(run)] == [0, 1, 2]
    assert _events(run, "device_switch") == []
    assert "cuda" in ckpt.load_checkpoint(run / "checkpoint_latest.pt")["rng"]
    _same_weights(tmp_path / "straight", run, atol=1e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("first,second", [("cpu", "cuda"), ("cuda", "cpu")])
def test_resume_across_devices(data: Path, tmp_path: Path, first: str, second: str):
    over = json.loads(json.dumps(TINY))
    over["training"]["amp"] = "fp16"  # CUDA: fp16 + scaler; CPU: bf16 without scaler
    run = tmp_path / "run"
    _stopped(data, run, at=4, device=first, overrides=over)
    summary = _train(data, run, device=second, overrides=over, resume=True)
    assert summary["epochs"] == 3
    (ev,) = _events(run, "device_switch")
    assert ev["device"] == {"from": first, "to": second}
    action = "fresh" if second == "cuda" else "ignored"
    assert ev["parts"] == [{"part": "grad_scaler", "action": action}]
    final = ckpt.load_checkpoint(run / "checkpoint_final.pt")["network"]
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())
