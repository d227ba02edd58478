"""Region-based training (nnU-Net v2's ``documentation/region_based_training.md``): shared helpers.

A region is a set of label values; regions may overlap (BraTS: whole tumour ⊇ tumour core ⊇ enhancing tumour).
A plan records ``regions`` (lists of label values, ``dataset.json`` order), ``regions_class_order`` and
``region_names``; ``n_classes`` keeps its meaning (max label value + 1), so the data path is unchanged.

* Network outputs: one sigmoid channel per region, no background channel (:func:`output_channels`).
* Targets: ``label ∈ regions[r]`` (:func:`region_masks`), built on the device (exact under nearest resizing).
* Prediction -> labels (:func:`regions_to_labels`): region ``r`` where logit > 0, painted in order with the value
  ``regions_class_order[r]``, later regions overwriting earlier ones (nnU-Net's reading).
* Scores per region, keyed ``r + 1``: ``2 TP_r / (2 TP_r + FP_r + FN_r)`` (:func:`region_counts`).
Details: ``docs/regions.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

Regions = Sequence[Sequence[int]]


def plan_regions(plan: Mapping[str, Any]) -> list[list[int]] | None:
    """The plan's regions (a list of lists of label values), or None for a plan that trains label classes."""
    regions = plan.get("regions")
    return None if not regions else [[int(v) for v in r] for r in regions]


def output_channels(plan: Mapping[str, Any]) -> int:
    """Network output channels: one per region for a region plan, else ``n_classes`` (background included)."""
    regions = plan_regions(plan)
    return len(regions) if regions else int(plan["n_classes"])


def region_masks(labels: torch.Tensor, regions: Regions, channel_axis: bool | None = None) -> torch.Tensor:
    """``(B, R, *spatial)`` bool region masks of an integer label map ``(B, *spatial)`` or ``(B, 1, *spatial)``
    (on its device, no host sync): channel ``r`` is ``labels ∈ regions[r]``. ``channel_axis``: whether axis 1 is
    the label map's channel axis; None: when it has size 1 (give it explicitly where a spatial axis may be 1)."""
    if channel_axis is None:
        channel_axis = labels.ndim >= 2 and labels.shape[1] == 1
    if channel_axis:
        labels = labels[:, 0]
    lab = labels.long()
    out = []
    for region in regions:
        values = torch.as_tensor([int(v) for v in region], device=lab.device, dtype=lab.dtype)
        out.append(torch.isin(lab, values))
    return torch.stack(out, 1)


def region_masks_np(labels: np.ndarray, regions: Regions) -> np.ndarray:
    """``(R, *shape)`` bool region masks of one integer label map (numpy)."""
    return np.stack([np.isin(labels, np.asarray([int(v) for v in r])) for r in regions])


def regions_to_labels(masks: torch.Tensor | np.ndarray, class_order: Sequence[int]) -> torch.Tensor | np.ndarray:
    """Label map from ``(R, *spatial)`` region masks (bool, or probabilities thresholded at 0.5 by the caller):
    background 0, then region ``r`` painted with ``class_order[r]`` in order (later regions overwrite earlier).
    The dtype is uint8 when every value fits, else int16 (torch or numpy, as given)."""
    top = max([0, *[int(v) for v in class_order]])
    if masks.shape[0] != len(class_order):
        raise ValueError(f"{masks.shape[0]} region masks for {len(class_order)} regions_class_order values")
    if isinstance(masks, torch.Tensor):
        out = torch.zeros(masks.shape[1:], dtype=torch.uint8 if top < 256 else torch.int16, device=masks.device)
        for r, value in enumerate(class_order):
            out.masked_fill_(masks[r].bool(), int(value))
        return out
    arr = np.zeros(masks.shape[1:], dtype=np.uint8 if top < 256 else np.int16)
    for r, value in enumerate(class_order):
        arr[np.asarray(masks[r], dtype=bool)] = int(value)
    return arr


def labels_from_region_probabilities(probabilities: torch.Tensor | np.ndarray,
                                     class_order: Sequence[int]) -> torch.Tensor | np.ndarray:
    """Label map from ``(R, *spatial)`` region sigmoids: region ``r`` where ``p > 0.5``, painted in
    ``class_order`` order (:func:`regions_to_labels`). The one rule ``predict`` and ``focusseg ensemble`` share."""
    return regions_to_labels(probabilities > 0.5, class_order)


def region_counts(logits: torch.Tensor, labels: torch.Tensor, regions: Regions) -> torch.Tensor:
    """``(3, R)`` int64 TP, FP, FN per region over a batch: prediction ``logit > 0`` (sigmoid > 0.5) of
    ``(B, R, *spatial)`` logits against the region masks of the label map; on the device, no host sync."""
    pred = logits > 0
    ref = region_masks(labels, regions, channel_axis=labels.ndim == logits.ndim)
    dims = [0, *range(2, pred.ndim)]
    tp = (pred & ref).sum(dims)
    fp = (pred & ~ref).sum(dims)
    fn = (~pred & ref).sum(dims)
    return torch.stack([tp, fp, fn]).long()


def dice_from_region_counts(counts: np.ndarray | torch.Tensor) -> dict[int, float]:
    """``{r + 1: 2 TP / (2 TP + FP + FN)}`` from ``(3, R)`` counts; NaN where the region is absent from both."""
    c = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64)
    out = {}
    for r in range(c.shape[1]):
        denom = 2 * c[0, r] + c[1, r] + c[2, r]
        out[r + 1] = float(2 * c[0, r] / denom) if denom > 0 else float("nan")
    return out
