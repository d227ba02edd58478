"""Inference: Gaussian sliding window, test-time augmentation, ensembles, uncertainty, post-processing.

The whole-case predictor (preprocessing, resampling back, ensembles) lives in ``predictor.py``, checkpoint loading
in ``loading.py`` and predicting a folder of images (reading, writing) in ``folders.py``.
"""

from focusseg.inference.ensemble import EnsembleMember, ensemble_predict
from focusseg.inference.postprocess import (
    POSTPROCESSORS,
    apply_postprocessing,
    dilate,
    erode,
    keep_largest_component,
    remove_small_components,
)
from focusseg.inference.sliding_window import (
    BACKGROUND_LOGIT,
    mirror_combinations,
    nonzero_mask,
    sliding_window_predict,
)
from focusseg.inference.tta import count_tta_passes, tta_passes, tta_predict
from focusseg.inference.uncertainty import (
    ProbabilisticPrediction,
    StreamingMoments,
    activate,
    entropy,
    inverse_confidence,
)
from focusseg.inference.windows import compute_steps, gaussian_importance_map, pad_to_patch

__all__ = [
    "BACKGROUND_LOGIT",
    "POSTPROCESSORS",
    "EnsembleMember",
    "ProbabilisticPrediction",
    "StreamingMoments",
    "activate",
    "apply_postprocessing",
    "compute_steps",
    "count_tta_passes",
    "dilate",
    "ensemble_predict",
    "entropy",
    "erode",
    "gaussian_importance_map",
    "inverse_confidence",
    "keep_largest_component",
    "mirror_combinations",
    "nonzero_mask",
    "pad_to_patch",
    "remove_small_components",
    "sliding_window_predict",
    "tta_passes",
    "tta_predict",
]
