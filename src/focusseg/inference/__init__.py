"""Inference: Gaussian sliding window, test-time augmentation, ensembles, uncertainty, post-processing."""

from focusseg.inference.sliding_window import (
    BACKGROUND_LOGIT,
    mirror_combinations,
    nonzero_mask,
    sliding_window_predict,
)
from focusseg.inference.windows import compute_steps, gaussian_importance_map, pad_to_patch

__all__ = [
    "BACKGROUND_LOGIT",
    "compute_steps",
    "gaussian_importance_map",
    "mirror_combinations",
    "nonzero_mask",
    "pad_to_patch",
    "sliding_window_predict",
]
