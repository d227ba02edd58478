"""Voxel-wise losses: cross-entropy, binary cross-entropy, TopK cross-entropy and focal loss.

* ``ce`` (softmax): ``l_v = -w_{y_v} log p_{y_v}(v)``, mean ``sum_v l_v / sum_v w_{y_v}`` (torch's weighted mean).
* ``bce`` (sigmoid): ``-w_c [g log p + (1 - g) log(1 - p)]`` averaged over channels and voxels.
* ``topk_ce`` (nnU-Net ``TopKLoss``, paper 002 eq. 1): the mean of the ``max(1, int(N k / 100))`` largest
  weighted voxel CE terms (k = 10).
* ``focal`` (Lin et al. 2017): ``-a w (1 - p)^gamma log p`` averaged over voxels (sigmoid: and over channels,
  identical to MONAI ``FocalLoss``; softmax: the channels used times MONAI's value).

``ignore_label`` voxels are left out of every term and every mean; a batch without annotated voxels gives 0.
Per-sample forms and the ``alpha`` / ``include_background`` readings: ``docs/losses.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusseg.losses._build import LOSSES
from focusseg.losses._common import (
    ACTIVATIONS,
    REDUCTIONS,
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


class _VoxelLoss(nn.Module):
    """Common parts: option checks and the blob-loss instance path ``(sum_inst l(p,1) + sum_bg l(p,0)) / N``."""

    def __init__(self, activation: str, reduction: str, validate_labels: bool = False,
                 ignore_label: int | None = None) -> None:
        super().__init__()
        self.activation = check_option("activation", activation, ACTIVATIONS)
        self.reduction = check_option("reduction", reduction, REDUCTIONS)
        self.validate_labels = bool(validate_labels)
        self.ignore_label = check_ignore_label(ignore_label)

    def _prepare(self, logits: Tensor, target: Tensor, class_weights: Tensor | None):
        """``(x (B, K, N), labels (B, N), weights, annotated (B, N) bool or None)``; ignored voxels labelled 0."""
        x = flat(as_compute_dtype(logits))
        labels, annotated = split_ignore(label_map(logits, target), self.ignore_label)
        check_labels(labels, x.shape[1], self.activation, self.validate_labels)
        return x, labels, check_class_weights(class_weights, x.shape[1], x, self.validate_labels), annotated

    def voxel_terms(self, v) -> tuple[Tensor, Tensor]:  # pragma: no cover - overridden
        raise NotImplementedError

    def instance_loss(self, stats: InstanceStats) -> Tensor:
        """Binary voxel loss of every instance; masked voxels (p = 0, g = 0) contribute 0."""
        pos = stats.inst_sum(lambda v: self.voxel_terms(v)[0])
        neg = stats.bg_sum(lambda v: self.voxel_terms(v)[1])
        return (pos + neg) / stats.norm


def voxel_ce(x: Tensor, labels: Tensor, weights: Tensor | None) -> Tensor:
    """``-w_y log softmax(x)_y`` per voxel; x ``(B, K, N)``, labels ``(B, N)`` -> ``(B, N)``."""
    nll = -torch.log_softmax(x, dim=1).gather(1, labels[:, None]).squeeze(1)
    return nll if weights is None else nll * weights[labels]


def masked_voxel_mean(terms: Tensor, annotated: Tensor, reduction: str, per_voxel: int = 1) -> Tensor:
    """Mean of voxel terms over the annotated voxels: ``terms`` ``(B, N)`` or ``(B, C, N)`` (``per_voxel = C``
    terms per voxel), ``annotated`` ``(B, N)`` bool. ``"none"``: per sample; ``"mean"``: over the batch at once.
    No annotated voxel: 0 (with a gradient path)."""
    zero = terms.new_zeros(())
    if terms.ndim == 3:
        sums = torch.where(annotated[:, None], terms, zero).sum((1, 2))
    else:
        sums = torch.where(annotated, terms, zero).sum(1)
    counts = annotated.sum(1).to(terms.dtype) * per_voxel
    if reduction == "none":
        return sums / counts.clamp_min(1.0)
    return sums.sum() / counts.sum().clamp_min(1.0)


@LOSSES.register("ce")
class CELoss(_VoxelLoss):
    """Softmax cross-entropy. Args: reduction ``"mean"`` | ``"none"``; validate_labels: check label and
    class-weight values every call (host syncs; for direct API use, training validates labels at load);
    ignore_label: the label value left out (module docstring), None: none."""

    def __init__(self, reduction: str = "mean", validate_labels: bool = False, ignore_label: int | None = None
                 ) -> None:
        super().__init__("softmax", reduction, validate_labels, ignore_label)

    def forward(self, logits: Tensor, target: Tensor, class_weights: Tensor | None = None) -> Tensor:
        x, labels, w, annotated = self._prepare(logits, target, class_weights)
        loss = voxel_ce(x, labels, w)
        if annotated is not None:
            if w is None:
                return masked_voxel_mean(loss, annotated, self.reduction)
            zero = loss.new_zeros(())
            loss, wv = torch.where(annotated, loss, zero), torch.where(annotated, w[labels], zero)
        elif w is None:
            return finish(loss.mean(1), None, self.reduction)
        else:
            wv = w[labels]
        per_sample = loss.sum(1) / wv.sum(1).clamp_min(1e-12)
        return finish(per_sample, loss.sum() / wv.sum().clamp_min(1e-12), self.reduction)

    def instance_loss(self, stats: InstanceStats) -> Tensor:
        """Binary cross-entropy of every blob instance (one-vs-rest): ``-(sum_u log p + sum_bg log(1-p)) / N``."""
        return (stats.bg_sum("nlog1mp") - stats.inst_sum("logp")) / stats.norm


@LOSSES.register("bce")
class BCELoss(_VoxelLoss):
    """Binary cross-entropy on sigmoid channels (multi-label). Args: reduction ``"mean"`` | ``"none"``;
    validate_labels, ignore_label as for :class:`CELoss`."""

    def __init__(self, reduction: str = "mean", validate_labels: bool = False, ignore_label: int | None = None
                 ) -> None:
        super().__init__("sigmoid", reduction, validate_labels, ignore_label)

    def forward(self, logits: Tensor, target: Tensor, class_weights: Tensor | None = None) -> Tensor:
        x, labels, w, annotated = self._prepare(logits, target, class_weights)
        y = encode_target(labels, x.shape[1], "sigmoid", x.dtype)
        loss = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        if w is not None:
            loss = loss * w[:, None]
        if annotated is not None:
            return masked_voxel_mean(loss, annotated, self.reduction, per_voxel=x.shape[1])
        return finish(loss.mean((1, 2)), None, self.reduction)

    def instance_loss(self, stats: InstanceStats) -> Tensor:
        """Binary cross-entropy of every blob instance (one-vs-rest): ``-(sum_u log p + sum_bg log(1-p)) / N``."""
        return (stats.bg_sum("nlog1mp") - stats.inst_sum("logp")) / stats.norm


@LOSSES.register("topk_ce")
class TopKCELoss(_VoxelLoss):
    """Mean of the k % largest voxel cross-entropies.

    Args:
        k: percentage in (0, 100]; 10 as nnU-Net and paper 002.
        reduction: ``"mean"`` (top k % of all B*N voxels) or ``"none"`` (top k % within each sample).
        validate_labels, ignore_label: as for :class:`CELoss` (the top k % of the annotated voxels).
    """

    def __init__(self, k: float = 10.0, reduction: str = "mean", validate_labels: bool = False,
                 ignore_label: int | None = None) -> None:
        super().__init__("softmax", reduction, validate_labels, ignore_label)
        self.instance_loss = None  # a top-k share has no per-instance form (not a blob inner loss)
        if not 0 < k <= 100:
            raise ValueError(f"k must be a percentage in (0, 100], got {k}")
        self.k = float(k)

    def _count(self, n: int) -> int:
        return max(1, int(n * self.k / 100))

    def forward(self, logits: Tensor, target: Tensor, class_weights: Tensor | None = None) -> Tensor:
        x, labels, w, annotated = self._prepare(logits, target, class_weights)
        loss = voxel_ce(x, labels, w)
        if annotated is not None:
            return self._masked_topk(loss, annotated)
        if self.reduction == "none":
            return torch.topk(loss, self._count(loss.shape[1]), dim=1, sorted=False).values.mean(1)
        return torch.topk(loss.reshape(-1), self._count(loss.numel()), sorted=False).values.mean()

    def _masked_topk(self, loss: Tensor, annotated: Tensor) -> Tensor:
        """Mean of the ``max(1, int(n_A k / 100))`` largest annotated terms, sync-free: ignored voxels get -1
        (below every CE term, >= 0), the ``int(N k / 100)`` largest of all voxels are taken sorted (they hold the
        wanted ones, as ``n_A <= N``) and the first ``m`` averaged, ``m`` a device value."""
        if self.reduction == "mean":
            loss, annotated = loss.reshape(1, -1), annotated.reshape(1, -1)
        cap = self._count(loss.shape[1])
        vals = torch.topk(torch.where(annotated, loss, -1.0), cap, dim=1, sorted=True).values.clamp_min(0.0)
        n_a = annotated.sum(1, dtype=torch.float64)
        m = torch.floor(n_a * self.k / 100).clamp_min(1.0)
        keep = torch.arange(cap, device=loss.device, dtype=torch.float64)[None] < m[:, None]
        out = (vals * keep.to(vals.dtype)).sum(1) / m.to(vals.dtype)
        return out[0] if self.reduction == "mean" else out


@LOSSES.register("focal")
class FocalLoss(_VoxelLoss):
    """Focal loss.

    Args:
        gamma: >= 0 focusing exponent (0 gives CE/BCE).
        alpha: None, a scalar in [0, 1] or one value per channel (see the module docstring).
        include_background: softmax only; False drops the background channel's terms (MONAI).
        activation: ``"softmax"`` or ``"sigmoid"``.
        reduction: ``"mean"`` | ``"none"``.
        validate_labels, ignore_label: as for :class:`CELoss`.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        include_background: bool = True,
        activation: str = "softmax",
        reduction: str = "mean",
        validate_labels: bool = False,
        ignore_label: int | None = None,
    ) -> None:
        super().__init__(activation, reduction, validate_labels, ignore_label)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.alpha = alpha if alpha is None or isinstance(alpha, (int, float)) else tuple(float(a) for a in alpha)
        self.include_background = include_background

    def _alpha(self, k: int, like: Tensor) -> Tensor | None:
        if self.alpha is None:
            return None
        if isinstance(self.alpha, tuple):
            if len(self.alpha) != k:
                raise ValueError(f"alpha has {len(self.alpha)} values for {k} channels")
            return torch.tensor(self.alpha, dtype=like.dtype, device=like.device)
        a = float(self.alpha)
        if self.activation == "softmax":
            return torch.tensor([1.0 - a] + [a] * (k - 1), dtype=like.dtype, device=like.device)
        return torch.full((k,), a, dtype=like.dtype, device=like.device)

    def forward(self, logits: Tensor, target: Tensor, class_weights: Tensor | None = None) -> Tensor:
        x, labels, w, annotated = self._prepare(logits, target, class_weights)
        k = x.shape[1]
        alpha = self._alpha(k, x)
        if self.activation == "softmax":
            lse = torch.logsumexp(x, dim=1)
            logp = x.gather(1, labels[:, None]).squeeze(1) - lse
            # log(1 - p_y) = logsumexp over the other classes - lse: finite gradients even where p_y == 1
            log1mp = torch.logsumexp(x.scatter(1, labels[:, None], float("-inf")), dim=1) - lse
            loss = -torch.exp(self.gamma * log1mp) * logp
            if alpha is not None:
                loss = loss * alpha[labels]
            if w is not None:
                loss = loss * w[labels]
            if not self.include_background:
                loss = loss * (labels > 0)
            if annotated is not None:
                return masked_voxel_mean(loss, annotated, self.reduction)
            return finish(loss.mean(1), None, self.reduction)
        y = encode_target(labels, k, "sigmoid", x.dtype)
        bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        loss = torch.exp(self.gamma * F.logsigmoid(-x * (2 * y - 1))) * bce  # (1 - p_t)^gamma * bce
        if alpha is not None:
            a = alpha[:, None]
            if isinstance(self.alpha, tuple):  # per-class alpha weighs the positives only (MONAI)
                loss = loss * torch.where(y > 0, a, torch.ones_like(a))
            else:
                loss = loss * (y * a + (1 - y) * (1 - a))
        if w is not None:
            loss = loss * w[:, None]
        if annotated is not None:
            return masked_voxel_mean(loss, annotated, self.reduction, per_voxel=k)
        return finish(loss.mean((1, 2)), None, self.reduction)

    def voxel_terms(self, v) -> tuple[Tensor, Tensor]:
        """Binary one-vs-rest terms for blob loss: ``-a (1-p)^g log p`` and ``-(1-a) p^g log(1-p)``."""
        if isinstance(self.alpha, tuple):
            raise ValueError("blob loss uses a binary focal term: alpha must be None or a scalar")
        a = 1.0 if self.alpha is None else float(self.alpha)
        b = 1.0 if self.alpha is None else 1.0 - a
        return -a * torch.exp(self.gamma * v.log1mp) * v.logp, -b * torch.exp(self.gamma * v.logp) * v.log1mp
