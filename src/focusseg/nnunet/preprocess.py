"""nnU-Net's preprocessing steps before resampling, as pure numpy functions on a ``(C, X, Y[, Z])`` array: the axis
transposition of the plans, cropping to the non-zero region, and the per-channel normalisation schemes
(``CTNormalization``, ``ZScoreNormalization``, ``NoNormalization``, ``RescaleTo01Normalization``,
``RGBTo01Normalization``) with the statistics a checked plans file gives
(:func:`focusseg.nnunet.model_folder.check_intensity_properties`). Inputs are never modified; outputs are float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.ndimage import binary_fill_holes

from focusseg.errors import ImageError

#: The smallest standard deviation divided by (nnU-Net's epsilon for float32).
EPS = 1e-8


def transpose_forward(data: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """``data`` (channels first) with its spatial axes in the plans' ``transpose_forward`` order (a view)."""
    return data.transpose([0, *[int(a) + 1 for a in axes]])


def transpose_backward(data: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """The inverse of :func:`transpose_forward` given the plans' ``transpose_backward`` (a view)."""
    return transpose_forward(data, axes)


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Where any channel is non-zero, holes filled (nnU-Net's ``create_nonzero_mask``)."""
    mask = np.any(data != 0, axis=0)
    return binary_fill_holes(mask)


def crop_to_nonzero(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[tuple[int, int], ...]]:
    """Crop ``data`` to the bounding box of :func:`nonzero_mask`.

    Returns:
        the cropped data (a copy), the mask of the crop as nnU-Net encodes it in its segmentation channel (0 inside
        the non-zero region, -1 outside; int8), and the box as ``(start, stop)`` per spatial axis. An all-zero image
        keeps its full extent.
    """
    mask = nonzero_mask(data)
    if not mask.any():
        box = tuple((0, s) for s in mask.shape)
    else:
        box = []
        for axis in range(mask.ndim):
            other = tuple(a for a in range(mask.ndim) if a != axis)
            hit = np.flatnonzero(mask.any(axis=other))
            box.append((int(hit[0]), int(hit[-1]) + 1))
        box = tuple(box)
    slicer = tuple(slice(a, b) for a, b in box)
    seg = np.where(mask[slicer], np.int8(0), np.int8(-1))
    return data[(slice(None), *slicer)].copy(), seg, box


def normalize_channel(image: np.ndarray, scheme: str, use_mask: bool = False, seg: np.ndarray | None = None,
                      properties: Mapping[str, float] | None = None, source: str | None = None) -> np.ndarray:
    """One channel normalised as nnU-Net's scheme ``scheme`` does it (a new float32 array).

    Args:
        image: the channel's intensities.
        scheme: the plans' normalisation scheme name.
        use_mask: for ``ZScoreNormalization``, normalise only where ``seg >= 0`` (outside left as it is).
        seg: the crop mask of :func:`crop_to_nonzero` (needed with ``use_mask``).
        properties: the channel's foreground statistics (``CTNormalization``: mean, std, percentile_00_5,
            percentile_99_5).
        source: the image named in errors.

    Raises:
        ImageError: non-finite intensities, a use_mask without a mask, RGB values outside [0, 255], or an unknown
            scheme.
    """
    out = np.array(image, dtype=np.float32, copy=True)
    if not np.isfinite(out).all():
        raise ImageError("holds NaN or infinite intensities: nothing can normalise them", source)
    if scheme == "CTNormalization":
        if properties is None:
            raise ImageError("CTNormalization needs the channel's intensity statistics from plans.json", source)
        np.clip(out, properties["percentile_00_5"], properties["percentile_99_5"], out=out)
        out -= np.float32(properties["mean"])
        out /= np.float32(max(properties["std"], EPS))
    elif scheme == "ZScoreNormalization":
        if use_mask:
            if seg is None or seg.shape != out.shape:
                raise ImageError("use_mask_for_norm needs the non-zero mask of the image's shape", source)
            inside = seg >= 0
            if inside.any():
                values = out[inside]
                out[inside] = (values - values.mean()) / max(float(values.std()), EPS)
        else:
            mean, std = out.mean(), float(out.std())
            out -= mean
            out /= np.float32(max(std, EPS))
    elif scheme == "NoNormalization":
        pass
    elif scheme == "RescaleTo01Normalization":
        out -= out.min()
        out /= np.float32(max(float(out.max()), EPS))
    elif scheme == "RGBTo01Normalization":
        if out.size and (out.min() < 0 or out.max() > 255):
            raise ImageError("RGBTo01Normalization needs values in [0, 255]", source)
        out /= np.float32(255.0)
    else:
        raise ImageError(f"unknown normalisation scheme {scheme!r}", source)
    return out


def normalize(data: np.ndarray, schemes: Sequence[str], use_mask_for_norm: Sequence[bool],
              properties: Mapping[str, Mapping[str, float]], seg: np.ndarray | None = None,
              source: str | None = None) -> np.ndarray:
    """Every channel of ``data`` normalised by its scheme (:func:`normalize_channel`) into a new float32 array.

    Args:
        data: ``(C, ...)`` intensities.
        schemes: one scheme per channel (the configuration's ``normalization_schemes``).
        use_mask_for_norm: one flag per channel.
        properties: channel (``"0"``...) -> foreground statistics.
        seg: the crop mask (:func:`crop_to_nonzero`), for channels with ``use_mask_for_norm``.
        source: the image named in errors.

    Raises:
        ImageError: a channel count other than the plans', or a channel refused by :func:`normalize_channel`.
    """
    if data.shape[0] != len(schemes) or len(schemes) != len(use_mask_for_norm):
        raise ImageError(f"has {data.shape[0]} channel(s); the model expects {len(schemes)}", source)
    out = np.empty(data.shape, dtype=np.float32)
    for c, scheme in enumerate(schemes):
        out[c] = normalize_channel(data[c], scheme, bool(use_mask_for_norm[c]), seg, properties.get(str(c)), source)
    return out


__all__ = ["EPS", "crop_to_nonzero", "nonzero_mask", "normalize", "normalize_channel", "transpose_backward",
           "transpose_forward"]
