"""Small networks and the independent references used by the inference tests (imported, not a conftest)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn


class TinyConvNet(nn.Module):
    """Two 3x3(x3) convolutions: a receptive field of 5, so windows differ from the whole-image pass."""

    def __init__(self, in_channels: int = 2, out_channels: int = 3, spatial_dims: int = 3) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.body = nn.Sequential(conv(in_channels, 4, 3, padding=1), nn.Tanh(), conv(4, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class CountingNet(nn.Module):
    """Counts forward passes and samples; optionally returns a list like deep supervision."""

    def __init__(self, net: nn.Module, as_list: bool = False) -> None:
        super().__init__()
        self.net = net
        self.as_list = as_list
        self.calls = 0
        self.samples = 0

    def forward(self, x: torch.Tensor):
        self.calls += 1
        self.samples += x.shape[0]
        y = self.net(x)
        return [y, y[:, :, ::2]] if self.as_list else y


def reference_gaussian(patch: tuple[int, ...], sigma_scale: float = 1 / 8) -> torch.Tensor:
    """Product of truncated, normalised 1D Gaussians centred at P//2 (scipy's filtered impulse)."""
    kernels = []
    for p in patch:
        sigma = p * sigma_scale
        radius = int(4.0 * sigma + 0.5)
        d = np.arange(-radius, radius + 1)
        k = np.exp(-0.5 * d**2 / sigma**2)
        k /= k.sum()
        line = np.zeros(p)
        for i in range(p):
            if abs(i - p // 2) <= radius:
                line[i] = k[i - p // 2 + radius]
        kernels.append(line)
    g = kernels[0]
    for k in kernels[1:]:
        g = np.multiply.outer(g, k)
    g = g / g.max()
    g[g == 0] = g[g != 0].min()
    return torch.as_tensor(g, dtype=torch.float64)


def reference_starts(size: int, patch: int, overlap: float) -> list[int]:
    n = math.ceil((size - patch) / (patch * (1 - overlap))) + 1
    return [0] if n == 1 else [int(np.round(i * (size - patch) / (n - 1))) for i in range(n)]


def reference_sliding_window(net, image, patch, overlap=0.5, mirror_axes=()) -> torch.Tensor:
    """Explicit loop over windows and flips, float64 accumulation, explicit Gaussian weights (no padding)."""
    spatial = image.shape[1:]
    g = reference_gaussian(tuple(patch))
    num = None
    den = torch.zeros(spatial, dtype=torch.float64)
    flips = [c for r in range(len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, r)]
    starts = [reference_starts(s, p, overlap) for s, p in zip(spatial, patch)]
    with torch.no_grad():
        for st in itertools.product(*starts):
            sl = tuple(slice(s, s + p) for s, p in zip(st, patch))
            window = image[(slice(None), *sl)][None]
            preds = []
            for f in flips:
                dims = [a + 2 for a in f]
                x = torch.flip(window, dims) if f else window
                y = net(x)
                preds.append(torch.flip(y, dims) if f else y)
            pred = torch.stack(preds).mean(0)[0].double()
            if num is None:
                num = torch.zeros((pred.shape[0], *spatial), dtype=torch.float64)
            num[(slice(None), *sl)] += pred * g
            den[sl] += g
    return (num / den).float()
