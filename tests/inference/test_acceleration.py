"""A prepared inference forward (focusseg.inference.acceleration): with every window batch padded to one shape
for a compiled graph the sliding window predicts what the plain network predicts, and a compiled forward agrees
with the eager one; the plan's ``inference.accelerate`` is checked."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from focusseg.errors import PlanError
from focusseg.inference import sliding_window_predict
from focusseg.inference.acceleration import InferenceForward
from focusseg.settings import inference_settings


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.InstanceNorm3d(8, affine=True), nn.LeakyReLU(0.01),
                         nn.Conv3d(8, 8, 3, padding=1, stride=2), nn.InstanceNorm3d(8, affine=True),
                         nn.LeakyReLU(0.01), nn.ConvTranspose3d(8, 8, 2, stride=2), nn.Conv3d(8, 3, 1))


def _image() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 30, 26, 21)


class _FixedBatchProbe(InferenceForward):
    """The plain forward, asking for one batch size as a compiled graph does; records the sizes it saw."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__(network, "none")
        self.sizes: set[int] = set()

    @property
    def fixed_batch(self) -> bool:
        return True

    def __call__(self, x: torch.Tensor):
        self.sizes.add(x.shape[0])
        return super().__call__(x)


@pytest.mark.parametrize(("batch_size", "mirror_axes"), [(3, ()), (4, (1,)), (2, (0, 1, 2))])
def test_a_fixed_batch_pads_the_last_one_without_changing_the_result(batch_size, mirror_axes):
    net, image = _net(), _image()
    plain = sliding_window_predict(net, image, (16, 16, 16), mirror_axes=mirror_axes, batch_size=batch_size)
    probe = _FixedBatchProbe(net)
    padded = sliding_window_predict(net, image, (16, 16, 16), mirror_axes=mirror_axes, batch_size=batch_size,
                                    accelerate=probe)
    assert len(probe.sizes) == 1
    # instance norm is per sample: the empty windows added change nothing
    assert (plain - padded).abs().max() < 1e-5


def test_unknown_names_are_refused_and_the_plan_names_one():
    for how in ("turbo", "jit"):
        with pytest.raises(ValueError, match="accelerate"):
            InferenceForward(_net(), how)
    assert inference_settings({"inference": {"accelerate": "compile"}}).accelerate == "compile"
    with pytest.raises(PlanError, match="inference.accelerate"):
        inference_settings({"inference": {"accelerate": "turbo"}})


@pytest.mark.slow
def test_a_compiled_forward_agrees_with_the_eager_one():
    net, image = _net(), _image()
    plain = sliding_window_predict(net, image, (16, 16, 16), batch_size=3)
    forward = InferenceForward(net, "compile")
    compiled = sliding_window_predict(net, image, (16, 16, 16), batch_size=3, accelerate=forward)
    assert forward.prepared and (plain - compiled).abs().max() < 1e-2
    assert (plain.argmax(0) == compiled.argmax(0)).float().mean() > 0.999
