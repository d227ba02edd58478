"""Surface metrics: normalised surface Dice (NSD), robust Hausdorff (HD95) and ASSD, spacing-aware.

Definitions (deepmind surface-distance, used by FLARE's evaluation code; Nikolov et al. 2021):

- Surfels ``S_G``, ``S_P`` are the border voxel corners of ground truth and prediction with areas ``a``
  (see :mod:`focusseg.metrics.surfels`); ``d(x, S)`` is the Euclidean distance in mm from corner ``x``
  to the nearest surfel corner of ``S`` (voxel indices scaled by ``spacing``).
- ``NSD_tau = (sum_{x in S_G, d(x,S_P) <= tau} a_x + sum_{y in S_P, d(y,S_G) <= tau} a_y)
  / (sum_{S_G} a + sum_{S_P} a)``.
- ``HD_p = max(Q_p(d(S_G, S_P)), Q_p(d(S_P, S_G)))`` where ``Q_p`` is the area-weighted percentile: sort
  the distances, take the first whose cumulative area fraction is ``>= p / 100`` (deepmind's
  ``searchsorted`` reading, not an interpolating quantile).
- ``ASSD = (sum_{S_G} a d(x, S_P) + sum_{S_P} a d(y, S_G)) / (sum_{S_G} a + sum_{S_P} a)`` (area-weighted
  pool of both directions; deepmind returns the two directed means, this is their area-weighted mean).

Empty masks: both empty -> every metric NaN; exactly one empty -> NSD 0, HD95 and ASSD NaN (deepmind
returns inf; an infinite distance has no place in a mean, challenge conventions in
:mod:`focusseg.metrics.conventions` may substitute a value).

Speed: everything is computed once on the bounding box of ``pred | gt`` (the corners of the box cover
all surfels) and the distances are computed once per direction and shared by NSD, HD95 and ASSD.
Nearest-surfel distances come from a k-d tree over the other surface's corners; the distance is then
recomputed from integer index offsets as ``sqrt(sum((di * s)^2))``, bit-identical to scipy's
``distance_transform_edt(sampling=spacing)`` used by deepmind, so ``d <= tau`` ties resolve alike.
(Measured on a WORD liver, 2.2 M-corner box: both k-d tree queries together took less time than one
dense EDT of the box, and for scattered MS lesions the tree is an order of magnitude cheaper.)

:func:`hausdorff_voxel` gives MONAI's (and nnU-Net-era) other HD definition for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from focusseg.metrics.surfels import neighbourhood_codes, surfel_area_table


@dataclass(frozen=True)
class SurfaceDistances:
    """Per-surfel distances (mm) to the other surface and surfel areas (mm^2), unsorted."""

    dist_gt_to_pred: np.ndarray
    dist_pred_to_gt: np.ndarray
    area_gt: np.ndarray
    area_pred: np.ndarray


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every non-zero voxel, grown by ``margin`` (clipped); None if empty."""
    slices = []
    for axis in range(mask.ndim):
        proj = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if proj.size == 0:
            return None
        lo, hi = max(int(proj[0]) - margin, 0), min(int(proj[-1]) + 1 + margin, mask.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)


def union_box(*masks: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Bounding box of the union of ``masks`` (each boxed on its own: no full-volume ``|``); None if all empty."""
    boxes = [b for b in (bounding_box(m, margin) for m in masks) if b is not None]
    if not boxes:
        return None
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(len(boxes[0])))


def _check(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> tuple[float, float, float]:
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"pred and gt must be 3D arrays of one shape, got {pred.shape} and {gt.shape}")
    if len(spacing) != 3 or any(not s > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive floats, got {spacing!r}")
    return (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def _nearest(points: np.ndarray, targets: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) from each integer corner in ``points`` to the nearest corner in ``targets``."""
    if targets.shape[0] == 0:
        return np.full(points.shape[0], np.inf)
    tree = cKDTree(targets * spacing)
    _, idx = tree.query(points * spacing, k=1)
    delta = (targets[idx] - points).astype(np.float64) * spacing
    return np.sqrt((delta * delta).sum(axis=1))


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> SurfaceDistances:
    """Surfel distances and areas of two binary 3D masks (any dtype, non-zero = inside)."""
    sp = _check(pred, gt, spacing)
    box = union_box(pred, gt)
    if box is None:
        empty = np.zeros(0)
        return SurfaceDistances(empty, empty, empty, empty)
    table, spacing_arr = surfel_area_table(sp), np.asarray(sp)
    borders, areas = [], []
    for mask in (gt[box], pred[box]):
        codes = neighbourhood_codes(mask.astype(bool, copy=False))
        border = np.argwhere((codes != 0) & (codes != 255))
        borders.append(border)
        areas.append(table[codes[tuple(border.T)]])
    return SurfaceDistances(
        dist_gt_to_pred=_nearest(borders[0], borders[1], spacing_arr),
        dist_pred_to_gt=_nearest(borders[1], borders[0], spacing_arr),
        area_gt=areas[0],
        area_pred=areas[1],
    )


def normalized_surface_dice(sd: SurfaceDistances, tolerance: float) -> float:
    """NSD at ``tolerance`` mm (>= 0); NaN when both surfaces are empty, 0 when one is."""
    total = sd.area_gt.sum() + sd.area_pred.sum()
    if sd.area_gt.size == 0 and sd.area_pred.size == 0:
        return math.nan
    if sd.area_gt.size == 0 or sd.area_pred.size == 0:
        return 0.0
    hit = sd.area_gt[sd.dist_gt_to_pred <= tolerance].sum() + sd.area_pred[sd.dist_pred_to_gt <= tolerance].sum()
    return float(hit / total)


def _weighted_percentile(dist: np.ndarray, area: np.ndarray, percent: float) -> float:
    order = np.argsort(dist, kind="stable")
    cum = np.cumsum(area[order]) / area.sum()
    idx = min(int(np.searchsorted(cum, percent / 100.0)), dist.size - 1)
    return float(dist[order[idx]])


def robust_hausdorff(sd: SurfaceDistances, percent: float = 95.0) -> float:
    """Area-weighted ``percent`` Hausdorff distance (mm), max of both directions; NaN if a surface is empty."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must lie in [0, 100], got {percent}")
    if sd.area_gt.size == 0 or sd.area_pred.size == 0:
        return math.nan
    return max(
        _weighted_percentile(sd.dist_gt_to_pred, sd.area_gt, percent),
        _weighted_percentile(sd.dist_pred_to_gt, sd.area_pred, percent),
    )


def average_symmetric_surface_distance(sd: SurfaceDistances) -> float:
    """Area-weighted ASSD (mm); NaN if a surface is empty."""
    if sd.area_gt.size == 0 or sd.area_pred.size == 0:
        return math.nan
    num = (sd.area_gt * sd.dist_gt_to_pred).sum() + (sd.area_pred * sd.dist_pred_to_gt).sum()
    return float(num / (sd.area_gt.sum() + sd.area_pred.sum()))


def surface_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance: float = 1.0, percent: float = 95.0
) -> dict[str, float]:
    """``{"nsd", "hd95", "assd"}`` of two binary masks from one shared distance computation."""
    sd = surface_distances(pred, gt, spacing)
    return {
        "nsd": normalized_surface_dice(sd, tolerance),
        "hd95": robust_hausdorff(sd, percent),
        "assd": average_symmetric_surface_distance(sd),
    }


def hausdorff_voxel(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], percent: float = 95.0) -> float:
    """MONAI's ``compute_hausdorff_distance`` definition (for comparison, not used by ``evaluate``).

    Border voxels are ``mask & ~binary_erosion(mask)`` (6-connected erosion, voxel centres); each
    direction takes the linearly interpolated ``percent`` quantile of the unweighted distances, and the
    result is the larger one.  NaN if a mask is empty.  Differs from :func:`robust_hausdorff` by using
    voxel centres instead of corners, no area weights, and an interpolating quantile.
    """
    sp = np.asarray(_check(pred, gt, spacing))
    box = union_box(pred, gt)
    if box is None or not pred[box].any() or not gt[box].any():
        return math.nan
    masks = (np.pad(pred[box].astype(bool), 1), np.pad(gt[box].astype(bool), 1))
    edges = [np.argwhere(m & ~ndimage.binary_erosion(m)) for m in masks]
    d_pg = _nearest(edges[0], edges[1], sp)
    d_gp = _nearest(edges[1], edges[0], sp)
    return float(max(np.quantile(d_pg, percent / 100.0), np.quantile(d_gp, percent / 100.0)))
