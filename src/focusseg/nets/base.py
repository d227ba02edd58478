"""The network registry and the facts the rest of focusseg asks a network for.

Every network is registered with :func:`register_network`, which stores

* the builder ``fn(in_channels, out_channels, spatial_dims, deep_supervision, **kwargs) -> nn.Module``;
* a *divisor* function ``fn(spatial_dims, **kwargs) -> int | tuple[int, ...]``: the factor every spatial
  size of an input must be divisible by (``2 ** n_pool`` for a U-Net with ``n_pool`` stride-2 stages), or
  one factor per axis (anisotropic strides);
* whether the network needs the training patch size at build time (UNETR's position embedding);
* whether the network offers deep supervision (a list of logits in training mode, highest resolution
  first, each head at its native resolution: ``[full, 1/2, 1/4, ...]``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from focusseg.registry import Registry

NETWORKS: Registry[nn.Module] = Registry("network")


@dataclass(frozen=True)
class NetworkInfo:
    """What a registered network promises: its divisor rule, deep supervision, dims, fixed input size."""

    divisor: Callable[..., int | tuple[int, ...]]
    deep_supervision: bool
    spatial_dims: tuple[int, ...] = (2, 3)
    needs_patch_size: bool = False


_INFO: dict[str, NetworkInfo] = {}


def register_network(
    name: str,
    *,
    divisor: Callable[..., int | tuple[int, ...]],
    deep_supervision: bool = False,
    spatial_dims: tuple[int, ...] = (2, 3),
    needs_patch_size: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder in :data:`NETWORKS` together with its :class:`NetworkInfo`.

    A builder with ``needs_patch_size=True`` receives ``patch_size`` (a tuple) as a keyword argument.
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        NETWORKS.register(name)(fn)
        _INFO[name] = NetworkInfo(divisor, deep_supervision, tuple(spatial_dims), needs_patch_size)
        return fn

    return deco


def network_info(name: str) -> NetworkInfo:
    NETWORKS.get(name)  # raises a KeyError listing the known names
    return _INFO[name]


def build_network(
    name: str,
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 3,
    deep_supervision: bool = False,
    patch_size: Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the registered network ``name``.

    Args:
        name: a registered network (:func:`network_names`).
        in_channels: input channels (image modalities), >= 1.
        out_channels: output channels (classes, or regions), >= 1.
        spatial_dims: 2 or 3, as the network supports.
        deep_supervision: return the decoder heads too (networks in :func:`deep_supervision_names`).
        patch_size: optional for most networks, required by those with a fixed input size (UNETR); checked
            against the network's divisors.
        kwargs: the network's own options.

    Returns:
        The module. ``forward(x)`` returns logits ``(B, out_channels, *spatial)``; with ``deep_supervision=True``
        and in training mode a list of logits ``[full, 1/2, 1/4, ...]`` (each head at its own resolution).

    Raises:
        ValueError: when the network does not support ``spatial_dims``, deep supervision or the patch, or a
            channel count is below 1.
        KeyError: for an unknown network name.
    """
    info = network_info(name)
    if spatial_dims not in info.spatial_dims:
        raise ValueError(f"network {name!r} supports spatial_dims {info.spatial_dims}, got {spatial_dims}")
    if deep_supervision and not info.deep_supervision:
        raise ValueError(f"network {name!r} has no deep supervision; use one of {deep_supervision_names()}")
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
    if patch_size is not None:
        patch = tuple(int(p) for p in patch_size)
        div = network_divisors(name, spatial_dims, **kwargs)
        if len(patch) != spatial_dims or any(p % d for p, d in zip(patch, div)):
            raise ValueError(f"patch_size {patch} must have {spatial_dims} sizes divisible by {div} for {name!r}")
        if info.needs_patch_size:
            kwargs["patch_size"] = patch
    elif info.needs_patch_size:
        raise ValueError(f"network {name!r} has a fixed input size: pass patch_size=(...)")
    builder = NETWORKS.get(name)
    return builder(
        in_channels=in_channels,
        out_channels=out_channels,
        spatial_dims=spatial_dims,
        deep_supervision=deep_supervision,
        **kwargs,
    )


def network_names() -> list[str]:
    return NETWORKS.names()


def deep_supervision_names() -> list[str]:
    return sorted(n for n, i in _INFO.items() if i.deep_supervision)


def supports_deep_supervision(name: str) -> bool:
    return network_info(name).deep_supervision


def network_divisor(name: str, spatial_dims: int = 3, **kwargs: Any) -> int:
    """The factor every spatial size of the input must be divisible by, for ``name`` built with ``kwargs``.

    With per-axis strides (anisotropic DynUNet) this is the largest per-axis product of strides, which is a
    multiple of all the others (all strides are 1 or 2), so a size divisible by it always works;
    :func:`network_divisors` gives the exact per-axis factors.
    """
    return max(network_divisors(name, spatial_dims, **kwargs))


def network_divisors(name: str, spatial_dims: int = 3, **kwargs: Any) -> tuple[int, ...]:
    """Per-axis divisors (all equal except for anisotropic strides)."""
    kwargs.pop("patch_size", None)
    d = network_info(name).divisor(spatial_dims=spatial_dims, **kwargs)
    return tuple(int(v) for v in d) if isinstance(d, tuple) else (int(d),) * spatial_dims
