"""Thin convolutions in channels-last 3D (focusseg.nets.layout): which layers are hooked, that outputs, gradients
and state dicts are those of the plain network, that a training step and the sliding window with it agree with the
plain ones, and that plans choose it (the CPU planner) and are checked."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from focusseg.errors import PlanError
from focusseg.inference import sliding_window_predict
from focusseg.inference.acceleration import InferenceForward
from focusseg.nets.layout import (
    THIN_CHANNELS,
    is_thin,
    phase_eligible,
    phase_transposed,
    phase_weight,
    thin_channels_last,
)
from focusseg.settings import inference_settings, training_settings


def _unet() -> nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(3, 1, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=2)


def test_only_3d_convolutions_with_few_channels_are_thin():
    assert is_thin(nn.Conv3d(3, 3, 3)) and is_thin(nn.ConvTranspose3d(32, 3, 3)) and is_thin(nn.Conv3d(64, 4, 1))
    assert not is_thin(nn.Conv3d(1, 16, 3)) and not is_thin(nn.Conv2d(3, 3, 3)) and not is_thin(nn.Linear(2, 2))
    assert is_thin(nn.Conv3d(16, 8, 3), max_channels=8) and THIN_CHANNELS == 4
    with pytest.raises(ValueError, match="max_channels"):
        thin_channels_last(nn.Conv3d(1, 1, 1), max_channels=0)


def test_hooks_are_registered_once_and_leave_parameters_and_state_dict_alone():
    net = _unet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    thin = [m for m in net.modules() if is_thin(m)]
    assert thin_channels_last(net) == len(thin) == 2  # the last transposed conv (16 -> 3), the last conv (3 -> 3)
    assert thin_channels_last(net) == len(thin)  # idempotent
    assert all(len(m._forward_pre_hooks) == 1 and len(m._forward_hooks) == 1 for m in thin)
    after = net.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert all(p.is_contiguous() for p in net.parameters())


def test_output_and_gradients_equal_the_plain_network():
    plain = _unet()
    thin = copy.deepcopy(plain)
    thin_channels_last(thin)
    x = torch.randn(2, 1, 24, 32, 24)
    y = torch.randint(0, 3, (2, 24, 32, 24))
    outs, grads = [], []
    for net in (plain, thin):
        out = net(x)
        assert out.is_contiguous()
        nn.functional.cross_entropy(out, y).backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in net.parameters()])
    assert (outs[0] - outs[1]).abs().max() < 1e-4
    for a, b in zip(*grads, strict=True):
        assert (a - b).abs().max() <= 1e-4 * max(1.0, a.abs().max().item())


def test_the_sliding_window_with_thin_channels_last_predicts_what_the_plain_network_does():
    net = _unet().eval()
    torch.manual_seed(1)
    image = torch.randn(1, 30, 26, 21)
    plain = sliding_window_predict(net, image, (16, 16, 16), batch_size=3, mirror_axes=(0,))
    forward = InferenceForward(copy.deepcopy(net), "thin")
    hooked = [m for m in forward.network.modules() if getattr(m, "_forward_pre_hooks", None)]
    phased = [m for m in forward.network.modules() if isinstance(m, nn.ConvTranspose3d) and phase_eligible(m)]
    assert len(hooked) == 1 and isinstance(hooked[0], nn.Conv3d) and len(phased) == 1
    thin = sliding_window_predict(net, image, (16, 16, 16), batch_size=3, mirror_axes=(0,), accelerate=forward)
    assert (plain - thin).abs().max() < 1e-4
    assert torch.equal(plain.argmax(0), thin.argmax(0))


@pytest.mark.parametrize(("cin", "cout", "shape", "bias"), [(8, 3, (5, 7, 6), True), (16, 2, (4, 4, 9), False),
                                                          (3, 1, (1, 2, 3), True)])
def test_a_phase_transposed_convolution_equals_the_transposed_one(cin, cout, shape, bias):
    torch.manual_seed(0)
    conv = nn.ConvTranspose3d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=bias)
    x = torch.randn(2, cin, *shape)
    with torch.no_grad():
        ref = conv(x)
        fast = copy.deepcopy(conv).eval()
        assert phase_transposed(fast) == 1 == phase_transposed(fast)  # idempotent
        out = fast(x)
    assert out.shape == ref.shape == (2, cout, *(2 * s for s in shape))
    assert (out - ref).abs().max() < 1e-5
    assert list(fast.state_dict()) == list(conv.state_dict())
    fast.train()  # training mode: the module's own forward (and its gradients)
    assert torch.equal(fast(x), conv(x))
    w = torch.randn(cin, cout, 3, 3, 3)
    assert phase_weight(w).shape == (8 * cout, cin, 2, 2, 2) and torch.count_nonzero(phase_weight(w)) == cout * cin * 27


def test_only_the_transposed_convolutions_it_computes_exactly_are_eligible():
    assert phase_eligible(nn.ConvTranspose3d(32, 3, 3, stride=2, padding=1, output_padding=1, bias=False))
    for conv in (nn.ConvTranspose3d(32, 3, 2, stride=2),  # nnU-Net's kernel 2
                 nn.ConvTranspose3d(32, 8, 3, stride=2, padding=1, output_padding=1),  # not thin
                 nn.ConvTranspose3d(32, 3, 3, stride=2, padding=1),  # no output padding
                 nn.ConvTranspose3d(32, 3, 3, stride=2, padding=1, output_padding=1, dilation=2),
                 nn.ConvTranspose2d(32, 3, 3, stride=2, padding=1, output_padding=1), nn.Conv3d(32, 3, 3)):
        assert not phase_eligible(conv)


def test_plans_name_the_layout_and_bad_values_are_refused():
    assert training_settings({"training": {"channels_last": "thin"}}).channels_last == "thin"
    assert training_settings({"training": {"channels_last": True}}).channels_last is True
    for bad in ("yes", 1, None, "THIN"):
        with pytest.raises(PlanError, match="training.channels_last"):
            training_settings({"training": {"channels_last": bad}})
    assert inference_settings({"inference": {"accelerate": "thin"}}).accelerate == "thin"


def _fp() -> dict:
    return {"dataset": "x", "n_cases": 100, "channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1},
            "median_spacing": [1.0, 1.0, 1.0], "spacing_percentile_10": [1.0, 1.0, 1.0],
            "median_shape_after_crop": [36, 50, 35], "median_crop_fraction": 1.0,
            "intensity": [{"channel": "MR", "mean": 40.0, "std": 100.0, "percentile_00_5": -900.0,
                           "percentile_99_5": 1200.0}]}


def test_the_cpu_planner_chooses_thin_channels_last_and_the_gpu_planner_keeps_the_default_layout():
    from focusseg.planning.planner import make_plan

    cpu = make_plan(_fp(), device="cpu")
    assert cpu["training"]["channels_last"] == "thin"
    assert cpu["inference"]["accelerate"] == "thin"
    gpu = make_plan(_fp(), device="cuda", gpu_memory_gb=8)
    assert gpu["training"]["channels_last"] is False and "accelerate" not in gpu["inference"]


def test_a_training_step_with_thin_channels_last_equals_the_plain_one():
    from focusseg.engine.task import build_task
    from focusseg.planning.planner import make_plan

    plan = make_plan(_fp(), device="cpu", overrides={"patch_size": [16, 16, 16], "batch_size": 2})
    torch.manual_seed(3)
    images = torch.randn(2, 1, 16, 16, 16)
    labels = torch.randint(0, 2, (2, 16, 16, 16))
    steps = []
    for layout in (False, "thin"):
        plan["training"]["channels_last"] = layout
        torch.manual_seed(0)
        task, _ = build_task(plan, torch.device("cpu"), 10, None)
        assert task.channels_last == layout
        task.train()
        out = task.step(images, labels, [], None)
        steps.append((float(out.loss), [p.detach().clone() for p in task.network.parameters()]))
    assert abs(steps[0][0] - steps[1][0]) < 1e-5
    for a, b in zip(steps[0][1], steps[1][1], strict=True):
        assert (a - b).abs().max() < 1e-5


def test_the_cycle_task_runs_its_three_networks_with_thin_layers_and_refuses_a_whole_channels_last_network():
    from focusseg.engine.task import build_task
    from focusseg.planning.planner import make_plan

    plan = make_plan(_fp(), device="cpu", overrides={"patch_size": [16, 16, 16], "batch_size": 2,
                                                     "training": {"task": {"name": "cycle"}}})
    assert plan["training"]["channels_last"] == "thin"
    task, _ = build_task(plan, torch.device("cpu"), 10, None)
    for net in task.networks:
        assert any(getattr(m, "_forward_pre_hooks", None) for m in net.modules() if is_thin(m))
    plan["training"]["channels_last"] = True
    with pytest.raises(PlanError, match="channels_last"):
        build_task(plan, torch.device("cpu"), 10, None)
