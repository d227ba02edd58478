"""Cost of a network: parameters, forward FLOPs, memory held for backward, and measured step time.

* ``count_parameters(m) = sum(p.numel())`` over (trainable) parameters; works on the meta device.
* ``estimate_flops`` counts the forward pass with ``torch.utils.flop_counter.FlopCounterMode``, which counts
  a multiply-add as 2 FLOPs for convolutions and matmuls (norms and activations are not counted).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameter elements."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def estimate_flops(model: nn.Module, patch_size: Sequence[int], in_channels: int, batch_size: int = 1) -> int:
    """Forward FLOPs for one batch of ``(batch_size, in_channels, *patch_size)``, model in eval mode.

    Runs the forward on the model's own device, so a model built under ``torch.device("meta")`` is
    counted for free (no memory, no compute).
    """
    was_training = model.training
    model.eval()
    x = torch.zeros((batch_size, in_channels, *patch_size), device=_device_of(model))
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
