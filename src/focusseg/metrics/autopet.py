"""autoPET false-positive / false-negative volumes and the FP-PET aggregated score.

Definitions of the official autoPET evaluation (lab-midas/autoPET ``val_script.py``), with components of
18-connectivity (cc3d) and ``v = prod(spacing) / 1000`` ml per voxel (spacing in mm from the header):

- ``FPV = v * sum_{C in cc(P), |C & G| = 0} |C|``: predicted components that touch no ground-truth voxel;
- ``FNV = v * sum_{C in cc(G), |C & P| = 0} |C|``: GT components that no predicted voxel touches.

FP-PET (Chen et al., autoPET 2023, section 3.1, eq. 1): ``score = dice - 0.1 FPV - 0.1 FNV`` with Dice in
[0, 1] (the paper does not state the scale; [0, 1] is what the official code returns) and volumes in ml.
Empty-GT handling (autoPET III: FNV undefined) is the caller's convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import numpy as np

AUTOPET_CONNECTIVITY = 18


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in ml: ``prod(spacing_mm) / 1000``."""
    return float(np.prod([float(s) for s in spacing[:3]])) / 1000.0


def unmatched_component_voxels(source: np.ndarray, other: np.ndarray, connectivity: int) -> int:
    """Voxels of the connected components of ``source`` that share no voxel with ``other``."""
    src = source.astype(bool, copy=False)
    if not src.any():
        return 0
    labels, n = cc3d.connected_components(src, connectivity=connectivity, return_N=True)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    touched = np.zeros(n + 1, bool)
    touched[np.unique(labels[other.astype(bool, copy=False) & src])] = True
    touched[0] = True
    return int(sizes[~touched].sum())


def false_positive_volume(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], connectivity: int = AUTOPET_CONNECTIVITY
) -> float:
    """FPV in ml: predicted components with no GT overlap (0 when the prediction is empty).

    Args:
        pred: binary prediction mask.
        gt: binary ground-truth mask of the same shape.
        spacing: voxel spacing in mm (the first three values are used).
        connectivity: cc3d connectivity of the components (autoPET: 18).

    Returns:
        The false-positive volume in ml.
    """
    return unmatched_component_voxels(pred, gt, connectivity) * voxel_volume_ml(spacing)


def false_negative_volume(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], connectivity: int = AUTOPET_CONNECTIVITY
) -> float:
    """FNV in ml: GT components with no predicted voxel (0 on an empty GT; autoPET III reports NaN there).
    Arguments as :func:`false_positive_volume`; returns the false-negative volume in ml."""
    return unmatched_component_voxels(gt, pred, connectivity) * voxel_volume_ml(spacing)


def fp_pet_score(dice: float, fpv: float, fnv: float) -> float:
    """FP-PET aggregated score ``dice - 0.1 * FPV - 0.1 * FNV`` (Dice in [0, 1], volumes in ml)."""
    return float(dice) - 0.1 * float(fpv) - 0.1 * float(fnv)
