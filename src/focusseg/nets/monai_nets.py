"""Builders for the MONAI networks: U-Net, BasicUNet, VNet, UNETR, SwinUNETR (all in 2D and 3D).

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


# ---------------------------------------------------------------------------------------------------- V-Net
@register_network("vnet", divisor=lambda spatial_dims=3, **_: 16)
def build_vnet(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 3,
    deep_supervision: bool = False,
    act: str | tuple = ("elu", {"inplace": True}),
    dropout_prob_down: float | None = 0.5,
    dropout_prob_up: tuple[float | None, float] = (0.5, 0.5),
) -> nn.Module:
    """MONAI ``VNet`` (Milletari et al. 2016): 4 strided-conv downsamplings (divisor 16), 16 base channels,
    so ``16 % in_channels == 0``; channel-wise dropout matches ``spatial_dims``. FP-PET (paper 000) ensembles it."""
    if 16 % in_channels:
        raise ValueError(f"vnet needs 16 % in_channels == 0, got in_channels={in_channels}")
    return mnets.VNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        act=_act(act),
        dropout_prob_down=dropout_prob_down,
        dropout_prob_up=dropout_prob_up,
        dropout_dim=spatial_dims,
    )


# ---------------------------------------------------------------------------------------------------- UNETR
@register_network("unetr", divisor=lambda spatial_dims=3, **_: 16, needs_patch_size=True)
def build_unetr(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 3,
    deep_supervision: bool = False,
    patch_size: Sequence[int] = (96, 96, 96),
    feature_size: int = 16,
    hidden_size: int = 768,
    mlp_dim: int = 3072,
    num_heads: int = 12,
    norm: str | tuple = "instance",
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI ``UNETR`` (Hatamizadeh et al. 2022): ViT on 16^d tokens, 12 layers, features tapped at 3/6/9/12.

    The learned position embedding fixes the input size to ``patch_size`` (so sliding-window inference must
    use the training patch); ``hidden_size % num_heads == 0``. Defaults are the paper's (ViT-B)."""
    return mnets.UNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        img_size=tuple(patch_size),
        feature_size=feature_size,
        hidden_size=hidden_size,
        mlp_dim=mlp_dim,
        num_heads=num_heads,
        norm_name=norm,
        dropout_rate=dropout,
        spatial_dims=spatial_dims,
    )


# ------------------------------------------------------------------------------------------------ SwinUNETR
@register_network("swin_unetr", divisor=lambda spatial_dims=3, **_: 32)
def build_swin_unetr(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 3,
    deep_supervision: bool = False,
    feature_size: int = 48,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int = 7,
    dropout: float = 0.0,
    dropout_path_rate: float = 0.0,
    use_v2: bool = False,
    use_checkpoint: bool = False,
) -> nn.Module:
    """MONAI ``SwinUNETR`` (Hatamizadeh et al. 2022): Swin encoder with patch 2 and 4 mergings, so each size
    must be divisible by ``2**5 = 32``, and at least 64 (its InstanceNorm needs more than one voxel at
    1/32 resolution); ``feature_size % 12 == 0`` (paper: 48, our default)."""
    return mnets.SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        feature_size=feature_size,
        depths=tuple(depths),
        num_heads=tuple(num_heads),
        window_size=window_size,
        drop_rate=dropout,
        dropout_path_rate=dropout_path_rate,
        use_v2=use_v2,
        use_checkpoint=use_checkpoint,
        spatial_dims=spatial_dims,
    )
