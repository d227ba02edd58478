"""Weighted ensembles of networks with different architectures and patch sizes.

FP-PET (paper 000, section 2) ensembles STU-Net-L (primary) with SwinUNETR and V-Net "with smaller
weighting factors" (values not given). For members ``m`` with weight ``w_m`` and TTA passes ``j`` of
member ``m`` (``J_m`` of them, see :mod:`focusseg.inference.tta`)::

    p̄ = sum_m w_m (1/J_m) sum_j softmax(z_mj)  /  sum_m w_m

Each member runs its own sliding window and adds one ``(K, *spatial)`` probability map at a time to ONE shared
accumulator, so memory does not grow with the number of members. With ``return_uncertainty`` a second
accumulator of squares gives the weighted variance (:class:`focusseg.inference.uncertainty.StreamingMoments`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from focusseg.inference.tta import count_tta_passes, tta_passes
from focusseg.inference.uncertainty import ProbabilisticPrediction, StreamingMoments

__all__ = ["EnsembleMember", "ensemble_predict"]


@dataclass(frozen=True)
class EnsembleMember:
    """A network, its ensemble weight (> 0) and its own patch size / overlap (None: the call's default)."""

    network: nn.Module
    weight: float = 1.0
    patch_size: Sequence[int] | None = None
    overlap: float | None = None


def _as_member(item: EnsembleMember | nn.Module | tuple) -> EnsembleMember:
    if isinstance(item, EnsembleMember):
        return item
    if isinstance(item, nn.Module):
        return EnsembleMember(item)
    if isinstance(item, tuple) and 1 <= len(item) <= 4:
        return EnsembleMember(*item)
    raise TypeError(f"an ensemble member is an EnsembleMember, a module or (network, weight[, patch]), got {item!r}")


def ensemble_predict(
    networks_with_weights: Sequence[EnsembleMember | nn.Module | tuple],
    image: torch.Tensor,
    patch_size: Sequence[int] | None = None,
    *,
    overlap: float = 0.5,
    mirror_axes: Sequence[int] = (),
    noise_passes: int = 0,
    noise_sigma: float = 0.1,
    split_mirrors: bool = False,
    generator: torch.Generator | None = None,
    activation: str = "softmax",
    return_uncertainty: bool = False,
    out_device: str | torch.device = "cpu",
    **sliding_window_kwargs: Any,
) -> ProbabilisticPrediction:
    """Weighted mean probabilities of several networks (formula in the module docstring).

    Args:
        networks_with_weights: ``EnsembleMember``s, modules (weight 1) or tuples ``(network, weight[,
            patch_size[, overlap]])``; all must predict the same number of classes.
        image: ``(C, *spatial)`` normalised image, any device.
        patch_size: default window size for members that give none.
        overlap, mirror_axes, noise_passes, noise_sigma, split_mirrors, generator: TTA per member.
        activation: ``"softmax"`` or ``"sigmoid"``.
        return_uncertainty: also accumulate squares for the variance over (member, pass) predictions.
        out_device: where the accumulator and the result live.
        **sliding_window_kwargs: batch_size, device, amp_dtype, mask, channels_last_3d, ...
    """
    members = [_as_member(m) for m in networks_with_weights]
    if not members:
        raise ValueError("an ensemble needs at least one member")
    moments = StreamingMoments(track_variance=return_uncertainty, device=out_device)
    for m in members:
        patch = m.patch_size if m.patch_size is not None else patch_size
        if patch is None:
            raise ValueError("a member has no patch_size and no default patch_size was given")
        if m.weight <= 0:
            raise ValueError(f"ensemble weights must be positive, got {m.weight}")
        n_passes = count_tta_passes(mirror_axes, noise_passes, True, split_mirrors)
        for probs in tta_passes(
            m.network,
            image,
            patch,
            overlap=m.overlap if m.overlap is not None else overlap,
            mirror_axes=mirror_axes,
            noise_passes=noise_passes,
            noise_sigma=noise_sigma,
            split_mirrors=split_mirrors,
            generator=generator,
            activation=activation,
            out_device=out_device,
            **sliding_window_kwargs,
        ):
            moments.add(probs, m.weight / n_passes)
            del probs
    return ProbabilisticPrediction.from_moments(moments, activation)
