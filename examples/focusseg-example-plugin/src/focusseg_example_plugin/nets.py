"""A tiny residual U-Net: two conv-norm-activation layers per level with an identity (or 1x1) shortcut,
stride-2 convolutions down, transposed convolutions up, skip connections by addition."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv3d if dims == 3 else nn.Conv2d


def _norm(dims: int) -> type[nn.Module]:
    return nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d


class ResBlock(nn.Module):
    """``x + f(x)`` with ``f`` two 3x3(x3) convolutions, instance norm and leaky ReLU; a 1x1 shortcut when the
    channel count changes."""

    def __init__(self, dims: int, cin: int, cout: int) -> None:
        super().__init__()
        conv, norm = _conv(dims), _norm(dims)
        self.body = nn.Sequential(conv(cin, cout, 3, padding=1), norm(cout, affine=True), nn.LeakyReLU(0.01),
                                  conv(cout, cout, 3, padding=1), norm(cout, affine=True))
        self.skip = nn.Identity() if cin == cout else conv(cin, cout, 1)
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class TinyResUNet(nn.Module):
    """A residual U-Net with ``len(channels) - 1`` stride-2 levels (input sizes divisible by ``2 ** levels``).

    Args:
        in_channels: input channels.
        out_channels: output channels (classes).
        spatial_dims: 2 or 3.
        channels: feature channels per level, top first.
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3,
                 channels: Sequence[int] = (8, 16, 32)) -> None:
        super().__init__()
        conv = _conv(spatial_dims)
        up = nn.ConvTranspose3d if spatial_dims == 3 else nn.ConvTranspose2d
        ch = [int(c) for c in channels]
        self.stem = ResBlock(spatial_dims, in_channels, ch[0])
        self.down = nn.ModuleList(conv(a, b, 3, stride=2, padding=1) for a, b in zip(ch[:-1], ch[1:]))
        self.enc = nn.ModuleList(ResBlock(spatial_dims, b, b) for b in ch[1:])
        self.up = nn.ModuleList(up(b, a, 2, stride=2) for a, b in zip(ch[:-1], ch[1:]))
        self.dec = nn.ModuleList(ResBlock(spatial_dims, a, a) for a in ch[:-1])
        self.head = conv(ch[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for down, enc in zip(self.down, self.enc):
            skips.append(enc(down(skips[-1])))
        h = skips.pop()
        for i in reversed(range(len(self.up))):
            h = self.dec[i](self.up[i](h) + skips.pop())
        return self.head(h)


def divisor(spatial_dims: int = 3, channels: Sequence[int] = (8, 16, 32), **_: object) -> int:
    """Every input size must be divisible by ``2 ** (levels)``."""
    return 2 ** (len(channels) - 1)


def build(in_channels: int, out_channels: int, spatial_dims: int = 3, deep_supervision: bool = False,
          channels: Sequence[int] = (8, 16, 32)) -> nn.Module:
    """The network builder focusseg calls (no deep supervision)."""
    return TinyResUNet(in_channels, out_channels, spatial_dims, channels)
