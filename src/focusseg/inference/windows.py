"""Window placement and the Gaussian importance map of nnU-Net's sliding-window inference.

Placement (nnU-Net v2 ``compute_steps_for_sliding_window``), per axis with image size ``I``, patch ``P <= I`` and
step fraction ``s = 1 - overlap``: ``n = ceil((I - P) / (P * s)) + 1`` windows starting at
``round(i * (I - P) / (n - 1))`` (``np.round``, half to even), so the last one ends exactly at ``I``
(I=110, P=64, overlap 0.5: 0/23/46; MONAI's placement gives 0/32/46).

Gaussian importance map (nnU-Net ``compute_gaussian``): a unit impulse at ``P // 2`` filtered with a Gaussian of
``sigma = P * sigma_scale`` (1/8; scipy, constant border 0), scaled to peak 1 (nnU-Net uses 10; only ratios
matter), zeros replaced by the smallest non-zero value so that every voxel of a window has a positive weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from scipy.ndimage import gaussian_filter


def compute_steps(image_size: Sequence[int], patch_size: Sequence[int], overlap: float = 0.5) -> list[list[int]]:
    """Window start offsets per spatial axis (nnU-Net placement, see module docstring).

    Args:
        image_size: spatial size, each ``>= patch_size`` (pad smaller images first).
        patch_size: window size per axis.
        overlap: fraction of a window shared with its neighbour, ``0 <= overlap < 1``.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if len(image_size) != len(patch_size):
        raise ValueError(f"image {tuple(image_size)} and patch {tuple(patch_size)} differ in dimensions")
    steps: list[list[int]] = []
    for size, patch in zip(image_size, patch_size):
        if size < patch:
            raise ValueError(f"image {tuple(image_size)} smaller than patch {tuple(patch_size)}; pad first")
        target_step = patch * (1.0 - overlap)
        n = int(math.ceil((size - patch) / target_step)) + 1
        if n > 1:
            actual = (size - patch) / (n - 1)
            steps.append([int(round(actual * i)) for i in range(n)])
        else:
            steps.append([0])
    return steps


@lru_cache(maxsize=8)
def _gaussian_numpy(patch_size: tuple[int, ...], sigma_scale: float) -> np.ndarray:
    impulse = np.zeros(patch_size, dtype=np.float64)
    impulse[tuple(p // 2 for p in patch_size)] = 1.0
    sigmas = [p * sigma_scale for p in patch_size]
    g = gaussian_filter(impulse, sigmas, order=0, mode="constant", cval=0.0)
    g = g / g.max()
    g[g == 0] = g[g != 0].min()
    return g


@lru_cache(maxsize=16)
def gaussian_axis_factors(patch_size: tuple[int, ...], sigma_scale: float = 1.0 / 8) -> list[np.ndarray] | None:
    """1-D factors ``f_a`` (float64, peak 1) with ``outer(f_0, f_1, ...) == gaussian map`` (to float64 rounding),
    or ``None`` when the map is not separable (it had zeros that were replaced by the smallest value).

    ``scipy.ndimage.gaussian_filter`` filters an impulse axis by axis, so the map is the outer product of the 1-D
    kernels; the division by the maximum is the product of the per-axis maxima. Because windows are placed on a
    Cartesian grid of per-axis offsets ``S_a``, the summed weight of every voxel is separable too::

        sum_{o in S_0 x S_1 x ...} prod_a f_a(x_a - o_a) = prod_a sum_{o_a in S_a} f_a(x_a - o_a)

    which lets the sliding window normalise without a whole-volume weight map.
    """
    from scipy.ndimage import gaussian_filter1d

    g = _gaussian_numpy(tuple(int(p) for p in patch_size), float(sigma_scale))
    factors = []
    for p in patch_size:
        impulse = np.zeros(int(p), dtype=np.float64)
        impulse[int(p) // 2] = 1.0
        f = gaussian_filter1d(impulse, int(p) * sigma_scale, order=0, mode="constant", cval=0.0)
        factors.append(f / f.max())
    outer = factors[0]
    for f in factors[1:]:
        outer = np.multiply.outer(outer, f)
    if not np.allclose(outer, g, rtol=1e-9, atol=0.0):
        return None
    return factors


def summed_axis_weights(
    size: Sequence[int], patch_size: Sequence[int], steps: Sequence[Sequence[int]], factors: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Per-axis summed window weights ``W_a(x) = sum_{o in steps[a]} f_a(x - o)`` (see :func:`gaussian_axis_factors`);
    the whole-volume weight map is their outer product."""
    out = []
    for n, p, st, f in zip(size, patch_size, steps, factors):
        w = np.zeros(int(n), dtype=np.float64)
        for o in st:
            w[o : o + int(p)] += f
        out.append(w)
    return out


@lru_cache(maxsize=16)
def gaussian_importance_map(
    patch_size: tuple[int, ...],
    sigma_scale: float = 1.0 / 8,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """nnU-Net's Gaussian window weight, peak 1, no zeros; cached per (patch, sigma_scale, device, dtype).

    The returned tensor is shared by every caller with the same key: treat it as read-only.
    """
    g = _gaussian_numpy(tuple(int(p) for p in patch_size), float(sigma_scale))
    return torch.as_tensor(g, dtype=dtype, device=torch.device(device))


def pad_to_patch(image: torch.Tensor, patch_size: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial axes of ``image`` (C, *spatial) up to ``patch_size`` where smaller.

    Padding is centred like nnU-Net's ``pad_nd_image`` (``below = d // 2``, ``above = d - below``). Returns
    the padded image and the slices (channel axis included) that cut the original region back out.
    """
    spatial = image.shape[1:]
    below = [max(p - s, 0) // 2 for s, p in zip(spatial, patch_size)]
    above = [max(p - s, 0) - b for s, p, b in zip(spatial, patch_size, below)]
    region = (slice(None),) + tuple(slice(b, b + s) for b, s in zip(below, spatial))
    if not any(below) and not any(above):
        return image, region
    pad: list[int] = []
    for b, a in zip(reversed(below), reversed(above)):  # F.pad wants the last axis first
        pad += [b, a]
    return torch.nn.functional.pad(image, pad, mode="constant", value=0.0), region
