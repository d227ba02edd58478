"""nnU-Net-like dynamic U-Net (MONAI ``DynUNet``) with deep-supervision heads at their native resolution.

Topology (Isensee et al. 2021, nnU-Net, Methods "network topology"): ``n_stages`` encoder stages of two
``conv(k) - InstanceNorm - LeakyReLU(0.01)`` blocks, stage ``s > 0`` strided by ``strides[s]``; features
``min(base_features * 2**s, max_features)``; a transposed-conv decoder with skips; a 1x1 head per decoder level.
Strides and kernels may differ per axis (anisotropic data).

Deep supervision returns the heads *at their own resolution*, ``[full, 1/2, ...]`` (``1 + deep_supr_num``
entries), so the loss downsamples the target as nnU-Net does (MONAI upsamples the logits instead).
``deep_supr_num`` defaults to ``n_stages - 2``; 0 builds no extra head, so any depth from 3 stages works; nnU-Net
plans use ``n_stages - 3`` (its loss weights zero the lowest head). Details: ``docs/networks.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import DynUNet as _MonaiDynUNet

from focusseg.nets.base import register_network

Kernel = Sequence[int] | int


class DynUNetDS(_MonaiDynUNet):
    """MONAI ``DynUNet`` whose deep-supervision output is a list of heads at native resolution."""

    #: True: training mode returns a list even without extra heads (``deep_supr_num = 0``).
    returns_list: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:  # type: ignore[override]
        out = self.output_block(self.skip_layers(x))
        if not self.training:
            return out
        if not self.deep_supervision:
            return [out] if self.returns_list else out
        heads = list(self.heads)  # filled in place by the skip layers during this forward
        for i in range(len(self.heads)):  # drop references so activations are not kept past the step
            self.heads[i] = out.new_empty(0)
        return [out, *heads]


def dynunet_topology(
    spatial_dims: int = 3,
    kernel_sizes: Sequence[Kernel] | None = None,
    strides: Sequence[Kernel] | None = None,
    n_stages: int | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """Per-stage kernel sizes and strides as lists of ``spatial_dims`` ints.

    Either give ``kernel_sizes`` and ``strides`` (e.g. from the plan; the first stride is usually 1) or
    ``n_stages`` (default 5): kernels 3, strides ``[1, 2, 2, ...]``.
    """

    def per_axis(v: Kernel) -> list[int]:
        return [int(v)] * spatial_dims if isinstance(v, int) else [int(a) for a in v]

    if kernel_sizes is None and strides is None:
        n = 5 if n_stages is None else int(n_stages)
        if n < 3:
            raise ValueError(f"n_stages must be >= 3 (MONAI's DynUNet), got {n}")
        kernel_sizes = [3] * n
        strides = [1] + [2] * (n - 1)
    elif kernel_sizes is None or strides is None:
        raise ValueError("give both kernel_sizes and strides, or neither (then n_stages is used)")
    ks = [per_axis(k) for k in kernel_sizes]
    st = [per_axis(s) for s in strides]
    if len(ks) != len(st) or len(ks) < 3:
        raise ValueError(f"kernel_sizes and strides need the same length >= 3 (MONAI's DynUNet), got {len(ks)} and "
                         f"{len(st)}")
    if n_stages is not None and int(n_stages) != len(ks):
        raise ValueError(f"n_stages={n_stages} disagrees with {len(ks)} given stages")
    if any(len(a) != spatial_dims for a in ks + st):
        raise ValueError(f"every kernel size and stride needs {spatial_dims} entries")
    return ks, st


def _dynunet_divisor(
    spatial_dims: int = 3,
    kernel_sizes: Sequence[Kernel] | None = None,
    strides: Sequence[Kernel] | None = None,
    n_stages: int | None = None,
    **_: Any,
) -> tuple[int, ...]:
    _, st = dynunet_topology(spatial_dims, kernel_sizes, strides, n_stages)
    return tuple(math.prod(s[a] for s in st) for a in range(spatial_dims))


@register_network("dynunet", divisor=_dynunet_divisor, deep_supervision=True)
def build_dynunet(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 3,
    deep_supervision: bool = False,
    kernel_sizes: Sequence[Kernel] | None = None,
    strides: Sequence[Kernel] | None = None,
    n_stages: int | None = None,
    base_features: int = 32,
    max_features: int | None = None,
    deep_supr_num: int | None = None,
    dropout: float | None = None,
    norm: str | tuple = ("INSTANCE", {"affine": True}),
    act: str | tuple = ("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
    res_block: bool = False,
) -> DynUNetDS:
    """nnU-Net-like U-Net; ``max_features`` defaults to 320 (3D) / 512 (2D) as in nnU-Net."""
    ks, st = dynunet_topology(spatial_dims, kernel_sizes, strides, n_stages)
    n = len(ks)
    cap = max_features if max_features is not None else (320 if spatial_dims == 3 else 512)
    filters = [min(base_features * 2**i, cap) for i in range(n)]
    if deep_supr_num is None:
        deep_supr_num = n - 2
    if deep_supervision and not 0 <= deep_supr_num <= n - 2:
        raise ValueError(f"deep_supr_num must be in [0, n_stages - 2 = {n - 2}], got {deep_supr_num}")
    heads = bool(deep_supervision and deep_supr_num > 0)
    net = DynUNetDS(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=ks,
        strides=st,
        upsample_kernel_size=st[1:],
        filters=filters,
        dropout=dropout,
        norm_name=norm,
        act_name=act,
        deep_supervision=heads,
        deep_supr_num=max(1, deep_supr_num),
        res_block=res_block,
    )
    net.returns_list = bool(deep_supervision)
    return net
