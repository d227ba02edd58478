"""nnU-Net v2's networks (``PlainConvUNet``, ``ResidualEncoderUNet`` of dynamic-network-architectures) as the
focusseg network ``"nnunet"``, so a plan converted from an nnU-Net model folder builds exactly nnU-Net's network.

The plan's network spec holds nnU-Net's own architecture description::

    {"name": "nnunet", "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
     "arch_kwargs": {...}, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
     "input_axes": [2, 1, 0], "deep_supervision": false}

``arch_kwargs`` is checked field by field (:func:`check_architecture`: known keyword arguments only, types, ranges,
per-stage lengths) and every class name it holds is looked up in fixed tables (:data:`IMPORTABLE`,
:data:`TORCH_LAYERS`): nothing is ever imported by a name read from a file.

``input_axes`` maps focusseg's array axes onto the network's: network axis ``n`` reads focusseg axis
``input_axes[n]``. nnU-Net's arrays are focusseg's with the spatial axes reversed (SimpleITK's ``(z, y, x)``), then
moved by the plans' ``transpose_forward``; the network permutes its input to its own axis order and its outputs
back, so the rest of focusseg (sliding window, mirroring, resampling) sees a network in focusseg's axis order. The
permutation has no parameters: the state dict's names and shapes are nnU-Net's, unchanged.

Deep supervision follows focusseg's contract (:mod:`focusseg.nets.base`): built with ``deep_supervision=True``, the
network returns in training mode the list ``[full, 1/2, 1/4, ...]`` (every decoder head, each at its own
resolution, as nnU-Net's decoder gives them), and in eval mode the full-resolution logits only. The heads always
exist (as in nnU-Net), so a checkpoint loads whether or not it was trained with deep supervision. The divisor is
the product of the strides per axis.

``dynamic-network-architectures`` is an optional dependency (``pip install focusseg[nnunet]``), imported when a
network is built.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from focusseg.errors import PlanError, UsageError, one_line
from focusseg.nets.base import register_network
from focusseg.settings.checks import (
    MAX_STAGES,
    MAX_WIDTH,
    check_bool,
    check_float,
    check_int,
    check_mapping,
    fail,
)

#: The network classes focusseg builds, by the name a plans file gives (the old module path of the residual
#: encoder U-Net included) -> the class's name in ``dynamic_network_architectures.architectures.unet``.
NETWORK_CLASSES: Mapping[str, str] = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet": "PlainConvUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet": "ResidualEncoderUNet",
    "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet": "ResidualEncoderUNet",
}
#: The canonical dotted name of each network class (what a converted plan writes).
CLASS_PATHS: Mapping[str, str] = {
    "PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}

_TORCH_LAYER_KEYS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "conv_op": ("conv", ("Conv2d", "Conv3d")),
    "norm_op": ("", ("InstanceNorm2d", "InstanceNorm3d", "BatchNorm2d", "BatchNorm3d")),
    "dropout_op": ("dropout", ("Dropout", "Dropout2d", "Dropout3d")),
    "nonlin": ("activation", ("LeakyReLU", "ReLU", "ELU", "GELU")),
}
_TORCH_MODULE_OF = {"InstanceNorm2d": "instancenorm", "InstanceNorm3d": "instancenorm", "BatchNorm2d": "batchnorm",
                    "BatchNorm3d": "batchnorm"}
_BLOCK_MODULE = "dynamic_network_architectures.building_blocks.residual"


def _importable() -> dict[str, dict[str, str]]:
    table: dict[str, dict[str, str]] = {}
    for key, (module, names) in _TORCH_LAYER_KEYS.items():
        table[key] = {}
        for name in names:
            table[key][f"torch.nn.{name}"] = name
            table[key][f"torch.nn.modules.{module or _TORCH_MODULE_OF[name]}.{name}"] = name
    table["block"] = {f"{_BLOCK_MODULE}.{n}": n for n in ("BasicBlockD", "BottleneckD")}
    return table


#: ``arch_kwargs`` keys whose value nnU-Net imports by name -> accepted dotted name -> the class's short name
#: (a ``torch.nn`` layer, or a residual block of dynamic-network-architectures). Nothing else is ever resolved.
IMPORTABLE: Mapping[str, Mapping[str, str]] = _importable()

#: The torch layers a plan may name (by short name, after :data:`IMPORTABLE`).
TORCH_LAYERS: Mapping[str, type[nn.Module]] = {
    "Conv2d": nn.Conv2d, "Conv3d": nn.Conv3d,
    "InstanceNorm2d": nn.InstanceNorm2d, "InstanceNorm3d": nn.InstanceNorm3d,
    "BatchNorm2d": nn.BatchNorm2d, "BatchNorm3d": nn.BatchNorm3d,
    "Dropout": nn.Dropout, "Dropout2d": nn.Dropout2d, "Dropout3d": nn.Dropout3d,
    "LeakyReLU": nn.LeakyReLU, "ReLU": nn.ReLU, "ELU": nn.ELU, "GELU": nn.GELU,
}

_COMMON_KWARGS = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage_decoder",
                  "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op", "dropout_op_kwargs", "nonlin",
                  "nonlin_kwargs", "deep_supervision")
#: The ``arch_kwargs`` each network class takes (input channels and classes come from the plan).
ARCH_KWARGS: Mapping[str, tuple[str, ...]] = {
    "PlainConvUNet": (*_COMMON_KWARGS, "n_conv_per_stage", "nonlin_first"),
    "ResidualEncoderUNet": (*_COMMON_KWARGS, "n_blocks_per_stage", "block", "bottleneck_channels", "stem_channels"),
}
_PER_STAGE = {"PlainConvUNet": "n_conv_per_stage", "ResidualEncoderUNet": "n_blocks_per_stage"}
#: Keyword arguments accepted for the norm, dropout and nonlinearity layers.
LAYER_KWARGS: Mapping[str, tuple[str, ...]] = {
    "norm_op_kwargs": ("eps", "affine", "momentum", "track_running_stats"),
    "dropout_op_kwargs": ("p", "inplace"),
    "nonlin_kwargs": ("inplace", "negative_slope", "alpha", "approximate"),
}
_LAYER_KEYS = ("conv_op", "norm_op", "dropout_op", "nonlin")
#: Most convolutions or residual blocks per stage (nnU-Net uses 2 and up to 6 blocks).
MAX_BLOCKS_PER_STAGE = 32
#: Largest kernel size or stride on one axis.
MAX_KERNEL = 15
MAX_STRIDE = 8


# ----------------------------------------------------------------------------------------------- checks

def _list(v: Any, path: str, src: str | Path | None, length: int | None = None, lo: int = 0,
          hi: int = 10_000) -> list[Any]:
    if not isinstance(v, (list, tuple)) or not (lo <= len(v) <= hi) or (length is not None and len(v) != length):
        want = f"{length} entries" if length is not None else f"between {lo} and {hi} entries"
        fail(src, path, v, f"must be a list of {want}")
    return list(v)


def _per_stage_ints(v: Any, path: str, src: str | Path | None, n: int, lo: int, hi: int) -> tuple[int, ...]:
    """An int (the same for every stage) or a list of ``n`` ints, as a tuple of ``n``."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (check_int(v, path, src, lo, hi),) * n
    return tuple(check_int(x, f"{path}[{i}]", src, lo, hi) for i, x in enumerate(_list(v, path, src, n)))


def _per_stage_axes(v: Any, path: str, src: str | Path | None, n: int, dim: int, lo: int, hi: int
                    ) -> tuple[tuple[int, ...], ...]:
    """An int, a list of ``n`` ints, or a list of ``n`` lists of ``dim`` ints, as ``n`` tuples of ``dim``."""
    if isinstance(v, int) and not isinstance(v, bool):
        return ((check_int(v, path, src, lo, hi),) * dim,) * n
    out = []
    for i, stage in enumerate(_list(v, path, src, n)):
        if isinstance(stage, int) and not isinstance(stage, bool):
            out.append((check_int(stage, f"{path}[{i}]", src, lo, hi),) * dim)
        else:
            out.append(tuple(check_int(x, f"{path}[{i}][{j}]", src, lo, hi)
                             for j, x in enumerate(_list(stage, f"{path}[{i}]", src, dim))))
    return tuple(out)


def _layer_kwargs(v: Any, key: str, path: str, src: str | Path | None) -> Mapping[str, Any] | None:
    if v is None:
        return None
    section = check_mapping(v, path, src)
    known = LAYER_KWARGS[key]
    out: dict[str, Any] = {}
    for k, x in section.items():
        where = f"{path}.{k}"
        if k not in known:
            fail(src, where, x, f"is not a keyword focusseg passes to this layer (known: {', '.join(known)})")
        if k in ("affine", "track_running_stats", "inplace"):
            out[k] = check_bool(x, where, src)
        elif k == "eps":
            out[k] = check_float(x, where, src, 0.0, 1.0, lo_open=True)
        elif k in ("momentum", "p"):
            out[k] = check_float(x, where, src, 0.0, 1.0, hi_open=(k == "p"))
        elif k in ("negative_slope", "alpha"):
            out[k] = check_float(x, where, src, 0.0, 100.0)
        elif k == "approximate":
            if x not in ("none", "tanh"):
                fail(src, where, x, "must be 'none' or 'tanh'")
            out[k] = x
    return out


def _import_name(value: Any, key: str, path: str, src: str | Path | None, dim: int) -> str | None:
    """The short class name a whitelisted dotted name stands for; None for null."""
    if value is None:
        if key == "conv_op":
            fail(src, path, value, "must name a convolution (torch.nn.Conv2d or torch.nn.Conv3d)")
        return None
    table = IMPORTABLE[key]
    if not isinstance(value, str) or value not in table:
        fail(src, path, value, f"is not a class focusseg builds for {key} (known: "
                               f"{', '.join(sorted(set(table.values())))}); nothing is imported by name")
    short = table[value]
    if short[-2:] in ("2d", "3d") and short[-2] != str(dim):
        fail(src, path, value, f"does not match the configuration's {dim}D patch size")
    return short


def check_architecture(arch: Any, dim: int, patch_size: Sequence[int] | None, src: str | Path | None,
                       where: str) -> tuple[str, dict]:
    """nnU-Net's ``architecture`` object checked: a known network class, its known keyword arguments with their
    types, ranges and per-stage lengths, importable names from :data:`IMPORTABLE` only, and (when given) a patch
    size divisible by each axis's total stride (else the decoder cannot join its skips).

    Args:
        arch: the object (``network_class_name``, ``arch_kwargs``, ``_kw_requires_import``).
        dim: the number of spatial axes (2 or 3).
        patch_size: the patch size in the network's axis order, or None.
        src: the file named in errors (plans.json, a plan), or None.
        where: the field path of ``arch``.

    Returns:
        the class's short name and its keyword arguments (per-stage values expanded to tuples, importable names
        as short class names, ``deep_supervision`` removed: the caller sets it).

    Raises:
        PlanError: one line naming the field and the bound.
    """
    arch = check_mapping(arch, where, src)
    cls_name = arch.get("network_class_name")
    if not isinstance(cls_name, str) or cls_name not in NETWORK_CLASSES:
        fail(src, f"{where}.network_class_name", cls_name,
             "is not a network class focusseg builds (PlainConvUNet or ResidualEncoderUNet of "
             "dynamic_network_architectures.architectures.unet)")
    cls = NETWORK_CLASSES[cls_name]
    unknown = sorted(set(arch) - {"network_class_name", "arch_kwargs", "_kw_requires_import"})
    if unknown:
        fail(src, f"{where}.{unknown[0]}", arch[unknown[0]], "is not an architecture field nnU-Net writes")
    kw = check_mapping(arch.get("arch_kwargs"), f"{where}.arch_kwargs", src)
    base = f"{where}.arch_kwargs"
    for k in kw:
        if k not in ARCH_KWARGS[cls]:
            fail(src, f"{base}.{k}", kw[k], f"is not a keyword argument of {cls}")
    req = arch.get("_kw_requires_import", [])
    req = _list(req, f"{where}._kw_requires_import", src, hi=len(IMPORTABLE))
    for i, r in enumerate(req):
        if not isinstance(r, str) or r not in IMPORTABLE or r not in ARCH_KWARGS[cls]:
            fail(src, f"{where}._kw_requires_import[{i}]", r,
                 f"only {', '.join(k for k in IMPORTABLE if k in ARCH_KWARGS[cls])} are resolved (from a fixed table, "
                 "never by importing a name)")
    per_stage = _PER_STAGE[cls]
    for k in ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", per_stage,
              "n_conv_per_stage_decoder"):
        if k not in kw:
            fail(src, f"{base}.{k}", None, f"is required by {cls}")
    n = check_int(kw["n_stages"], f"{base}.n_stages", src, 1, MAX_STAGES)
    out: dict[str, Any] = {"n_stages": n}
    out["features_per_stage"] = _per_stage_ints(kw["features_per_stage"], f"{base}.features_per_stage", src, n, 1,
                                                MAX_WIDTH)
    out["kernel_sizes"] = _per_stage_axes(kw["kernel_sizes"], f"{base}.kernel_sizes", src, n, dim, 1, MAX_KERNEL)
    out["strides"] = _per_stage_axes(kw["strides"], f"{base}.strides", src, n, dim, 1, MAX_STRIDE)
    out[per_stage] = _per_stage_ints(kw[per_stage], f"{base}.{per_stage}", src, n, 1, MAX_BLOCKS_PER_STAGE)
    out["n_conv_per_stage_decoder"] = _per_stage_ints(kw["n_conv_per_stage_decoder"],
                                                      f"{base}.n_conv_per_stage_decoder", src, n - 1, 1,
                                                      MAX_BLOCKS_PER_STAGE)
    for k in ("conv_bias", "nonlin_first"):
        if k in kw:
            out[k] = check_bool(kw[k], f"{base}.{k}", src)
    for k in IMPORTABLE:
        if k in kw:
            if isinstance(kw[k], str) and k not in req:
                fail(src, f"{base}.{k}", kw[k], "is a class name but not listed in _kw_requires_import")
            out[k] = _import_name(kw[k], k, f"{base}.{k}", src, dim)
    for k in LAYER_KWARGS:
        if k in kw:
            out[k] = _layer_kwargs(kw[k], k, f"{base}.{k}", src)
    if "deep_supervision" in kw:
        check_bool(kw["deep_supervision"], f"{base}.deep_supervision", src)
    if kw.get("bottleneck_channels") is not None:
        out["bottleneck_channels"] = _per_stage_ints(kw["bottleneck_channels"], f"{base}.bottleneck_channels", src,
                                                     n, 1, MAX_WIDTH)
    if kw.get("stem_channels") is not None:
        out["stem_channels"] = check_int(kw["stem_channels"], f"{base}.stem_channels", src, 1, MAX_WIDTH)
    if patch_size is not None:
        for axis in range(dim):
            total = math.prod(s[axis] for s in out["strides"])
            if patch_size[axis] % total:
                fail(src, f"{base}.strides", kw["strides"], f"downsample patch axis {axis} ({patch_size[axis]}) by "
                                                            f"{total}, which does not divide it")
    return cls, out


def architecture_spec(cls: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON form of checked keyword arguments (:func:`check_architecture`'s result): nnU-Net's
    ``architecture`` object with canonical dotted class names, per-stage values as lists, and
    ``_kw_requires_import`` naming exactly the keys that hold a class. Checking it again gives the same arguments.

    Args:
        cls: ``PlainConvUNet`` or ``ResidualEncoderUNet``.
        kwargs: the checked keyword arguments.

    Returns:
        ``{"network_class_name", "arch_kwargs", "_kw_requires_import"}``.
    """
    out: dict[str, Any] = {}
    required = []
    for key, value in kwargs.items():
        if key in IMPORTABLE:
            if value is not None:
                out[key] = (f"{_BLOCK_MODULE}.{value}" if key == "block" else f"torch.nn.{value}")
                required.append(key)
            else:
                out[key] = None
        else:
            out[key] = _plain(value)
    return {"network_class_name": CLASS_PATHS[cls], "arch_kwargs": out, "_kw_requires_import": required}


def _plain(value: Any) -> Any:
    """A checked argument as the network class and plans.json take it: a mapping as a dict, a tuple (of
    per-stage tuples) as a list (of lists), anything else unchanged."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return [list(v) if isinstance(v, tuple) else v for v in value]
    return value


# ----------------------------------------------------------------------------------------------- building

def dynamic_network_architectures() -> tuple[Any, Any]:
    """The ``unet`` and ``residual`` modules of dynamic-network-architectures.

    Raises:
        UsageError: the package is not installed (names the extra to install).
    """
    try:
        unet = importlib.import_module("dynamic_network_architectures.architectures.unet")
        residual = importlib.import_module(_BLOCK_MODULE)
    except ImportError as exc:
        raise UsageError(f"nnU-Net models need dynamic-network-architectures ({one_line(exc)})",
                         hint="pip install 'focusseg[nnunet]'") from None
    return unet, residual


def class_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Checked keyword arguments (:func:`check_architecture`) with each short class name replaced by its class from
    the fixed tables, ready for the network class (deep supervision not set)."""
    _, residual = dynamic_network_architectures()
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _LAYER_KEYS:
            out[key] = None if value is None else TORCH_LAYERS[value]
        elif key == "block":
            if value is not None:
                out[key] = getattr(residual, value)  # BasicBlockD or BottleneckD (from IMPORTABLE)
        else:
            out[key] = _plain(value)
    return out


def check_input_axes(value: Any, dim: int, src: str | Path | None = None, where: str = "network.input_axes"
                     ) -> tuple[int, ...]:
    """``input_axes``: a permutation of ``0..dim-1`` (None: the identity).

    Raises:
        PlanError: anything else.
    """
    if value is None:
        return tuple(range(dim))
    axes = _list(value, where, src, dim)
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in axes) or sorted(axes) != list(range(dim)):
        fail(src, where, value, f"must be a permutation of 0..{dim - 1}")
    return tuple(axes)


class _AxisOrder:
    """The behaviour added to nnU-Net's network classes (mixed in by :func:`focusseg_class`)."""

    #: network axis n reads focusseg axis input_axes[n] (None: the same order)
    input_axes: tuple[int, ...] | None = None
    #: whether training mode returns every decoder head
    train_deep_supervision: bool = False

    def train(self, mode: bool = True) -> Any:
        """Training mode also switches the decoder's heads on when built with deep supervision."""
        out = super().train(mode)  # type: ignore[misc]
        self.decoder.deep_supervision = bool(mode and self.train_deep_supervision)  # type: ignore[attr-defined]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits in focusseg's axis order: the input permuted to the network's axes, the outputs back."""
        axes = self.input_axes
        if axes is None:
            return super().forward(x)  # type: ignore[misc]
        out = super().forward(x.permute(0, 1, *[a + 2 for a in axes]))  # type: ignore[misc]
        back = [0, 1, *[axes.index(a) + 2 for a in range(len(axes))]]
        if isinstance(out, (list, tuple)):
            return [o.permute(*back) for o in out]
        return out.permute(*back)


_CLASSES: dict[type, type] = {}


def focusseg_class(base: type[nn.Module]) -> type[nn.Module]:
    """``base`` (an nnU-Net network class) with focusseg's axis order and deep-supervision contract; its
    parameter and buffer names are ``base``'s."""
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Focusseg{base.__name__}", (_AxisOrder, base), {"__module__": __name__})
    return _CLASSES[base]


def default_arch_kwargs(spatial_dims: int) -> dict[str, Any]:
    """nnU-Net's plain U-Net of 5 stages (32 to 320 features, kernels 3, strides 2, two convolutions per stage,
    instance normalisation, leaky ReLU): what ``"nnunet"`` builds when a plan names no architecture."""
    return {"n_stages": 5, "features_per_stage": [32, 64, 128, 256, 320], "kernel_sizes": 3,
            "strides": [1, 2, 2, 2, 2], "n_conv_per_stage": 2, "n_conv_per_stage_decoder": 2, "conv_bias": True,
            "conv_op": f"torch.nn.Conv{spatial_dims}d", "norm_op": f"torch.nn.InstanceNorm{spatial_dims}d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}}


def _checked(spatial_dims: int, network_class_name: Any, arch_kwargs: Any, kw_requires_import: Any,
             input_axes: Any) -> tuple[str, dict, tuple[int, ...]]:
    if spatial_dims not in (2, 3):
        raise PlanError(f"network nnunet: spatial_dims {spatial_dims} (2 or 3 only)")
    if network_class_name is None and arch_kwargs is None:  # no architecture given: nnU-Net's default U-Net
        network_class_name, arch_kwargs, kw_requires_import = CLASS_PATHS["PlainConvUNet"], default_arch_kwargs(
            spatial_dims), ["conv_op", "norm_op", "nonlin"]
    required = [] if kw_requires_import is None else kw_requires_import
    if isinstance(arch_kwargs, Mapping) and "conv_op" not in arch_kwargs and isinstance(required, (list, tuple)):
        # no convolution named: the one of the plan's dimensions (nnU-Net's plans always name it)
        arch_kwargs = {**arch_kwargs, "conv_op": f"torch.nn.Conv{spatial_dims}d"}
        required = [*required, "conv_op"]
    arch = {"network_class_name": network_class_name, "arch_kwargs": arch_kwargs, "_kw_requires_import": required}
    cls, kwargs = check_architecture(arch, spatial_dims, None, None, "network")
    return cls, kwargs, check_input_axes(input_axes, spatial_dims)


def nnunet_divisor(spatial_dims: int = 3, network_class_name: Any = None, arch_kwargs: Any = None,
                   _kw_requires_import: Any = None, input_axes: Any = None, **_: Any) -> tuple[int, ...]:
    """Per focusseg axis, the product of the strides of the network axis that reads it.

    Raises:
        PlanError: the architecture is refused (:func:`check_architecture`).
    """
    _, kwargs, axes = _checked(spatial_dims, network_class_name, arch_kwargs, _kw_requires_import, input_axes)
    per_network_axis = [math.prod(s[n] for s in kwargs["strides"]) for n in range(spatial_dims)]
    out = [1] * spatial_dims
    for n, a in enumerate(axes):
        out[a] = per_network_axis[n]
    return tuple(out)


@register_network("nnunet", divisor=nnunet_divisor, deep_supervision=True)
def build_nnunet(in_channels: int, out_channels: int, spatial_dims: int = 3, deep_supervision: bool = False,
                 network_class_name: Any = None, arch_kwargs: Any = None, _kw_requires_import: Any = None,
                 input_axes: Any = None) -> nn.Module:
    """nnU-Net's network as the plan describes it (nnU-Net's ``get_network_from_plans`` with deep supervision off
    for inference), with focusseg's axis order and deep-supervision contract (module docstring).

    Args:
        in_channels: input channels.
        out_channels: output channels (classes, or regions without background).
        spatial_dims: 2 or 3 (must match the convolution the architecture names).
        deep_supervision: return every decoder head in training mode.
        network_class_name: nnU-Net's class (:data:`NETWORK_CLASSES`); with ``arch_kwargs`` also None, nnU-Net's
            default U-Net (:func:`default_arch_kwargs`).
        arch_kwargs: the class's keyword arguments as a plans file holds them (without ``conv_op``: the
            convolution of ``spatial_dims``).
        _kw_requires_import: the keys of ``arch_kwargs`` holding class names (resolved from :data:`IMPORTABLE`).
        input_axes: focusseg axis read by each network axis (default: the same order).

    Returns:
        the network (a subclass of nnU-Net's class: :func:`focusseg_class`).

    Raises:
        PlanError: the architecture is refused, or the class refuses its arguments.
        UsageError: dynamic-network-architectures is not installed.
    """
    cls_name, kwargs, axes = _checked(spatial_dims, network_class_name, arch_kwargs, _kw_requires_import, input_axes)
    unet, _ = dynamic_network_architectures()
    cls = focusseg_class(getattr(unet, cls_name))
    try:
        net = cls(input_channels=in_channels, num_classes=out_channels, **class_kwargs(kwargs),
                  deep_supervision=False)
    except (TypeError, ValueError, AssertionError, IndexError, KeyError) as exc:
        raise PlanError(f"network: {cls_name} cannot be built from its arch_kwargs "
                        f"({one_line(exc, typed=True)[:160]})") from None
    net.input_axes = None if axes == tuple(range(spatial_dims)) else axes
    net.train_deep_supervision = bool(deep_supervision)
    net.train(net.training)
    return net


__all__ = ["ARCH_KWARGS", "CLASS_PATHS", "IMPORTABLE", "LAYER_KWARGS", "MAX_BLOCKS_PER_STAGE", "MAX_KERNEL",
           "MAX_STRIDE", "NETWORK_CLASSES", "TORCH_LAYERS", "architecture_spec", "build_nnunet",
           "check_architecture", "check_input_axes", "class_kwargs", "default_arch_kwargs",
           "dynamic_network_architectures", "focusseg_class", "nnunet_divisor"]
