"""Lambda3D: a UNETR-like network whose transformer blocks are 3D lambda layers (paper 003, section 2.2.1).

Lambda layer (Bello 2021, "LambdaNetworks", sections 3-4): ``y_n = q_n^T (lambda_c + lambda_p,n)`` with the
content lambda ``lambda_c = sum_m softmax_m(K) V_m`` and position lambdas from a local ``r^d`` convolution over
the values (the 3D generalisation the reference suggests); cost linear in the number of positions.

Choices the paper leaves open (it gives no architecture beyond "UNETR with lambda layers"): UNETR topology
(Hatamizadeh 2022) with a patch embedding of token size ``t`` (default 16) and pre-norm blocks
``x + Lambda(LN(x)); x + MLP(LN(x))``; no absolute position embedding (any input divisible by ``t``); affine
InstanceNorm for q and v; defaults ``hidden_size=192, num_layers=8, heads=4, dim_k=16, dim_u=1, r=7``
(``r=None`` drops the position lambdas). Formulas and choices in full: ``docs/networks.md``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn

from focusseg.nets.base import register_network


def _conv(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def _inorm(spatial_dims: int, c: int) -> nn.Module:
    return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims](c, affine=True)


class LambdaLayer(nn.Module):
    """Multi-query lambda layer on ``(B, dim, *spatial)`` -> ``(B, dim_out, *spatial)`` (2D or 3D)."""

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        dim_k: int = 16,
        heads: int = 4,
        dim_u: int = 1,
        r: int | None = 7,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        dim_out = dim if dim_out is None else dim_out
        if dim_out % heads:
            raise ValueError(f"dim_out ({dim_out}) must be divisible by heads ({heads})")
        if r is not None and r % 2 == 0:
            raise ValueError(f"r must be odd, got {r}")
        conv = _conv(spatial_dims)
        self.k, self.u, self.h, self.v = dim_k, dim_u, heads, dim_out // heads
        self.to_q = conv(dim, dim_k * heads, 1, bias=False)
        self.to_k = conv(dim, dim_k * dim_u, 1, bias=False)
        self.to_v = conv(dim, self.v * dim_u, 1, bias=False)
        self.norm_q = _inorm(spatial_dims, dim_k * heads)
        self.norm_v = _inorm(spatial_dims, self.v * dim_u)
        self.pos_conv = conv(dim_u, dim_k, r, padding=r // 2) if r is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, *sp = x.shape
        n = math.prod(sp)
        q = self.norm_q(self.to_q(x)).reshape(b, self.h, self.k, n)
        keys = self.to_k(x).reshape(b, self.u, self.k, n).softmax(dim=-1)
        v = self.norm_v(self.to_v(x)).reshape(b, self.u, self.v, n)
        lam_c = torch.einsum("bukm,buvm->bkv", keys, v)
        y = torch.einsum("bhkn,bkv->bhvn", q, lam_c)
        if self.pos_conv is not None:
            y = y + torch.einsum("bhkn,bvkn->bhvn", q, self.position_lambdas(v, sp))
        return y.reshape(b, self.h * self.v, *sp)

    def position_lambdas(self, v: torch.Tensor, spatial: list[int]) -> torch.Tensor:
        """``(B, u, v, n)`` values -> ``(B, v, k, n)`` position lambdas (value channels folded into the batch)."""
        b = v.shape[0]
        folded = v.reshape(b, self.u, self.v, *spatial).transpose(1, 2).reshape(b * self.v, self.u, *spatial)
        return self.pos_conv(folded).reshape(b, self.v, self.k, -1)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``(B, C, *spatial)`` at every position."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class LambdaBlock(nn.Module):
    """Pre-norm transformer block with the self-attention replaced by a lambda layer."""

    def __init__(self, dim: int, spatial_dims: int, mlp_ratio: float = 4.0, **lambda_kw: Any) -> None:
        super().__init__()
        conv, hidden = _conv(spatial_dims), int(dim * mlp_ratio)
        self.norm1, self.norm2 = ChannelLayerNorm(dim), ChannelLayerNorm(dim)
        self.mix = LambdaLayer(dim, dim, spatial_dims=spatial_dims, **lambda_kw)
        self.mlp = nn.Sequential(conv(dim, hidden, 1), nn.GELU(), conv(hidden, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mix(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Lambda3D(nn.Module):
    """UNETR-like encoder-decoder with lambda blocks on a ``token_size``-strided token grid."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_dims: int = 3,
        token_size: int = 16,
        hidden_size: int = 192,
        num_layers: int = 8,
        feature_size: int = 16,
        norm: str | tuple = "instance",
        mlp_ratio: float = 4.0,
        **lambda_kw: Any,
    ) -> None:
        super().__init__()
        m = int(round(math.log2(token_size)))
        if 2**m != token_size or m < 1:
            raise ValueError(f"token_size must be a power of 2 >= 2, got {token_size}")
        if num_layers < m:
            raise ValueError(f"num_layers ({num_layers}) must be >= log2(token_size) = {m}")
        d, f = spatial_dims, feature_size
        self.taps = [round(num_layers * (i + 1) / m) - 1 for i in range(m)]
        self.embed = _conv(d)(in_channels, hidden_size, token_size, stride=token_size)
        self.blocks = nn.ModuleList(LambdaBlock(hidden_size, d, mlp_ratio, **lambda_kw) for _ in range(num_layers))
        self.norm = ChannelLayerNorm(hidden_size)
        common = {"spatial_dims": d, "kernel_size": 3, "norm_name": norm, "res_block": True}
        self.skips = nn.ModuleList([UnetrBasicBlock(in_channels=in_channels, out_channels=f, stride=1, **common)])
        self.skips.extend(
            UnetrPrUpBlock(in_channels=hidden_size, out_channels=f * 2**j, num_layer=m - j - 1, stride=1,
                           upsample_kernel_size=2, conv_block=True, **common)
            for j in range(1, m)
        )  # fmt: skip
        chans = [hidden_size] + [f * 2**j for j in reversed(range(m))]
        self.decoder = nn.ModuleList(
            UnetrUpBlock(in_channels=chans[i], out_channels=chans[i + 1], upsample_kernel_size=2, **common)
            for i in range(m)
        )
        self.out = UnetOutBlock(d, f, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, h = [], self.embed(x)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in self.taps:
                feats.append(h)
        skips = [self.skips[0](x)] + [s(t) for s, t in zip(self.skips[1:], feats[:-1])]
        y = self.norm(feats[-1])
        for dec, skip in zip(self.decoder, reversed(skips)):
            y = dec(y, skip)
        return self.out(y)


@register_network("lambda3d", divisor=lambda spatial_dims=3, token_size=16, **_: token_size)
def build_lambda3d(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 3,
    deep_supervision: bool = False,
    **kwargs: Any,
) -> Lambda3D:
    """Lambda3D (paper 003 section 2.2.1); ``kwargs`` go to :class:`Lambda3D` and :class:`LambdaLayer`
    (``token_size, hidden_size, num_layers, feature_size, norm, mlp_ratio, dim_k, heads, dim_u, r``)."""
    return Lambda3D(in_channels, out_channels, spatial_dims, **kwargs)
