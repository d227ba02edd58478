"""STU-Net: scalable and transferable nnU-Net-style residual U-Nets (Huang et al. 2023, arXiv 2304.06716).

Topology (paper sections 3.1-3.2, checked against the authors' ``STUNet.py``): 6 stages, 3^d convs, stage ``s``
with ``depth`` residual blocks of ``dims = base * [1, 2, 4, 8, 16, 16]`` channels; ``BasicResBlock``
``y = LReLU(IN(conv3(LReLU(IN(conv3(x)))) + P(x)))`` with a 1x1 projection ``P`` in every stage's first block;
decoder: nearest upsampling, 1x1 conv, skip concatenation, ``depth`` blocks, a 1x1 head per stage.

Sizes (``depth``, ``base``) and parameter counts: S (1, 16) 14.6M, B (1, 32) 58.3M, L (2, 64) 440.3M,
H (3, 96) 1457.3M. Deep supervision returns the 5 decoder heads at their own resolution; in eval mode only the
full one is computed. He normal init (a=0.01), zero biases. With the default strides a training patch is at
least 64 (the bottleneck's InstanceNorm needs more than one voxel). Details: ``docs/networks.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from focusseg.nets.base import register_network

STUNET_SIZES: dict[str, tuple[int, int]] = {"s": (1, 16), "b": (1, 32), "l": (2, 64), "h": (3, 96)}
"""size -> (blocks per stage, base features)."""

STUNET_PAPER_PARAMS: dict[str, float] = {"s": 14.6e6, "b": 58.3e6, "l": 440.3e6, "h": 1457.3e6}


def _ops(spatial_dims: int) -> tuple[type[nn.Module], type[nn.Module]]:
    if spatial_dims == 3:
        return nn.Conv3d, nn.InstanceNorm3d
    if spatial_dims == 2:
        return nn.Conv2d, nn.InstanceNorm2d
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


class BasicResBlock(nn.Module):
    """``LReLU(IN(conv(LReLU(IN(conv(x))))) + P(x))``; ``P`` = strided 1x1 conv when ``project``."""

    def __init__(
        self, spatial_dims: int, c_in: int, c_out: int, stride: Sequence[int] | int = 1, project: bool = False
    ) -> None:
        super().__init__()
        conv, norm = _ops(spatial_dims)
        self.conv1 = conv(c_in, c_out, 3, stride=stride, padding=1)
        self.norm1 = norm(c_out, affine=True)
        self.conv2 = conv(c_out, c_out, 3, padding=1)
        self.norm2 = norm(c_out, affine=True)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        strided = any(v != 1 for v in ([stride] if isinstance(stride, int) else stride))
        if not project and (c_in != c_out or strided):
            raise ValueError("a block that changes shape needs the projection")
        self.proj = conv(c_in, c_out, 1, stride=stride) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + (self.proj(x) if self.proj is not None else x))


def _stage(spatial_dims: int, c_in: int, c_out: int, depth: int, stride: Sequence[int] | int = 1) -> nn.Sequential:
    blocks = [BasicResBlock(spatial_dims, c_in, c_out, stride, project=True)]
    blocks += [BasicResBlock(spatial_dims, c_out, c_out) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


class UpsampleNearest(nn.Module):
    """Nearest-neighbour upsampling by ``scale`` followed by a 1x1 conv ``c_in -> c_out``."""

    def __init__(self, spatial_dims: int, c_in: int, c_out: int, scale: Sequence[int]) -> None:
        super().__init__()
        self.conv = _ops(spatial_dims)[0](c_in, c_out, 1)
        self.scale = tuple(float(s) for s in scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest"))


class STUNet(nn.Module):
    """STU-Net with ``len(dims)`` stages; ``strides`` holds one per-axis stride per downsampling."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dims: Sequence[int],
        depth: int,
        strides: Sequence[Sequence[int]],
        spatial_dims: int = 3,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if len(strides) != len(dims) - 1:
            raise ValueError(f"need {len(dims) - 1} strides for {len(dims)} stages, got {len(strides)}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.deep_supervision = deep_supervision
        d = spatial_dims
        self.encoder = nn.ModuleList([_stage(d, in_channels, dims[0], depth)])
        self.encoder.extend(_stage(d, dims[s - 1], dims[s], depth, list(strides[s - 1])) for s in range(1, len(dims)))
        ups, decs, heads = [], [], []
        for s in reversed(range(len(dims) - 1)):  # decoder from the bottom up
            ups.append(UpsampleNearest(d, dims[s + 1], dims[s], strides[s]))
            decs.append(_stage(d, 2 * dims[s], dims[s], depth))
            heads.append(_ops(d)[0](dims[s], out_channels, 1))
        self.upsample, self.decoder, self.heads = nn.ModuleList(ups), nn.ModuleList(decs), nn.ModuleList(heads)
        self.apply(_init_he)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for stage in self.encoder[:-1]:
            x = stage(x)
            skips.append(x)
        x = self.encoder[-1](x)
        with_ds = self.deep_supervision and self.training
        outs = []
        for u, (up, dec) in enumerate(zip(self.upsample, self.decoder)):
            x = dec(torch.cat((up(x), skips[-(u + 1)]), dim=1))
            if with_ds or u == len(self.decoder) - 1:
                outs.append(self.heads[u](x))
        return outs[::-1] if with_ds else outs[-1]


def _init_he(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
        nn.init.kaiming_normal_(m.weight, a=1e-2)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _strides(spatial_dims: int, strides: Sequence[Sequence[int] | int] | None) -> list[list[int]]:
    """5 per-axis strides (default 2); like the authors' trainer, longer lists are cut to 5 and shorter
    lists padded with stride 1."""
    st = (
        [[2] * spatial_dims] * 5
        if strides is None
        else [[s] * spatial_dims if isinstance(s, int) else list(s) for s in strides]
    )
    st = (st + [[1] * spatial_dims] * 5)[:5]
    if any(len(s) != spatial_dims for s in st):
        raise ValueError(f"every stride needs {spatial_dims} entries")
    return [[int(v) for v in s] for s in st]


def _stunet_divisor(spatial_dims: int = 3, strides: Sequence[Sequence[int] | int] | None = None, **_: Any):
    st = _strides(spatial_dims, strides)
    return tuple(math.prod(s[a] for s in st) for a in range(spatial_dims))


def _make(size: str):
    depth, base = STUNET_SIZES[size]

    @register_network(f"stunet_{size}", divisor=_stunet_divisor, deep_supervision=True)
    def build(
        in_channels: int,
        out_channels: int,
        spatial_dims: int = 3,
        deep_supervision: bool = False,
        strides: Sequence[Sequence[int] | int] | None = None,
        base_features: int = base,
        depth: int = depth,
    ) -> STUNet:
        dims = [base_features * m for m in (1, 2, 4, 8, 16, 16)]
        return STUNet(
            in_channels, out_channels, dims, depth, _strides(spatial_dims, strides), spatial_dims, deep_supervision
        )

    build.__doc__ = f"STU-Net-{size.upper()}: {depth} block(s) per stage, features {base} * [1, 2, 4, 8, 16, 16]."
    return build


build_stunet_s, build_stunet_b, build_stunet_l, build_stunet_h = (_make(s) for s in "sblh")
