"""``training.compile`` and ``training.channels_last`` (issue 13 part 2): the same training on CPU (the compiled
forward shares the network's parameters; checkpoints keep plain keys); on CUDA with inductor and NDHWC."""

from __future__ import annotations

import copy

import pytest
import torch

from focusseg.engine.task import build_task, training_forward
from focusseg.errors import PlanError

PLAN = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2, "n_classes": 3, "channel_names": {"0": "x"},
        "labels": {"background": 0, "a": 1, "b": 2},
        "training": {"loss": {"ce": 1.0, "soft_dice": 1.0},
                     "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.99, "nesterov": True},
                     "lr_schedule": {"name": "poly", "exponent": 0.9}, "amp": "none", "grad_clip": 12.0}}


def _train(plan: dict, device: str = "cpu", steps: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    task, _ = build_task(plan, torch.device(device), 10, None)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(2, 1, 16, 16, 16, generator=g).to(device)
        y = torch.randint(0, 3, (2, 1, 16, 16, 16), generator=g).to(device)
        step = task.step(x, y, [], None)
        assert step.finite
    return {k: v.detach().cpu() for k, v in task.inference_module().state_dict().items()}


def _with(**training) -> dict:
    plan = copy.deepcopy(PLAN)
    plan["training"].update(training)
    return plan


def test_compiled_forward_trains_the_same_weights_and_keeps_plain_keys():
    torch.set_num_threads(1)
    plain = _train(PLAN)
    compiled = _train(_with(compile={"backend": "eager"}))  # dynamo tracing without code generation
    assert plain.keys() == compiled.keys() and not any("_orig_mod" in k for k in compiled)
    for k in plain:
        torch.testing.assert_close(compiled[k], plain[k], rtol=1e-5, atol=1e-6)


def test_channels_last_trains_close_to_contiguous():
    torch.set_num_threads(1)
    plain = _train(PLAN)
    ndhwc = _train(_with(channels_last=True))
    for k in plain:  # another summation order in the convolutions: equal to float tolerance
        torch.testing.assert_close(ndhwc[k].contiguous(), plain[k], rtol=1e-3, atol=1e-4)


def test_bad_compile_options_are_refused():
    net = torch.nn.Conv3d(1, 1, 1)
    assert training_forward(net, None) is net and training_forward(net, False) is net
    with pytest.raises(PlanError, match="unknown option"):
        training_forward(net, {"modes": "max-autotune"})
    with pytest.raises(PlanError, match="must be true, false"):
        training_forward(net, "yes")
    cycle = _with(compile=True, task={"name": "cycle"})
    with pytest.raises(PlanError, match="supervised task"):
        build_task(cycle, torch.device("cpu"), 10, None)


@pytest.mark.cuda
def test_inductor_and_channels_last_on_cuda():
    plain = _train(PLAN, "cuda")
    both = _train(_with(compile=True, channels_last=True), "cuda")
    for k in plain:
        torch.testing.assert_close(both[k].contiguous(), plain[k], rtol=1e-2, atol=1e-3)
