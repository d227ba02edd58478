"""nnU-Net's networks built from a checked plans configuration with dynamic-network-architectures, as nnU-Net's
``get_network_from_plans`` builds them, and loaded with a fold's weights.

The network class and every layer class come from fixed tables (:data:`TORCH_LAYERS`, the two U-Net classes of
``dynamic_network_architectures.architectures.unet`` and its two residual blocks); nothing is imported by a name
read from a file. The network is first built on the meta device (no memory) to count its parameters against
:data:`MAX_PARAMETERS`, then filled from the checkpoint with ``strict=True`` and ``assign=True``: the checkpoint's
tensors become the parameters, every name and shape must match, and no second copy of the weights is made.
Deep supervision is off (inference uses the full-resolution output only); the extra low-resolution heads stay in
the network, as in nnU-Net, so a checkpoint trained with deep supervision loads unchanged.

``dynamic-network-architectures`` is an optional dependency (``pip install focusseg[nnunet]``), imported when a
network is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from focusseg.errors import CheckpointError, PlanError, UsageError, one_line
from focusseg.nets.nnunet_dna import TORCH_LAYERS, class_kwargs, dynamic_network_architectures
from focusseg.nnunet.checkpoint import NnunetCheckpoint, load_nnunet_checkpoint
from focusseg.nnunet.model_folder import NnunetConfiguration, NnunetModelFolder

#: Most parameters of a network built from a plans file (nnU-Net's largest residual-encoder U-Nets have a few
#: hundred million).
MAX_PARAMETERS = 2_000_000_000

#: Trainers whose network differs from the plans' in a way focusseg rebuilds: nnUNetTrainerBN swaps instance
#: normalisation for batch normalisation.
BATCHNORM_TRAINERS = ("nnUNetTrainerBN",)


def network_kwargs(config: NnunetConfiguration, trainer: str | None = None) -> dict[str, Any]:
    """The configuration's checked ``arch_kwargs`` with each short class name replaced by its class (from the
    fixed tables), deep supervision off, and for :data:`BATCHNORM_TRAINERS` batch normalisation in place of the
    plans' normalisation (as those trainers do).

    Args:
        config: the checked configuration.
        trainer: the trainer class that trained the weights.

    Returns:
        keyword arguments for the network class (without ``input_channels`` and ``num_classes``).
    """
    kwargs = class_kwargs(config.arch_kwargs)
    if trainer in BATCHNORM_TRAINERS:
        kwargs["norm_op"] = nn.BatchNorm3d if config.dim == 3 else nn.BatchNorm2d
        kwargs["norm_op_kwargs"] = {"eps": 1e-5, "affine": True}
    kwargs["deep_supervision"] = False
    return kwargs


def build_network(model: NnunetModelFolder, trainer: str | None = None, device: str | torch.device = "meta"
                  ) -> nn.Module:
    """The configuration's network, built as nnU-Net builds it for inference (deep supervision off), on
    ``device`` (the meta device by default: shapes only, no memory), its parameters counted against
    :data:`MAX_PARAMETERS`.

    Args:
        model: the checked model folder.
        trainer: the trainer that trained the weights (default: the folder's).
        device: where the parameters are allocated.

    Returns:
        the network (in eval mode).

    Raises:
        PlanError: the arguments are refused by the network class, or it has more than :data:`MAX_PARAMETERS`
            parameters (names plans.json).
        UsageError: dynamic-network-architectures is not installed.
    """
    unet, _ = dynamic_network_architectures()
    config = model.configuration
    cls = getattr(unet, config.network_class)
    kwargs = network_kwargs(config, trainer if trainer is not None else model.trainer)
    plans = model.plans_path
    channels, heads = len(model.dataset.channel_names), model.dataset.num_heads
    try:
        with torch.device("meta"):
            meta = cls(input_channels=channels, num_classes=heads, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, IndexError, KeyError) as exc:
        raise PlanError(f"configurations.{config.name}.architecture: {config.network_class} cannot be built from "
                        f"it ({one_line(exc, typed=True)[:160]})", plans) from None
    count = sum(p.numel() for p in meta.parameters())
    if count > MAX_PARAMETERS:
        raise PlanError(f"configurations.{config.name}.architecture gives a network of {count:,} parameters "
                        f"(at most {MAX_PARAMETERS:,})", plans)
    if torch.device(device).type == "meta":
        return meta.eval()
    with torch.device(device):
        return cls(input_channels=channels, num_classes=heads, **kwargs).eval()


def load_weights(network: nn.Module, checkpoint: NnunetCheckpoint) -> nn.Module:
    """Fill ``network`` (built on the meta device or any other) with the checkpoint's weights, ``strict=True``:
    every parameter and buffer name and shape must match.

    Returns:
        the network, on the CPU, in eval mode.

    Raises:
        CheckpointError: one line naming the checkpoint and the first missing, unexpected or mis-shaped tensor.
    """
    expected = network.state_dict()
    weights = checkpoint.network_weights
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]!r})")
        raise CheckpointError(f"its weights do not fit the network the plans describe: {', '.join(parts)} "
                              "(another configuration, trainer or plans file?)", checkpoint.path)
    for k, t in expected.items():
        if tuple(t.shape) != tuple(weights[k].shape):
            raise CheckpointError(f"its weights do not fit the network the plans describe: {k!r} has shape "
                                  f"{tuple(weights[k].shape)}, the network {tuple(t.shape)}", checkpoint.path)
        if t.dtype.is_floating_point != weights[k].dtype.is_floating_point:
            raise CheckpointError(f"network_weights[{k!r}] is {weights[k].dtype}, the network's {t.dtype}",
                                  checkpoint.path)
    try:
        network.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"its weights do not fit the network ({one_line(exc)[:200]})", checkpoint.path) from None
    left = [n for n, t in [*network.named_parameters(), *network.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"the checkpoint leaves {left[0]!r} of the network unset", checkpoint.path)
    return network.eval()


def load_fold_checkpoint(model: NnunetModelFolder, path: str | Path) -> NnunetCheckpoint:
    """A fold's checkpoint of ``model`` read safely (:func:`~focusseg.nnunet.checkpoint.load_nnunet_checkpoint`)
    and checked against the folder: trained with its configuration, mirroring only axes its network has.

    Args:
        model: the checked model folder.
        path: the fold's checkpoint file.

    Returns:
        the checkpoint's kept fields.

    Raises:
        CheckpointError: the checkpoint is refused, was trained with another configuration, or allows mirroring
            along an axis the network does not have.
    """
    ckpt = load_nnunet_checkpoint(path)
    if ckpt.configuration is not None and ckpt.configuration != model.configuration.name:
        raise CheckpointError(f"was trained with configuration {ckpt.configuration!r}, not the folder's "
                              f"{model.configuration.name!r}", ckpt.path)
    if ckpt.mirror_axes is not None and any(a >= model.configuration.dim for a in ckpt.mirror_axes):
        raise CheckpointError(f"inference_allowed_mirroring_axes {list(ckpt.mirror_axes)} name an axis the "
                              f"{model.configuration.dim}D network does not have", ckpt.path)
    return ckpt


def load_fold(model: NnunetModelFolder, fold: int | str) -> tuple[nn.Module, NnunetCheckpoint]:
    """One fold's network with its weights: the checkpoint read safely
    (:func:`~focusseg.nnunet.checkpoint.load_nnunet_checkpoint`), its configuration checked against the folder's,
    the network built on the meta device and filled (:func:`load_weights`).

    Args:
        model: the checked model folder.
        fold: a key of ``model.checkpoints``.

    Returns:
        the CPU network in eval mode, and the checkpoint's kept fields (trainer, mirroring axes).

    Raises:
        UsageError: the folder has no such fold. CheckpointError: the checkpoint is refused, was trained with another
        configuration, or its weights do not fit. PlanError: the network cannot be built.
    """
    if fold not in model.checkpoints:
        raise UsageError(f"{model.path}: no fold {fold!r} (folds: {', '.join(map(str, model.checkpoints))})")
    ckpt = load_fold_checkpoint(model, model.checkpoints[fold])
    network = build_network(model, trainer=ckpt.trainer_name)
    return load_weights(network, ckpt), ckpt


__all__ = ["BATCHNORM_TRAINERS", "MAX_PARAMETERS", "TORCH_LAYERS", "build_network", "dynamic_network_architectures",
           "load_fold", "load_weights", "network_kwargs"]
