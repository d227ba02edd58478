"""Overlap metrics: Dice, IoU, precision, recall per class, from true/false positive/negative counts.

With ``TP = |P & G|``, ``FP = |P \\ G|``, ``FN = |G \\ P|`` (voxel counts):

- Dice ``= 2 TP / (2 TP + FP + FN)`` = ``2|P & G| / (|P| + |G|)``
- IoU ``= TP / (TP + FP + FN)``
- precision ``= TP / (TP + FP)``, recall ``= TP / (TP + FN)``

Undefined cases follow a :class:`~focusseg.metrics.conventions.Convention` (module docstring there).
:func:`dice_per_class` is the one Dice used by the trainer's validation too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from focusseg.metrics.conventions import Convention, get_convention

#: Largest label value boxed with one direct ``find_objects`` table; larger values are relabelled compactly first.
DIRECT_MAX_LABEL = 1 << 16


def label_boxes(labelmap: np.ndarray, labels: Sequence[int]) -> dict[int, tuple[slice, ...] | None]:
    """Bounding box of each positive integer ``label`` in ``labelmap`` (one pass); None where absent."""
    labels = [int(v) for v in labels]
    if any(v <= 0 for v in labels):
        raise ValueError(f"labels must be positive integers, got {labels}")
    if labelmap.dtype == bool:
        labelmap = labelmap.view(np.uint8)
    if not np.issubdtype(labelmap.dtype, np.integer):
        labelmap = labelmap.astype(np.int64)
    top = max(labels, default=0)
    if not top:
        return {}
    if top <= DIRECT_MAX_LABEL:
        found = ndimage.find_objects(labelmap, max_label=top)
        return {v: found[v - 1] for v in labels}
    # find_objects keeps a table of max_label entries: with a label value of 10^8 that is gigabytes. Relabel the
    # values present to 1..n (memory proportional to the volume, whatever the values) and box those.
    values, compact = np.unique(labelmap, return_inverse=True)
    found = ndimage.find_objects(compact.reshape(labelmap.shape).astype(np.int64, copy=False) + 1)
    index = {int(u): i for i, u in enumerate(values)}
    return {v: found[index[v]] if v in index else None for v in labels}


def present_label_boxes(labelmap: np.ndarray) -> dict[int, tuple[slice, ...]] | None:
    """Every non-zero value of a label map with its bounding box, or None when the values are not integers in
    ``[0, DIRECT_MAX_LABEL]`` (then :func:`label_boxes` with the values found by ``np.unique`` applies).

    The map is first cut to the box of its non-zero voxels (one ``any`` projection per axis), then one
    ``find_objects`` pass over that box gives every label's box: on a 182 x 218 x 182 lesion map this takes about
    2.5 ms, where ``np.unique`` and a ``find_objects`` pass over the whole map take 60 ms.
    """
    if labelmap.dtype == bool:
        labelmap = labelmap.view(np.uint8)
    if not np.issubdtype(labelmap.dtype, np.integer) or labelmap.size == 0:
        return None
    low, high = int(labelmap.min()), int(labelmap.max())
    if low < 0 or high > DIRECT_MAX_LABEL:
        return None
    if high == 0:
        return {}
    start, stop = [], []
    for axis in range(labelmap.ndim):
        hit = np.flatnonzero(labelmap.any(axis=tuple(a for a in range(labelmap.ndim) if a != axis)))
        start.append(int(hit[0]))
        stop.append(int(hit[-1]) + 1)
    crop = labelmap[tuple(slice(a, b) for a, b in zip(start, stop))]
    found = ndimage.find_objects(crop, max_label=high)
    return {v: tuple(slice(sl.start + a, sl.stop + a) for sl, a in zip(box, start))
            for v, box in enumerate(found, 1) if box is not None}


def merge_boxes(*boxes: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    """Smallest box holding every non-None box; None when all are None."""
    real = [b for b in boxes if b is not None]
    if not real:
        return None
    return tuple(slice(min(b[a].start for b in real), max(b[a].stop for b in real)) for a in range(len(real[0])))


def confusion_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """``(TP, FP, FN)`` voxel counts of two binary masks (non-zero = inside)."""
    p, g = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    tp = int(np.count_nonzero(p & g))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(g)) - tp


def overlap_metrics(tp: int, fp: int, fn: int, convention: str | Convention = "default") -> dict[str, float]:
    """``{"dice", "iou", "precision", "recall"}`` from counts, empty cases per ``convention``."""
    conv = get_convention(convention)
    if tp + fp + fn == 0:
        return dict.fromkeys(("dice", "iou", "precision", "recall"), conv.both_empty)
    gt_empty = tp + fn == 0
    out = {
        "dice": conv.dice_on_empty_gt if gt_empty else 2.0 * tp / (2 * tp + fp + fn),
        "iou": conv.dice_on_empty_gt if gt_empty else tp / (tp + fp + fn),
        "precision": tp / (tp + fp) if tp + fp else math.nan,
        "recall": tp / (tp + fn) if tp + fn else math.nan,
    }
    return out


def dice_per_class(pred: np.ndarray, gt: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice of each label of two integer label maps; NaN where the label is absent from both.

    ``Dice_l = 2|P_l & G_l| / (|P_l| + |G_l|)``.  Each label is counted only inside the union of its two
    bounding boxes (found in one pass per map), so many small organs cost little.  Label 0 is allowed
    (counted over the whole volume).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {pred.shape} vs {gt.shape}")
    positive = [int(v) for v in labels if int(v) > 0]
    boxes_p, boxes_g = label_boxes(pred, positive), label_boxes(gt, positive)
    out: dict[int, float] = {}
    for v in labels:
        v = int(v)
        box = tuple(slice(None) for _ in gt.shape) if v <= 0 else merge_boxes(boxes_p[v], boxes_g[v])
        if box is None:
            out[v] = math.nan
            continue
        tp, fp, fn = confusion_counts(pred[box] == v, gt[box] == v)
        out[v] = 2.0 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    return out
