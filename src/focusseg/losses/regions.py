"""Region-based loss (nnU-Net v2's ``DC_and_BCE_loss`` for region-based training, :mod:`focusseg.regions`):
soft Dice over the region channels plus binary cross-entropy with logits.

Here a *region* is a set of label values (BraTS whole tumour = {1, 2, 3}), not an overlap loss
(:class:`focusseg.losses.dice.RegionLoss`). Targets ``g_r = [label ∈ regions[r]]`` are built on the device; with
``p_r = sigmoid(logit_r)`` and sums per sample (or over the batch, ``batch=True``)::

    Dice_r = 1 - (2 sum p_r g_r + s_nr) / max(sum p_r + sum g_r + s_dr, 1e-8)
    L      = w_dice * mean_r Dice_r + w_bce * BCE(logits, g)

Every channel enters the Dice (nnU-Net's ``do_bg=True`` for regions). Built without ``regions``, channel ``c`` is
the region ``{c + 1}``. Reduction, class weights and deep supervision: ``docs/losses.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusseg.losses._build import LOSSES
from focusseg.losses._common import REDUCTIONS, as_compute_dtype, check_class_weights, check_option, flat, label_map


def check_regions(regions: object) -> list[list[int]]:
    """A loss's ``regions`` option: a non-empty list of non-empty lists of positive label values."""
    if not isinstance(regions, (list, tuple)) or not regions:
        raise ValueError(f"regions must be a non-empty list of lists of label values, got {regions!r}")
    out = []
    for r in regions:
        items = list(r) if isinstance(r, (list, tuple)) else [r]
        if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
            raise ValueError(f"region {r!r} must be a non-empty list of positive integer label values")
        out.append([int(v) for v in items])
    return out


class RegionDiceBCELoss(nn.Module):
    """Sigmoid soft Dice + BCE over label-value regions (module docstring).

    Args:
        regions: one list of label values per output channel; None: channel ``c`` is the region ``{c + 1}``.
        batch: one Dice per region over the whole batch (``reduction="mean"``); per-sample Dice otherwise.
        dice_weight, bce_weight: the weights of the two terms (>= 0, nnU-Net: 1 and 1).
        smooth_nr, smooth_dr: Dice smoothing (nnU-Net: 1e-5).
        reduction: ``"mean"`` or ``"none"`` (per sample, shape ``(B,)``).
        validate_labels: check label and class-weight values every call (host syncs; module docstring).
        ignore_label: must be None (focusseg refuses an ignore label with regions at ``dataset.json``).
    """

    def __init__(self, regions: Sequence[Sequence[int]] | None = None, batch: bool = True, dice_weight: float = 1.0,
                 bce_weight: float = 1.0, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, reduction: str = "mean",
                 validate_labels: bool = False, ignore_label: int | None = None) -> None:
        super().__init__()
        if ignore_label is not None:
            raise ValueError("region_dice_bce does not support an ignore label")
        self.regions = check_regions(regions) if regions is not None else None
        self.validate_labels = bool(validate_labels)
        if dice_weight < 0 or bce_weight < 0 or dice_weight + bce_weight <= 0:
            raise ValueError(f"dice_weight and bce_weight must be >= 0 with a positive sum, got "
                             f"{dice_weight}, {bce_weight}")
        if smooth_nr < 0 or smooth_dr < 0:
            raise ValueError("smoothing terms must be >= 0")
        self.batch, self.dice_weight, self.bce_weight = bool(batch), float(dice_weight), float(bce_weight)
        self.smooth_nr, self.smooth_dr = float(smooth_nr), float(smooth_dr)
        self.reduction = check_option("reduction", reduction, REDUCTIONS)
    def regions_for(self, k: int) -> list[list[int]]:
        """The regions of ``k`` output channels (the given ones, or ``{c + 1}`` per channel)."""
        regions = self.regions if self.regions is not None else [[c + 1] for c in range(k)]
        if k != len(regions):
            raise ValueError(f"logits have {k} channels for {len(regions)} regions")
        return regions

    def targets(self, x: Tensor, labels: Tensor) -> Tensor:
        """``(B, R, N)`` float region indicators of a ``(B, N)`` label map, on ``x``'s device and dtype."""
        regions = self.regions_for(x.shape[1])
        return torch.stack([torch.isin(labels, torch.tensor(r, device=labels.device)) for r in regions], 1).to(x.dtype)

    def _dice(self, tp: Tensor, sum_p: Tensor, sum_g: Tensor) -> Tensor:
        return 1.0 - (2.0 * tp + self.smooth_nr) / (sum_p + sum_g + self.smooth_dr).clamp_min(1e-8)

    def forward(self, logits: Tensor, target: Tensor, class_weights: Tensor | None = None) -> Tensor:
        x = as_compute_dtype(logits)
        labels = label_map(x, target)
        k = x.shape[1]
        top = max(v for r in self.regions_for(k) for v in r)
        if self.validate_labels and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > top):
            raise ValueError(f"labels must lie in [0, {top}] for these regions, got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        x = flat(x)
        g = self.targets(x, labels)
        p = torch.sigmoid(x)
        w = check_class_weights(class_weights, k, x, self.validate_labels)
        tp, sum_p, sum_g = (p * g).sum(-1), p.sum(-1), g.sum(-1)  # (B, R)
        bce = F.binary_cross_entropy_with_logits(x, g, reduction="none").mean(-1)  # (B, R)
        dice = self._dice(tp, sum_p, sum_g)
        if w is not None:
            dice, bce = dice * w, bce * w
        per_sample = self.dice_weight * dice.mean(-1) + self.bce_weight * bce.mean(-1)
        if self.reduction == "none":
            return per_sample
        if self.batch:
            bdice = self._dice(tp.sum(0), sum_p.sum(0), sum_g.sum(0))
            if w is not None:
                bdice = bdice * w
            return self.dice_weight * bdice.mean() + self.bce_weight * bce.mean()
        return per_sample.mean()


@LOSSES.register("region_dice_bce")
def region_dice_bce(regions: Sequence[Sequence[int]] | None = None, **kwargs: object) -> RegionDiceBCELoss:
    """Region-based Dice + BCE; ``regions`` comes from the plan (``engine.build`` passes the plan's regions)."""
    return RegionDiceBCELoss(regions, **kwargs)  # type: ignore[arg-type]


#: Loss names that train region outputs (a region-based plan's ``training.loss`` must be one of them).
REGION_LOSSES = ("region_dice_bce",)
