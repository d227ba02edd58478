"""Gaussian-weighted sliding-window inference with mirror test-time augmentation (nnU-Net v2 style).

For windows ``w`` with Gaussian weight ``g`` (:mod:`focusseg.inference.windows`) and mirror set ``M`` (all
``2^|mirror_axes|`` subsets of the axes, identity included), the logits at voxel ``x`` are::

    z(x) = sum_w g(x - o_w) * (1/|M|) sum_{m in M} m^-1(f(m(I_w)))(x)  /  sum_w g(x - o_w)

accumulated in float32 on the compute device; a forward pass holds at most ``batch_size`` (window, mirror) items.
Options: ``mask`` skips windows without a ``True`` voxel (voxels no window covers get background logits,
:data:`BACKGROUND_LOGIT`), ``channels_last_3d``, ``accelerate`` (a compiled forward). With ``slice_axis`` a
2D network predicts a 3D volume slice by slice (:class:`SlicesAsDepth`, window ``(1, *patch)``). Details:
``docs/inference.md``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn

from focusseg.inference.acceleration import InferenceForward
from focusseg.inference.windows import (
    compute_steps,
    gaussian_axis_factors,
    gaussian_importance_map,
    pad_to_patch,
    summed_axis_weights,
)

BACKGROUND_LOGIT = 20.0

__all__ = ["BACKGROUND_LOGIT", "SlicesAsDepth", "mirror_combinations", "nonzero_mask", "sliding_window_predict"]


class SlicesAsDepth(nn.Module):
    """A 2D network as a 3D one on windows of depth 1: ``(B, C, 1, H, W) -> (B, K, 1, H, W)`` (the first output of
    a deep-supervision list). What the 2D configuration's slice-by-slice sliding window runs."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[2] != 1:
            raise ValueError(f"SlicesAsDepth takes (B, C, 1, H, W) windows, got {tuple(x.shape)}")
        return _run(self.network, x[:, :, 0]).unsqueeze(2)


def mirror_combinations(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """All subsets of ``mirror_axes`` (spatial axes, 0-based), identity ``()`` first: ``2^len`` flips."""
    axes = tuple(sorted(set(int(a) for a in mirror_axes)))
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def nonzero_mask(image: torch.Tensor) -> torch.Tensor:
    """Spatial mask of voxels where any channel of ``image`` (C, *spatial) is non-zero."""
    return (image != 0).any(dim=0)


def _network_device_dtype(network: nn.Module, fallback: torch.device) -> tuple[torch.device, torch.dtype]:
    for p in network.parameters():
        return p.device, p.dtype
    return fallback, torch.float32


def _run(network: nn.Module | InferenceForward, x: torch.Tensor) -> torch.Tensor:
    out = network(x)
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out


def sliding_window_predict(
    network: nn.Module,
    image: torch.Tensor,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    mirror_axes: Sequence[int] = (),
    batch_size: int = 2,
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    out_device: str | torch.device = "cpu",
    *,
    mask: torch.Tensor | None = None,
    sigma_scale: float = 1.0 / 8,
    channels_last_3d: bool = False,
    compile: bool = False,
    slice_axis: int | None = None,
    accelerate: str | InferenceForward = "none",
) -> torch.Tensor:
    """Predict float32 logits ``(K, *spatial)`` for ``image`` ``(C, *spatial)`` (2D or 3D) window by window.

    Args:
        network: maps ``(B, C, *patch)`` to logits ``(B, K, *patch)`` (a list/tuple: element 0 is used).
            Put in eval mode for the call (its previous mode is restored); moved to ``device`` if given.
        image: any device and float dtype (windows are cast to the network's parameter dtype); smaller
            than ``patch_size`` along an axis -> zero-padded (centred) and unpadded.
        patch_size: window size, one int per spatial axis.
        overlap: ``0 <= overlap < 1``; nnU-Net step ``P * (1 - overlap)`` (module docstring of ``windows``).
        mirror_axes: spatial axes (0, 1[, 2]) to flip for test-time augmentation; ``()`` disables it.
        batch_size: (window, mirror) items per forward pass, ``>= 1``.
        device: compute device; ``None`` -> the network's parameter device (else the image's).
        amp_dtype: ``torch.bfloat16`` / ``torch.float16`` to run under ``torch.autocast``; ``None`` = fp32.
        progress: show a rich progress bar over window groups.
        out_device: device of the returned logits.
        mask: optional spatial bool tensor; windows without any ``True`` voxel are skipped (module doc).
        sigma_scale: Gaussian ``sigma = patch * sigma_scale`` (nnU-Net: 1/8).
        channels_last_3d: use ``torch.channels_last_3d`` for 3D windows and network (the network's
            parameters are converted in place, as ``Module.to`` does).
        compile: wrap the network with ``torch.compile`` for this call (as ``accelerate="compile"``).
        slice_axis: the 2D configuration (module docstring): ``network`` is 2D, ``image`` 3D ``(C, *spatial)``,
            ``patch_size`` and ``mirror_axes`` are in-plane (2 values / axes 0, 1), slices along ``slice_axis``.
        accelerate: ``"none"`` or ``"compile"`` (:mod:`focusseg.inference.acceleration`), or an
            :class:`~focusseg.inference.acceleration.InferenceForward` prepared once for ``network`` and reused
            across calls (what a predictor does, so one compiled graph serves every case). A forward with a
            fixed batch gets every window batch padded to the full size.
    """
    if slice_axis is not None:
        return _predict_slices(network, image, patch_size, int(slice_axis), overlap=overlap, mirror_axes=mirror_axes,
                               batch_size=batch_size, device=device, amp_dtype=amp_dtype, progress=progress,
                               out_device=out_device, mask=mask, sigma_scale=sigma_scale, compile=compile)
    spatial_dims = image.ndim - 1
    patch = tuple(int(p) for p in patch_size)
    if spatial_dims not in (2, 3) or len(patch) != spatial_dims:
        raise ValueError(f"image {tuple(image.shape)} must be (C, *spatial) with 2/3 axes like patch {patch}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if any(a < 0 or a >= spatial_dims for a in mirror_axes):
        raise ValueError(f"mirror_axes {tuple(mirror_axes)} must be spatial axes in [0, {spatial_dims})")
    net_device, in_dtype = _network_device_dtype(network, image.device)
    dev = torch.device(device) if device is not None else net_device
    if device is not None:
        network.to(dev)
    was_training = network.training
    network.eval()
    model = network
    if channels_last_3d and spatial_dims == 3:
        model = model.to(memory_format=torch.channels_last_3d)
    if isinstance(accelerate, InferenceForward):
        forward = accelerate
    else:
        forward = InferenceForward(model, "compile" if compile else accelerate)

    padded, region = pad_to_patch(image, patch)
    if mask is not None:
        if tuple(mask.shape) != tuple(image.shape[1:]):
            raise ValueError(f"mask {tuple(mask.shape)} must match image spatial {tuple(image.shape[1:])}")
        mask, _ = pad_to_patch(mask[None].to(torch.uint8), patch)
        mask = mask[0].bool()
    size = tuple(padded.shape[1:])
    steps = [sorted(set(st)) for st in compute_steps(size, patch, overlap)]  # a window placed twice runs once
    windows = [tuple(slice(s, s + p) for s, p in zip(st, patch)) for st in itertools.product(*steps)]
    if mask is not None:
        windows = [w for w in windows if bool(mask[w].any())]
    flips = mirror_combinations(mirror_axes)
    gauss = gaussian_importance_map(patch, sigma_scale, dev, torch.float32)
    # The summed Gaussian weight of a full window grid is separable (``windows.gaussian_axis_factors``): one 1-D
    # vector per axis instead of a whole-volume float32 map. A mask (windows skipped) needs the whole map.
    factors = gaussian_axis_factors(patch, sigma_scale) if mask is None else None
    weight: torch.Tensor | None = None
    axis_weights: list[torch.Tensor] = []
    if factors is not None:
        for a, w1 in enumerate(summed_axis_weights(size, patch, steps, factors)):
            shape = [1] * (spatial_dims + 1)
            shape[a + 1] = -1
            axis_weights.append(torch.as_tensor(w1, dtype=torch.float32, device=dev).view(shape))
    else:
        weight = torch.zeros((1, *size), dtype=torch.float32, device=dev)
        for w in windows:
            weight[(slice(None), *w)] += gauss
    # Windows are taken in groups; a forward pass holds `per_pass` flips of every window of a group, so each
    # window is cut out and copied once, each batch is flipped in one call, and the mirrored predictions of a
    # window are summed before a single Gaussian-weighted add into the accumulator.
    n_flips = len(flips)
    group_size = max(1, batch_size // n_flips) if batch_size >= n_flips else batch_size
    per_pass = n_flips if batch_size >= n_flips else 1
    groups = [windows[i : i + group_size] for i in range(0, len(windows), group_size)]
    if progress:
        from rich.progress import track

        groups = track(groups, description="sliding window")
    autocast = torch.autocast(device_type=dev.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    acc: torch.Tensor | None = None
    try:
        with torch.inference_mode(), autocast:
            for group in groups:
                x = torch.stack([padded[(slice(None), *w)] for w in group]).to(dev, in_dtype, non_blocking=True)
                if forward.fixed_batch and len(group) < group_size:  # one compiled shape: pad with empty windows
                    x = torch.cat([x, x.new_zeros((group_size - len(group), *x.shape[1:]))])
                if channels_last_3d and spatial_dims == 3:
                    x = x.contiguous(memory_format=torch.channels_last_3d)
                n_x = x.shape[0]
                summed: torch.Tensor | None = None
                for i in range(0, n_flips, per_pass):
                    chunk = flips[i : i + per_pass]
                    batch = torch.cat([_flip(x, f) for f in chunk]) if len(chunk) > 1 else _flip(x, chunk[0])
                    out = _run(forward, batch).float()
                    for j, f in enumerate(chunk):
                        o = _flip(out[j * n_x : j * n_x + len(group)], f)
                        if summed is None:  # the network's fresh output is owned here: copy only to add into it
                            summed = o if n_flips == 1 else o.to(torch.float32, copy=True)
                        else:
                            summed.add_(o)
                if acc is None:
                    with torch.inference_mode(False):  # a normal tensor: callers may modify the result
                        acc = torch.zeros((summed.shape[1], *size), dtype=torch.float32, device=dev)
                for w, o in zip(group, summed):
                    acc[(slice(None), *w)].addcmul_(o, gauss, value=1.0 / n_flips)
            if acc is None:  # the mask skipped every window: ask the network for K on one empty window
                k = _run(model, torch.zeros((1, image.shape[0], *patch), device=dev, dtype=in_dtype)).shape[1]
                with torch.inference_mode(False):
                    acc = torch.zeros((k, *size), dtype=torch.float32, device=dev)
    finally:
        network.train(was_training)
    if weight is None:  # full grid: every voxel lies in some window; divide by the separable weight
        for w1 in axis_weights:
            acc.div_(w1)
    elif mask is not None:  # voxels that no run window covers: weight 0 -> background logits
        uncovered = weight[0] == 0
        weight[0].masked_fill_(uncovered, 1.0)
        acc.div_(weight)
        acc[0].masked_fill_(uncovered, BACKGROUND_LOGIT if acc.shape[0] > 1 else -BACKGROUND_LOGIT)
    else:  # every voxel lies in some window
        acc.div_(weight)
    return acc[region].to(out_device)


def _flip(x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """Flip spatial ``axes`` of a (B, C, *spatial) batch (a flip is its own inverse)."""
    return torch.flip(x, dims=[a + 2 for a in axes]) if axes else x


def _predict_slices(network: nn.Module, image: torch.Tensor, patch_size: Sequence[int], slice_axis: int,
                    mirror_axes: Sequence[int] = (), mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """The 2D configuration's slice-by-slice prediction (module docstring): logits ``(K, *spatial)`` of ``image``
    ``(C, X, Y, Z)`` from the 2D ``network``, its ``(1, *patch)`` windows run by :func:`sliding_window_predict`."""
    patch = tuple(int(p) for p in patch_size)
    if image.ndim != 4 or len(patch) != 2 or slice_axis not in (0, 1, 2):
        raise ValueError(f"slice-by-slice prediction needs a (C, X, Y, Z) image, a 2D patch and a slice axis 0..2; "
                         f"got image {tuple(image.shape)}, patch {patch}, slice_axis {slice_axis}")
    if any(a not in (0, 1) for a in mirror_axes):
        raise ValueError(f"mirror_axes {tuple(mirror_axes)} must be in-plane axes 0 or 1 for a 2D network")
    volume = image.movedim(1 + slice_axis, 1)  # (C, S, H, W): a view, nothing copied
    if mask is not None:
        mask = mask.movedim(slice_axis, 0)
    logits = sliding_window_predict(SlicesAsDepth(network), volume, (1, *patch),
                                    mirror_axes=[a + 1 for a in mirror_axes], mask=mask, **kwargs)
    return logits.movedim(1, 1 + slice_axis).contiguous()
