"""The per-case preprocessing steps, pure functions on NumPy arrays (shared by training and inference).

crop to non-zero -> resample to the target spacing -> normalise per channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def nonzero_bbox(image: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Bounding box ``((lo, hi), ...)`` of voxels where any channel is non-zero (whole volume if none)."""
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return tuple((0, s) for s in image.shape[1:])
    mask = ndimage.binary_fill_holes(mask)
    box = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def crop(array: np.ndarray, bbox: Sequence[tuple[int, int]]) -> np.ndarray:
    """Crop the trailing spatial axes of ``array`` to ``bbox``."""
    lead = array.ndim - len(bbox)
    return array[(slice(None),) * lead + tuple(slice(lo, hi) for lo, hi in bbox)]


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """Shape after resampling: ``round(shape * spacing / target)``, at least 1."""
    return tuple(max(1, int(round(s * sp / t))) for s, sp, t in zip(shape, spacing, target))


def separate_axis(spacing: Sequence[float], target: Sequence[float], threshold: float) -> int | None:
    """The out-of-plane axis to resample on its own (nnU-Net's "separate z"), or None.

    nnU-Net's rule (``determine_do_sep_z_and_axis`` with ``force_separate_z=None``): when the case's spacing is
    anisotropic (largest / smallest > ``threshold``, nnU-Net's default 3) the axis of its largest spacing; else,
    when the target spacing is, the target's largest-spacing axis; None when neither is, or when the largest
    spacing is shared by two axes (e.g. 0.24 x 1.25 x 1.25 mm: no single out-of-plane axis).
    """
    for sp in (spacing, target):
        values = [float(v) for v in sp]
        if max(values) / min(values) > threshold:
            axes = [a for a, v in enumerate(values) if v == max(values)]
            return axes[0] if len(axes) == 1 else None
    return None


def resample_image(image: np.ndarray, new_shape: Sequence[int], order: int = 3, separate: int | None = None,
                   order_separate: int = 0) -> np.ndarray:
    """Resample ``(C, *spatial)`` to ``new_shape`` (spline of ``order``, edges by nearest), per channel.

    ``separate``: an axis resampled on its own, after the others, with spline order ``order_separate`` (nnU-Net
    resamples anisotropic images in plane with order 3 and along the out-of-plane axis with order 0, so slices
    are never blended across a 5 mm gap). The in-plane pass keeps that axis's size: a spline sampled at its own
    knots reproduces the samples, so it acts slice by slice.
    """
    if tuple(image.shape[1:]) == tuple(new_shape):
        return image.astype(np.float32, copy=False)
    out = np.empty((image.shape[0], *new_shape), dtype=np.float32)
    for c in range(image.shape[0]):
        channel = image[c].astype(np.float32, copy=False)
        if separate is None or channel.shape[separate] == new_shape[separate]:
            out[c] = _zoom_to(channel, new_shape, order)
            continue
        in_plane = list(new_shape)
        in_plane[separate] = channel.shape[separate]
        out[c] = _zoom_to(_zoom_to(channel, in_plane, order), new_shape, order_separate)
    return out


def resample_label(label: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of an integer label map to ``new_shape``."""
    if tuple(label.shape) == tuple(new_shape):
        return label
    return _zoom_to(label, new_shape, 0)


def _zoom_to(arr: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    factors = [n / s for n, s in zip(new_shape, arr.shape)]
    out = ndimage.zoom(arr, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    if out.shape != tuple(new_shape):  # zoom rounds; make the shape exact
        fixed = np.zeros(new_shape, dtype=out.dtype)
        sl = tuple(slice(0, min(a, b)) for a, b in zip(out.shape, new_shape))
        fixed[sl] = out[sl]
        out = fixed
    return out


def normalize(image: np.ndarray, schemes: Sequence[dict], mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise each channel by its scheme (in place on a float32 copy).

    - ``{"scheme": "ct", "clip": [lo, hi], "mean": m, "std": s}``: clip to the dataset's foreground 0.5/99.5
      percentiles, then z-score with the foreground mean/std (nnU-Net's CTNormalization).
    - ``{"scheme": "zscore", "use_mask": bool}``: per-image z-score (inside the non-zero mask when
      ``use_mask``, background then set to 0), nnU-Net's ZScoreNormalization; with ``"fill_holes": true`` the
      mask's holes are filled first (nnU-Net's crop mask, so zero voxels enclosed by the image count as inside).
    - ``{"scheme": "quantile", "lower": 0.01, "upper": 0.99}``: per image, clip to the quantiles and scale to
      [0, 1] (the VALDO paper's quantile normalisation).
    - ``{"scheme": "none"}``.
    """
    out = image.astype(np.float32, copy=True)
    for c, s in enumerate(schemes):
        x = out[c]
        kind = s["scheme"]
        if kind == "ct":
            np.clip(x, s["clip"][0], s["clip"][1], out=x)
            x -= s["mean"]
            x /= max(s["std"], 1e-8)
        elif kind == "zscore":
            m = mask if (s.get("use_mask") and mask is not None and mask.any()) else None
            if m is not None and s.get("fill_holes"):
                m = ndimage.binary_fill_holes(m)
            vals = x[m] if m is not None else x
            mean, std = float(vals.mean()), float(vals.std())
            x -= mean
            x /= max(std, 1e-8)
            if m is not None:
                x[~m] = 0
        elif kind == "quantile":
            lo, hi = np.quantile(x, [s.get("lower", 0.01), s.get("upper", 0.99)])
            np.clip(x, lo, hi, out=x)
            x -= lo
            x /= max(float(hi - lo), 1e-8)
        elif kind != "none":
            raise ValueError(f"unknown normalisation scheme {kind!r} (ct, zscore, quantile, none)")
    return out
