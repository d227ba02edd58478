"""Faster CPU kernels for a 3D network's *thin* convolutions (few output channels), same numerics.

oneDNN (PyTorch's CPU convolution library) runs a 3D convolution with few *output* channels far below its
throughput in the channels-first (NCDHW) layout, whose kernels vectorise over blocks of output channels: a U-Net's
full-resolution layers with as many channels as classes (the last 3 -> 3 convolution of MONAI's ``UNet`` for three
classes, forward and backward) can take a third of a training step while holding a few percent of its FLOPs. In
channels-last 3D (NDHWC) such a layer runs 3-4x faster; wide layers, and layers with few *input* channels (the
first 1 -> 16 or 4 -> 16 convolution), run as fast or slower there, so switching the whole network
(``training.channels_last: true``) gains less than switching only the thin layers.

:func:`thin_channels_last` does the latter: a forward pre-hook gives each 3D convolution with at most
``max_channels`` output channels its input in channels-last 3D, and a forward hook returns its output in
the default contiguous layout, so the rest of the network and the parameters keep theirs (checkpoints and
``state_dict`` keys are unchanged; the layout is not part of the numerics, outputs agree to float rounding).

A thin transposed convolution with kernel 3, stride 2, padding 1 and output padding 1 (MONAI ``UNet``'s up-sampling)
runs through PyTorch's generic col2im path in either layout. :func:`phase_transposed` computes it as one dense
convolution instead (sub-pixel or "phase" decomposition): per axis, output ``2m`` is ``x[m] w[1]`` and output
``2m + 1`` is ``x[m] w[2] + x[m + 1] w[0]``, so the eight output phases are a kernel-2 convolution of the input
(padded by one voxel at the end of each axis) with ``8 x out_channels`` filters built from the transposed kernel
(the unused taps are zeros), followed by a pixel shuffle and the bias. The sums are the same; only their order
differs (float rounding, about 1e-6 of the output). It helps the fp32 inference forward (the MS benchmark's
32 -> 2 layer: 25 -> 18 ms for 4 windows); for training (forward + backward) it measured no faster, so
:func:`thin_channels_last` alone is used there.

Which kernels are faster depends on the machine and the library build: the planner records its choice in the plan
(``training.channels_last: "thin"`` / ``inference.accelerate: "thin"``) and ``BENCHMARKS.md`` has the measurements.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: A 3D convolution is thin when its output channels are at most this many.
THIN_CHANNELS = 4

#: Attribute marking a convolution whose hooks are registered (registration is idempotent).
_MARK = "_focusseg_thin_channels_last"
#: Attribute marking a transposed convolution that runs as a phase convolution.
_PHASE_MARK = "_focusseg_phase_transposed"


def _phase_selection() -> torch.Tensor:
    """``S[p, j, k] = 1`` when tap ``k`` of the transposed kernel feeds output phase ``p`` from input offset ``j``."""
    sel = torch.zeros(2, 2, 3)
    sel[0, 0, 1] = sel[1, 0, 2] = sel[1, 1, 0] = 1.0
    return sel


def phase_weight(weight: torch.Tensor) -> torch.Tensor:
    """The ``(8 * out, in, 2, 2, 2)`` phase-convolution filters of a ``(in, out, 3, 3, 3)`` transposed kernel
    (stride 2, padding 1, output padding 1); filter ``c * 8 + 4 pd + 2 ph + pw`` makes output channel ``c`` at
    phase ``(pd, ph, pw)``. Differentiable (an einsum with a 0/1 selection)."""
    sel = _phase_selection().to(weight.dtype)
    cin, cout = weight.shape[:2]
    return torch.einsum("iokmn,pak,qbm,rcn->opqriabc", weight, sel, sel, sel).reshape(cout * 8, cin, 2, 2, 2)


def phase_transposed_forward(module: nn.ConvTranspose3d, x: torch.Tensor,
                             output_size: list[int] | None = None) -> torch.Tensor:
    """``module(x)`` for a :func:`phase_eligible` transposed convolution, as one dense convolution and a pixel
    shuffle (module docstring). In training mode (measured no faster forward + backward) or with an
    ``output_size`` it is the module's own forward."""
    if module.training or output_size is not None or x.dim() != 5:
        return nn.ConvTranspose3d.forward(module, x, output_size)
    b, _, d, h, w = x.shape
    cout = module.out_channels
    y = F.conv3d(F.pad(x, (0, 1, 0, 1, 0, 1)), phase_weight(module.weight).to(x.dtype))
    y = y.view(b, cout, 2, 2, 2, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, cout, 2 * d, 2 * h, 2 * w)
    if module.bias is not None:
        y = y + module.bias.to(y.dtype).view(1, cout, 1, 1, 1)
    return y


def phase_eligible(module: nn.Module, max_channels: int = THIN_CHANNELS) -> bool:
    """Whether ``module`` is a thin 3D transposed convolution :func:`phase_transposed` computes exactly: kernel 3,
    stride 2, padding 1, output padding 1, dilation 1, one group, zero padding mode."""
    return (type(module) is nn.ConvTranspose3d and module.out_channels <= max_channels
            and module.kernel_size == (3, 3, 3) and module.stride == (2, 2, 2) and module.padding == (1, 1, 1)
            and module.output_padding == (1, 1, 1) and module.dilation == (1, 1, 1) and module.groups == 1
            and module.padding_mode == "zeros")


def phase_transposed(network: nn.Module, max_channels: int = THIN_CHANNELS) -> int:
    """Run ``network``'s :func:`phase_eligible` transposed convolutions as phase convolutions in eval mode (module
    docstring): their forward is replaced on the instance, parameters and ``state_dict`` are untouched; in training
    mode they run as before. Idempotent.

    Returns:
        The number of transposed convolutions that run as phase convolutions.
    """
    count = 0
    for module in network.modules():
        if not phase_eligible(module, max_channels):
            continue
        if not getattr(module, _PHASE_MARK, False):
            module.forward = functools.partial(phase_transposed_forward, module)
            setattr(module, _PHASE_MARK, True)
        count += 1
    return count


def _to_channels_last(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    x = args[0]
    if isinstance(x, torch.Tensor) and x.dim() == 5:
        return (x.contiguous(memory_format=torch.channels_last_3d), *args[1:])
    return args


def _to_contiguous(module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
    return out.contiguous() if isinstance(out, torch.Tensor) else out


def is_thin(module: nn.Module, max_channels: int = THIN_CHANNELS) -> bool:
    """Whether ``module`` is a 3D (transposed) convolution with at most ``max_channels`` output channels."""
    return isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)) and module.out_channels <= max_channels


def thin_channels_last(network: nn.Module, max_channels: int = THIN_CHANNELS) -> int:
    """Run ``network``'s thin 3D convolutions (:func:`is_thin`) in channels-last 3D (module docstring).

    Registers a forward pre-hook and a forward hook on each thin convolution that has none yet (a transposed
    convolution already running as a phase convolution, :func:`phase_transposed`, is left as it is); parameters,
    buffers and ``state_dict`` are untouched. Idempotent: calling it again registers nothing new.

    Args:
        network: any module; 2D convolutions and other layers are left as they are.
        max_channels: the thinness bound (:data:`THIN_CHANNELS`).

    Returns:
        The number of thin convolutions that run channels-last (hooked now or before).

    Raises:
        ValueError: ``max_channels`` below 1.
    """
    if max_channels < 1:
        raise ValueError(f"max_channels must be >= 1, got {max_channels}")
    count = 0
    for module in network.modules():
        if not is_thin(module, max_channels) or getattr(module, _PHASE_MARK, False):
            continue
        if not getattr(module, _MARK, False):
            module.register_forward_pre_hook(_to_channels_last)
            module.register_forward_hook(_to_contiguous)
            setattr(module, _MARK, True)
        count += 1
    return count


def thin_inference(network: nn.Module, max_channels: int = THIN_CHANNELS) -> int:
    """The inference preparation ``inference.accelerate: "thin"``: :func:`phase_transposed`, then
    :func:`thin_channels_last` for the other thin convolutions. Returns the number of layers changed."""
    return phase_transposed(network, max_channels) + thin_channels_last(network, max_channels)


__all__ = ["THIN_CHANNELS", "is_thin", "phase_eligible", "phase_transposed", "phase_transposed_forward",
           "phase_weight", "thin_channels_last", "thin_inference"]
