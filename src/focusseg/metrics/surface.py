"""Surface metrics: normalised surface Dice (NSD), robust Hausdorff (HD95) and ASSD, spacing-aware.

Definitions of deepmind's surface-distance (used by FLARE's evaluation; Nikolov et al. 2021), with surfels
``S_G``, ``S_P`` of area ``a`` (:mod:`focusseg.metrics.surfels`) and ``d(x, S)`` the distance in mm: ``NSD_tau``
= area within ``tau`` of the other surface / total area; ``HD_p`` = the larger of the two directed area-weighted
``p``-th percentiles (deepmind's ``searchsorted`` reading); ASSD = the area-weighted mean of both directions.
Both masks empty -> NaN; one empty -> NSD 0, HD95 and ASSD NaN (deepmind returns inf).

Computed once on the bounding box of ``pred | gt``, the distances shared by the three metrics; nearest-surfel
distances come from a k-d tree and are recomputed from integer offsets, bit-identical to scipy's EDT, so
``d <= tau`` ties resolve as deepmind's. :func:`hausdorff_voxel`: MONAI's HD, for comparison. ``docs/metrics.md``.
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
    """NSD, HD and ASSD of two binary masks from one shared distance computation.

    Args:
        pred: binary prediction mask.
        gt: binary ground-truth mask of the same shape.
        spacing: voxel spacing in mm, one value per axis.
        tolerance: the NSD tolerance ``tau`` in mm.
        percent: the Hausdorff percentile (95: HD95).

    Returns:
        ``{"nsd": ..., "hd95": ..., "assd": ...}``; empty masks give the values of the module docstring.
    """
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
