"""Builders for the MONAI networks: U-Net, BasicUNet (and VNet, UNETR, SwinUNETR).

Every builder has the signature ``(in_channels, out_channels, spatial_dims, deep_supervision, **kwargs)``
and returns logits ``(B, out_channels, *spatial)``. None of these networks offers deep supervision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.networks import nets as mnets
from torch import nn

from focusseg.nets.base import register_network


def _act(act: str | tuple) -> str | tuple:
    """``"mish"`` -> MONAI's ``("mish", {})``; tuples and other names pass through."""
    return ("mish", {}) if isinstance(act, str) and act.lower() == "mish" else act


# ---------------------------------------------------------------------------------------------------- U-Net
def _unet_divisor(
    spatial_dims: int = 3,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    strides: Sequence[int] | None = None,
    **_: Any,
) -> int:
    st = list(strides) if strides is not None else [2] * (len(channels) - 1)
    out = 1
    for s in st:
        out *= int(s)
    return out


@register_network("unet", divisor=_unet_divisor)
def build_unet(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 3,
    deep_supervision: bool = False,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    strides: Sequence[int] | None = None,
    num_res_units: int = 2,
    norm: str | tuple = "instance",
    act: str | tuple = "PRELU",
    dropout: float = 0.0,
    kernel_size: int = 3,
) -> nn.Module:
    """MONAI ``UNet`` (Kerfoot et al. 2018 residual units): ``len(channels)`` levels, strides 2 by default."""
    st = tuple(strides) if strides is not None else (2,) * (len(channels) - 1)
    return mnets.UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=st,
        kernel_size=kernel_size,
        up_kernel_size=kernel_size,
        num_res_units=num_res_units,
        act=_act(act),
        norm=norm,
        dropout=dropout,
    )


# ----------------------------------------------------------------------------------------------- BasicUNet
@register_network("basic_unet", divisor=lambda spatial_dims=3, **_: 16)
def build_basic_unet(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 3,
    deep_supervision: bool = False,
    features: Sequence[int] = (32, 32, 64, 128, 256, 32),
    act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
    norm: str | tuple = ("instance", {"affine": True}),
    dropout: float = 0.0,
    upsample: str = "deconv",
) -> nn.Module:
    """MONAI ``BasicUNet``: 4 poolings (divisor 16), two conv-norm-act per level; ``features`` has 6 entries
    (5 levels + the last decoder level). VALDO paper 001 uses ``act="mish", dropout=0.1``."""
    if len(features) != 6:
        raise ValueError(f"basic_unet needs 6 features, got {len(features)}")
    return mnets.BasicUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        features=tuple(features),
        act=_act(act),
        norm=norm,
        dropout=dropout,
        upsample=upsample,
    )
