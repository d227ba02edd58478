"""Intensity transforms on the rows of a batch (one row = one channel of one sample), on the data's device.

Each function takes ``x`` of shape ``(R, *S)`` (float32, the selected rows only) and per-row parameters ``(R,)``;
:func:`apply_rows` gathers the rows a mask selects, transforms them in one call and scatters them back. The
formulas are batchgenerators' (nnU-Net v2 defaults), with mean/min/max/std per row: brightness ``x * m``, contrast
``clip((x - mean) * f + mean, min, max)``, gamma with ``retain_stats``, Gaussian blur and low resolution as one
banded ``n x n`` matrix per row and axis, Gaussian noise ``x + sigma * n`` (per sample).
Readings chosen: blur mirrors the whole sample at the border (scipy ``mirror``); low resolution upsamples with
Keys cubic convolution (``a = -0.75``, torch bicubic) instead of scipy's B-spline; the noise "variance" range is
used as the standard deviation, as batchgenerators does. Formulas in full: ``docs/augmentation.md``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def apply_rows(x: Tensor, mask: Tensor, fn: Callable[..., Tensor], *values: Tensor) -> Tensor:
    """Rows of ``x (B, C, *S)`` where ``mask (B, C)`` is set become ``fn(rows, *values[mask])``; ``x`` is
    updated in place (all rows selected: the result is returned instead, without a gather/scatter copy)."""
    idx = mask.flatten().nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    flat = x.view(x.shape[0] * x.shape[1], *x.shape[2:])
    if idx.numel() == flat.shape[0]:
        return fn(flat, *(v.flatten() for v in values)).view(x.shape)
    idx_dev = idx.to(x.device, non_blocking=True)
    rows = flat.index_select(0, idx_dev)
    flat.index_copy_(0, idx_dev, fn(rows, *(v.flatten()[idx] for v in values)))
    return x


def _per_row(v: Tensor, x: Tensor) -> Tensor:
    return v.to(device=x.device, dtype=x.dtype, non_blocking=True).view((-1,) + (1,) * (x.ndim - 1))


def _view(v: Tensor, like: Tensor) -> Tensor:
    return v.view((-1,) + (1,) * (like.ndim - 1))


def brightness(x: Tensor, factor: Tensor) -> Tensor:
    """``x * factor`` per row."""
    return x * _per_row(factor, x)


def contrast(x: Tensor, factor: Tensor) -> Tensor:
    """``clip((x - mean) * f + mean, min, max)`` per row."""
    flat = x.flatten(1)
    mean = _view(flat.mean(1), x)
    lo, hi = (_view(v, x) for v in torch.aminmax(flat, dim=1))
    f = _per_row(factor, x)
    return torch.maximum(torch.minimum(x * f + mean * (1 - f), hi), lo)


def gamma(x: Tensor, g: Tensor, invert: bool = False) -> Tensor:
    """Gamma on the row's range, then the row's mean and std restored; ``invert`` works on ``-x``.

    Fused form: with ``s = -1`` if inverted else 1, ``z = ((s x - min_s) / (range + 1e-7)) ** g`` and
    ``y = s (z range + min_s)`` restored to ``mean, std`` is ``z * s a + (mean - s a mean(z))`` with
    ``a = range std / (range std(z) + 1e-8)`` -- the same numbers as the three-step formula, fewer passes.
    """
    flat = x.flatten(1)
    std, mean = (_view(v, x) for v in torch.std_mean(flat, dim=1, unbiased=False))
    lo, hi = (_view(v, x) for v in torch.aminmax(flat, dim=1))
    rng = hi - lo
    inv = 1.0 / (rng + 1e-7)
    z = torch.addcmul(hi * inv, x, -inv) if invert else torch.addcmul(-lo * inv, x, inv)
    z = z.clamp_min_(0).pow_(_per_row(g, x))
    zstd, zmean = (_view(v, x) for v in torch.std_mean(z.flatten(1), dim=1, unbiased=False))
    a = rng * std / (rng * zstd + 1e-8)
    sign = -1.0 if invert else 1.0
    return z.mul_(sign * a).add_(mean - sign * a * zmean)


def _float64_on(device: torch.device | str | None) -> torch.dtype:
    """float64 where the device has it (MPS does not: float32 there)."""
    return torch.float32 if device is not None and torch.device(device).type == "mps" else torch.float64


def gaussian_matrices(n: int, sigma: Tensor, device: torch.device | str | None = None) -> Tensor:
    """``(R, n, n)`` Gaussian smoothing matrices, taps ``exp(-t^2 / 2 sigma^2)`` normalised, ``|t| <= radius``,
    mirror border (index ``-i -> i``, ``n - 1 + i -> n - 1 - i``); built on ``device`` (default: ``sigma``'s).
    The radius comes from the host ``sigma`` (a CPU parameter: no device read)."""
    radius = max(1, int(4.0 * float(sigma.max()) + 0.5))
    device = sigma.device if device is None else torch.device(device)
    f64 = _float64_on(device)
    sig = sigma.to(device=device, dtype=f64, non_blocking=True)
    t = torch.arange(-radius, radius + 1, dtype=f64, device=device)
    k = torch.exp(-(t[None] ** 2) / (2.0 * sig[:, None].clamp_min(1e-6) ** 2))
    k = k / k.sum(1, keepdim=True)  # (R, T)
    src = torch.arange(n, dtype=torch.long, device=device)[:, None] + t.long()[None]  # (n, T)
    src = src.abs()
    src = torch.where(src > n - 1, 2 * (n - 1) - src, src).clamp(0, n - 1)
    out = torch.zeros(sigma.shape[0], n, n, dtype=f64, device=device)
    w = k[:, None, :].expand(-1, n, -1)
    return out.scatter_add_(2, src[None].expand(sigma.shape[0], -1, -1), w).to(torch.float32)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur of each row with its own ``sigma`` (voxels, > 0): one matrix per axis."""
    return _separable(x, lambda n: gaussian_matrices(n, sigma, x.device))


def _separable(x: Tensor, matrices: Callable[[int], Tensor]) -> Tensor:
    """``x`` multiplied along every spatial axis by the per-row ``(R, n, n)`` matrices ``matrices(n)`` (built
    once per distinct axis length)."""
    letters = "xyz"[: x.ndim - 1]
    built: dict[int, Tensor] = {}
    for axis, n in enumerate(x.shape[1:]):
        if n not in built:
            built[n] = matrices(n).to(device=x.device, dtype=x.dtype)
        mat = built[n]
        out = letters[:axis] + "a" + letters[axis + 1:]
        x = torch.einsum(f"r{letters},ra{letters[axis]}->r{out}", x, mat)
    return x


def _keys_cubic(t: Tensor, a: float = -0.75) -> Tensor:
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def lowres_matrices(n: int, zoom: Tensor, device: torch.device | str | None = None) -> Tensor:
    """``(R, n, n)`` matrices ``M = U D``: ``D`` nearest downsampling to ``m = round(n * zoom)`` voxels
    (source ``floor((j + 0.5) n / m)``), ``U`` cubic upsampling back (``u = (i + 0.5) m / n - 0.5``); built on
    ``device`` (default: ``zoom``'s)."""
    device = zoom.device if device is None else torch.device(device)
    f64 = _float64_on(device)
    m = torch.clamp(torch.round(n * zoom.to(device=device, dtype=f64, non_blocking=True)), 1, n)  # (R,)
    i = torch.arange(n, dtype=f64, device=device)
    u = (i[None] + 0.5) * m[:, None] / n - 0.5  # (R, n)
    f = torch.floor(u)
    offsets = torch.arange(-1, 3, dtype=f64, device=device)
    j = f[..., None] + offsets  # (R, n, 4) low-resolution neighbours
    w = _keys_cubic(u[..., None] - j)
    j = torch.minimum(j.clamp_min(0), m[:, None, None] - 1)
    src = torch.floor((j + 0.5) * n / m[:, None, None]).clamp(max=n - 1).long()
    out = torch.zeros(zoom.shape[0], n, n, dtype=f64, device=device)
    return out.scatter_add_(2, src, w).to(torch.float32)


def lowres(x: Tensor, zoom: Tensor) -> Tensor:
    """Simulated low resolution of each row with its own ``zoom`` in (0, 1] (the same on every axis)."""
    return _separable(x, lambda n: lowres_matrices(n, zoom, x.device))


def add_noise(x: Tensor, do: Tensor, std: Tensor, seeds: Tensor) -> Tensor:
    """In place: ``x[b] += std[b] * N(0, 1)`` for the samples with ``do[b]``; noise from ``seeds[b]`` on
    ``x``'s device (one short loop over the noisy samples only, ~10 % of a batch)."""
    for b in do.nonzero().flatten().tolist():
        g = torch.Generator(device=x.device)
        g.manual_seed(int(seeds[b]))
        noise = torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype)
        x[b].add_(noise, alpha=float(std[b]))
    return x
