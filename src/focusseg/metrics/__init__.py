"""Challenge-grade evaluation: overlap, surface (NSD/HD95/ASSD), autoPET volumes, lesion-wise metrics.

``dice_per_class`` is the single Dice implementation (the trainer's validation uses it too);
``evaluate_folders`` is what ``focusseg evaluate`` calls.
"""

from focusseg.metrics.autopet import false_negative_volume, false_positive_volume, fp_pet_score, voxel_volume_ml
from focusseg.metrics.conventions import CONVENTIONS, Convention, get_convention
from focusseg.metrics.evaluate import COLUMNS, evaluate_case, evaluate_folders, summarize
from focusseg.metrics.lesion import LesionStats, lesion_metrics
from focusseg.metrics.overlap import confusion_counts, dice_per_class, overlap_metrics
from focusseg.metrics.surface import (
    SurfaceDistances,
    average_symmetric_surface_distance,
    hausdorff_voxel,
    normalized_surface_dice,
    robust_hausdorff,
    surface_distances,
    surface_metrics,
)

__all__ = [
    "COLUMNS",
    "CONVENTIONS",
    "Convention",
    "LesionStats",
    "SurfaceDistances",
    "average_symmetric_surface_distance",
    "confusion_counts",
    "dice_per_class",
    "evaluate_case",
    "evaluate_folders",
    "false_negative_volume",
    "false_positive_volume",
    "fp_pet_score",
    "get_convention",
    "hausdorff_voxel",
    "lesion_metrics",
    "normalized_surface_dice",
    "overlap_metrics",
    "robust_hausdorff",
    "summarize",
    "surface_distances",
    "surface_metrics",
    "voxel_volume_ml",
]
