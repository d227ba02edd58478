"""Lesion-wise detection metrics: instances are connected components (connectivity 6, 18 or 26).

GT lesions ``G_1..G_n``, predicted components ``P_1..P_m``. A GT lesion is *detected* (TP) when
``|G_i & P| / |G_i| > min_overlap`` (default 0: at least one voxel), else it is a FN; a predicted component is a
FP when ``|P_j & G| / |P_j| <= min_overlap``. Precision ``= #{P_j not FP} / m``, recall ``= TP / n`` (NaN when
the denominator is 0), F1 ``= 2 P R / (P + R)``, count difference ``= |m - n|``.

Lesion-wise Dice (BraTS 2023 style, without BraTS's dilation of the GT): each GT lesion scores
``Dice(G_i, union of the P_j touching G_i)``, each predicted component touching no GT lesion scores 0; the result
is their mean. Both empty: precision, recall, F1 and lesion Dice are ``both_empty`` (NaN by default).
Details: ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cc3d
import numpy as np


@dataclass(frozen=True)
class LesionStats:
    """Lesion-wise counts and scores of one binary case (see module docstring for definitions)."""

    tp: int
    fp: int
    fn: int
    n_gt: int
    n_pred: int
    precision: float
    recall: float
    f1: float
    count_difference: int
    lesion_dice: float


def _components(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    labels, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    return labels, int(n)


def lesion_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    connectivity: int = 26,
    min_overlap: float = 0.0,
    both_empty: float = math.nan,
) -> LesionStats:
    """Lesion-wise TP/FP/FN, precision, recall, F1, count difference and lesion-wise Dice of two masks.

    Args:
        pred: binary prediction mask.
        gt: binary ground-truth mask of the same shape.
        connectivity: cc3d connectivity of the lesions (6, 18 or 26).
        min_overlap: the detection threshold of the module docstring, in [0, 1).
        both_empty: the value of precision, recall, F1 and lesion Dice when both masks are empty.

    Returns:
        A :class:`LesionStats` with the counts and the metrics.

    Raises:
        ValueError: when the shapes differ or ``min_overlap`` is outside [0, 1).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {pred.shape} vs {gt.shape}")
    if not 0.0 <= min_overlap < 1.0:
        raise ValueError(f"min_overlap must lie in [0, 1), got {min_overlap}")
    g_lab, n = _components(gt.astype(bool, copy=False), connectivity)
    p_lab, m = _components(pred.astype(bool, copy=False), connectivity)
    g_size = np.bincount(g_lab.ravel(), minlength=n + 1).astype(np.float64)
    p_size = np.bincount(p_lab.ravel(), minlength=m + 1).astype(np.float64)
    both = (g_lab > 0) & (p_lab > 0)
    pairs, overlap = np.unique(g_lab[both].astype(np.int64) * (m + 1) + p_lab[both], return_counts=True)
    gi, pj = pairs // (m + 1), pairs % (m + 1)
    g_cov = np.bincount(gi, weights=overlap, minlength=n + 1)[1:]
    p_cov = np.bincount(pj, weights=overlap, minlength=m + 1)[1:]
    tp = int(np.count_nonzero(g_cov / np.maximum(g_size[1:], 1) > min_overlap))
    p_hit = int(np.count_nonzero(p_cov / np.maximum(p_size[1:], 1) > min_overlap))
    fp, fn = m - p_hit, n - tp
    if n == 0 and m == 0:
        return LesionStats(0, 0, 0, 0, 0, both_empty, both_empty, both_empty, 0, both_empty)
    precision = p_hit / m if m else math.nan
    recall = tp / n if n else math.nan
    if n == 0 or m == 0 or precision + recall == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    matched_size = np.bincount(gi, weights=p_size[pj], minlength=n + 1)[1:]
    per_lesion = 2 * g_cov / (g_size[1:] + matched_size)
    fp_any = int(np.count_nonzero(p_cov == 0))
    lesion_dice = float(per_lesion.sum() / (n + fp_any))
    return LesionStats(tp, fp, fn, n, m, precision, recall, f1, abs(m - n), lesion_dice)
