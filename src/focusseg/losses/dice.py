"""Soft Dice losses: the plain form and the squared-denominator form.

Per class c (sums over one sample's voxels, or over the whole batch's with ``batch=True``)::

    plain    (``dice``):       L_c = 1 - (2 sum p g + s_nr) / (sum p   + sum g   + s_dr)
    squared  (``soft_dice``):  L_c = 1 - (2 sum p g + s_nr) / (sum p^2 + sum g^2 + s_dr)

and ``L = mean_c w_c L_c`` (MONAI ``DiceLoss`` ``weight`` convention); the denominator is clipped at 1e-8 (nnU-Net).
FP-PET (paper 000 sec. 3.5) and FLARE21 (paper 002 eq. 1) use the squared form; reading chosen: the per-class mean
(nnU-Net, MONAI), not eq. 1's class-pooled fraction. Defaults follow nnU-Net: background excluded, smoothing 1e-5,
per-sample Dice (``batch=True``: ``batch_dice``). Ignore label: the sums run over annotated voxels only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from focusseg.losses._build import LOSSES
from focusseg.losses._common import (
    ACTIVATIONS,
    REDUCTIONS,
    activate,
    as_compute_dtype,
    check_class_weights,
    check_ignore_label,
    check_labels,
    check_option,
    encode_target,
    finish,
    flat,
    label_map,
    split_ignore,
)

if TYPE_CHECKING:
    from focusseg.losses.blob import InstanceStats


class RegionLoss(nn.Module):
    """Base of the overlap losses (Dice, Tversky): per-class scores from ``tp``, ``sum p^q`` and ``sum g``.

    Subclasses define ``class_loss(tp, sum_p, sum_g)`` (any shape) and ``power`` (q = 1 or 2).
    """

    power = 1

    def __init__(
        self,
        include_background: bool = False,
        batch: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        activation: str = "softmax",
        reduction: str = "mean",
        validate_labels: bool = False,
        ignore_label: int | None = None,
    ) -> None:
        super().__init__()
        self.validate_labels = bool(validate_labels)
        self.ignore_label = check_ignore_label(ignore_label)
        if smooth_nr < 0 or smooth_dr < 0:
            raise ValueError("smoothing terms must be >= 0")
        self.include_background = include_background
        self.batch = batch
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.activation = check_option("activation", activation, ACTIVATIONS)
        self.reduction = check_option("reduction", reduction, REDUCTIONS)

    def class_loss(self, tp: Tensor, sum_p: Tensor, sum_g: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, logits: Tensor, target: Tensor, class_weights: Tensor | None = None) -> Tensor:
        x = as_compute_dtype(logits)
        labels, annotated = split_ignore(label_map(x, target), self.ignore_label)
        k = x.shape[1]
        check_labels(labels, k, self.activation, self.validate_labels)
        probs = activate(flat(x), self.activation)
        onehot = encode_target(labels, k, self.activation, probs.dtype)
        if annotated is not None:  # the loss mask: ignored voxels add to no sum
            zero = probs.new_zeros(())
            probs = torch.where(annotated[:, None], probs, zero)
            onehot = torch.where(annotated[:, None], onehot, zero)
        w = check_class_weights(class_weights, k, probs, self.validate_labels)
        if self.activation == "softmax" and not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
            w = None if w is None else w[1:]
        tp = (probs * onehot).sum(-1)
        sum_p = (probs if self.power == 1 else probs * probs).sum(-1)
        sum_g = onehot.sum(-1)
        per_sample = _class_mean(self.class_loss(tp, sum_p, sum_g), w)
        batch_value = None
        if self.batch and self.reduction == "mean":
            batch_value = _class_mean(self.class_loss(tp.sum(0), sum_p.sum(0), sum_g.sum(0)), w)
        return finish(per_sample, batch_value, self.reduction)

    def instance_loss(self, stats: InstanceStats) -> Tensor:
        """Loss of every blob-loss instance (one-vs-rest, other instances masked to p = 0); shape (M,)."""
        tp = stats.inst_sum("p")
        q = "p" if self.power == 1 else "p2"
        sum_p = (tp if q == "p" else stats.inst_sum(q)) + stats.bg_sum(q)
        return self.class_loss(tp, sum_p, stats.size)


def _class_mean(per_class: Tensor, weights: Tensor | None) -> Tensor:
    """``mean_c w_c L_c`` over the last axis."""
    if weights is not None:
        per_class = per_class * weights
    return per_class.mean(-1)


class DiceLoss(RegionLoss):
    """Soft Dice loss; ``squared=True`` is the squared-denominator form (registered as ``soft_dice``).

    Args:
        squared: denominator ``sum p^2 + sum g^2`` instead of ``sum p + sum g``.
        include_background: keep softmax channel 0 (ignored for sigmoid, whose channels are all foreground).
        batch: one Dice per class over the whole batch (for ``reduction="mean"``).
        smooth_nr, smooth_dr: >= 0, added to numerator and denominator.
        activation: ``"softmax"`` (K >= 2 classes) or ``"sigmoid"`` (binary / multi-label channels).
        reduction: ``"mean"`` or ``"none"`` (per-sample, shape (B,)).
        validate_labels: check label and class-weight values every call (host syncs; for direct API use,
            training validates labels once per case at load).
        ignore_label: the label value left out of every sum (module docstring); None: none.
    """

    def __init__(self, squared: bool = False, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.squared = squared
        self.power = 2 if squared else 1

    def class_loss(self, tp: Tensor, sum_p: Tensor, sum_g: Tensor) -> Tensor:
        den = (sum_p + sum_g + self.smooth_dr).clamp_min(1e-8)
        return 1.0 - (2.0 * tp + self.smooth_nr) / den


@LOSSES.register("dice")
def dice(**kwargs: object) -> DiceLoss:
    """Plain soft Dice, ``1 - (2 sum pg + s) / (sum p + sum g + s)``."""
    return DiceLoss(squared=False, **kwargs)


@LOSSES.register("soft_dice")
def soft_dice(**kwargs: object) -> DiceLoss:
    """Squared-denominator soft Dice (V-Net; paper 002 eq. 1), ``1 - (2 sum pg + s) / (sum p^2 + sum g^2 + s)``."""
    return DiceLoss(squared=True, **kwargs)
