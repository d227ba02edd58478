"""Test-time augmentation: mirroring and Gaussian input noise, reduced to mean probabilities (+ variance).

A *pass* is one sliding-window prediction of an augmented input: pass ``j`` predicts ``I + eps_j``,
``eps_j ~ N(0, sigma^2)`` per voxel and channel (``sigma`` in units of the normalised intensity), plus a clean
pass when ``include_clean`` (always when ``noise_passes = 0``). Mirrors are averaged on logits within a pass
(nnU-Net), or become passes of their own with ``split_mirrors`` so that the variance covers them. Passes are
averaged on probabilities::

    p̄ = (1 / J) sum_j act(z_j),      J = (n + [include_clean]) * (2^|mirror_axes| if split_mirrors else 1)

VALDO task 3 (paper 001, section 1.6) uses "flips and slight Gaussian noise" without a sigma; the default
``noise_sigma = 0.1`` is a choice. FLARE21 (paper 002) reduces TTA to 2 passes: ``mirror_axes=(0,)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from focusseg.inference.sliding_window import mirror_combinations, sliding_window_predict
from focusseg.inference.uncertainty import ProbabilisticPrediction, StreamingMoments, activate

__all__ = ["count_tta_passes", "tta_passes", "tta_predict"]


def count_tta_passes(
    mirror_axes: Sequence[int] = (), noise_passes: int = 0, include_clean: bool = True, split_mirrors: bool = False
) -> int:
    """Number of predictions ``J`` that :func:`tta_passes` yields (formula in the module docstring)."""
    inputs = noise_passes + (1 if include_clean or noise_passes == 0 else 0)
    return inputs * (len(mirror_combinations(mirror_axes)) if split_mirrors else 1)


def tta_passes(
    network: nn.Module,
    image: torch.Tensor,
    patch_size: Sequence[int],
    *,
    mirror_axes: Sequence[int] = (),
    noise_passes: int = 0,
    noise_sigma: float = 0.1,
    include_clean: bool = True,
    split_mirrors: bool = False,
    generator: torch.Generator | None = None,
    activation: str = "softmax",
    **sliding_window_kwargs: Any,
) -> Iterator[torch.Tensor]:
    """Yield the probabilities ``(K, *spatial)`` of each TTA pass (on ``out_device``, default CPU).

    Args:
        network, image, patch_size: as :func:`sliding_window_predict`.
        mirror_axes: spatial axes to flip.
        noise_passes: number of noisy passes ``n >= 0``.
        noise_sigma: standard deviation of the added noise, ``> 0`` when ``n > 0``.
        include_clean: add the un-noised pass (forced when ``n = 0``).
        split_mirrors: one pass per mirror combination instead of averaging mirrors on logits.
        generator: seeds the noise (a CPU generator; noise is drawn on the CPU and moved).
        activation: ``"softmax"`` or ``"sigmoid"``.
        **sliding_window_kwargs: overlap, batch_size, device, amp_dtype, out_device, mask, ...
    """
    if noise_passes < 0 or (noise_passes > 0 and noise_sigma <= 0):
        raise ValueError(f"need noise_passes >= 0 and noise_sigma > 0, got {noise_passes}, {noise_sigma}")
    inputs: list[float] = ([0.0] if include_clean or noise_passes == 0 else []) + [noise_sigma] * noise_passes
    flips = mirror_combinations(mirror_axes) if split_mirrors else [None]
    for sigma in inputs:
        x = image
        if sigma > 0:
            noise = torch.randn(image.shape, generator=generator, dtype=torch.float32)
            x = image + (sigma * noise).to(image.device, image.dtype)
        for f in flips:
            if f is None:
                logits = sliding_window_predict(
                    network, x, patch_size, mirror_axes=mirror_axes, **sliding_window_kwargs
                )
            else:
                dims = [a + 1 for a in f]
                flipped = torch.flip(x, dims) if f else x
                logits = sliding_window_predict(network, flipped, patch_size, **sliding_window_kwargs)
                logits = torch.flip(logits, dims) if f else logits
            yield activate(logits, activation)


def tta_predict(
    network: nn.Module,
    image: torch.Tensor,
    patch_size: Sequence[int],
    *,
    return_uncertainty: bool = False,
    activation: str = "softmax",
    out_device: str | torch.device = "cpu",
    **tta_kwargs: Any,
) -> ProbabilisticPrediction:
    """Mean probabilities over TTA passes in one streaming accumulator; per-class variance if asked.

    ``tta_kwargs`` are those of :func:`tta_passes` (mirror_axes, noise_passes, noise_sigma, ...) and of
    :func:`sliding_window_predict`.
    """
    moments = StreamingMoments(track_variance=return_uncertainty, device=out_device)
    for probs in tta_passes(network, image, patch_size, activation=activation, out_device=out_device, **tta_kwargs):
        moments.add(probs)
    return ProbabilisticPrediction.from_moments(moments, activation)
