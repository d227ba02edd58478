"""Host synchronisations per iteration (issue 13, part 2): at most one in the engine's part of the default path.

On the CPU :class:`~focusseg.engine.syncs.HostReadCounter` counts every host read of a tensor (an upper bound of
the syncs the same code makes on a GPU). The training step reads once (loss and gradient norm together); the
loop adds nothing (class weights are copied to the device only when they change). What augmentation and the
loader read is reported by the GPU acceptance benchmark (their own modules). Marked ``cuda``: the real count
with ``torch.cuda.set_sync_debug_mode``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from focusseg_testdata import write_tiny_dataset

from focusseg.engine.loop import DeviceWeights, cuda_speedups
from focusseg.engine.syncs import CudaSyncCounter, HostReadCounter
from focusseg.engine.task import build_parts
from focusseg.nets.from_plan import amp_dtype
from focusseg.workflows.train import run_training

TINY = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 1, "iterations_per_epoch": 4, "amp": "none"},
        "inference": {"mirror_axes": []}}


class Probe:
    """Host reads of the main thread per iteration (before_batch .. after_batch), of the task's step and of
    the augmenter."""

    def __init__(self, counter) -> None:
        self.counter = counter
        self.iteration: list[int] = []
        self.step: list[int] = []
        self.augment: list[int] = []

    def _wrap(self, fn, into: list[int]):
        def wrapped(*args, **kwargs):
            n0 = self.counter.in_thread()
            out = fn(*args, **kwargs)
            into.append(self.counter.in_thread() - n0)
            return out

        return wrapped

    def on_train_start(self, trainer) -> None:
        trainer.parts.task.step = self._wrap(trainer.parts.task.step, self.step)
        trainer.parts.augmenter = self._wrap(trainer.parts.augmenter, self.augment)

    def before_batch(self, trainer, requests) -> None:
        self.n0 = self.counter.in_thread()

    def after_batch(self, trainer, step) -> None:
        self.iteration.append(self.counter.in_thread() - self.n0)


def _probe_run(tmp_path: Path, device: str, overrides: dict, counter) -> Probe:
    data = write_tiny_dataset(tmp_path / "D", n_cases=4)
    probe = Probe(counter)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with counter:
            run_training(data, tmp_path / "run", fold=0, overrides=overrides, device=device, progress=False,
                         final_validation=False, callbacks=[probe])
    finally:
        torch.set_num_threads(n)
    return probe


def test_default_path_reads_the_host_once_per_iteration(tmp_path: Path):
    probe = _probe_run(tmp_path, "cpu", TINY, HostReadCounter())  # the planner's augmentation (nnU-Net's)
    assert len(probe.step) == 4
    assert max(probe.step) <= 1, probe.step
    engine = [i - a for i, a in zip(probe.iteration, probe.augment)]  # copy, weights, LR, step, sampler update
    assert max(engine) <= 1, (probe.iteration, probe.augment)


def test_class_weights_are_copied_only_when_they_change():
    class Weighter:
        w = torch.tensor([1.0, 2.0])

        def weights(self):
            return self.w.clone()

    dw, weighter = DeviceWeights(torch.device("cpu")), Weighter()
    assert dw.get(None) is None
    a, b = dw.get(weighter), dw.get(weighter)
    assert a is b and dw.copies == 1
    weighter.w = torch.tensor([1.0, 3.0])
    assert dw.get(weighter).tolist() == [1.0, 3.0] and dw.copies == 2


def test_amp_auto_is_fp32_on_cpu_and_explicit_values_stay():
    cpu = torch.device("cpu")
    from focusseg.devices import cpu_has_native_bf16

    # auto on the CPU: bf16 only where the CPU computes it natively (11x slower than fp32 on AVX2-only CPUs)
    assert amp_dtype({"training": {"amp": "auto"}}, cpu) == (torch.bfloat16 if cpu_has_native_bf16() else None)
    assert amp_dtype({"training": {"amp": "bf16"}}, cpu) == torch.bfloat16
    assert amp_dtype({"training": {"amp": "fp16"}}, cpu) == torch.bfloat16  # no fp16 scaler on the CPU
    assert amp_dtype({"training": {"amp": "none"}}, cpu) is None


def test_cuda_speedups_set_and_restore_the_flags():
    before = (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision())
    with cuda_speedups(torch.device("cpu")):
        assert (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()) == before
    with cuda_speedups(torch.device("cuda")):  # only flags: no device needed to set them
        assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
    assert (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()) == before


def test_step_reads_once_with_deep_supervision_and_a_weighter(tmp_path: Path):
    """Deep supervision (flare21-fast's network) and class weights: still one read in the step."""
    from focusseg.recipes import load_recipe

    data = write_tiny_dataset(tmp_path / "D", n_cases=4)
    run = tmp_path / "run"
    over = json.loads(json.dumps(TINY))
    over.pop("network")
    over["training"]["max_epochs"] = 1
    over["training"]["iterations_per_epoch"] = 1
    run_training(data, run, fold=0, recipe=load_recipe("flare21-fast"), overrides=over, progress=False,
                 final_validation=False)
    plan = json.loads((run / "plan.json").read_text())
    parts = build_parts(plan, 4, torch.device("cpu"))
    x = torch.randn(2, 1, *plan["patch_size"])
    y = torch.randint(0, 3, (2, 1, *plan["patch_size"]))
    w = torch.tensor([1.0, 2.0, 3.0])
    with HostReadCounter() as c:
        for _ in range(2):
            parts.task.step(x, y, [], w)
    assert c.count <= 2, dict(c.by_method)


@pytest.mark.cuda
@pytest.mark.parametrize("amp", ["auto", "none"])
def test_cuda_step_syncs_at_most_once(tmp_path: Path, amp: str):
    over = json.loads(json.dumps(TINY))
    over["training"]["amp"] = amp
    probe = _probe_run(tmp_path, "cuda", over, CudaSyncCounter())
    assert max(probe.step[1:]) <= 1, probe.step  # the first step may autotune (cudnn.benchmark)
