"""Build the parts of a run from its plan: network, loss, optimiser, LR controller, augmenter, sampler and
class weighter. Every name resolves through a registry, so a recipe can name anything registered.

The layer below the tasks: :mod:`focusseg.engine.task` builds a task from these and assembles a run's
:class:`~focusseg.engine.task.Parts`; nothing here imports the task module."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from focusseg.registry import split_spec


def spatial_dims(plan: dict) -> int:
    return len(plan["patch_size"])


def build_network_from_plan(plan: dict) -> nn.Module:
    from focusseg.nets import build_network
    from focusseg.regions import output_channels

    name, kwargs = split_spec(plan["network"])  # outputs: n_classes, or one per region (focusseg.regions)
    return build_network(name, in_channels=len(plan["channel_names"]), out_channels=output_channels(plan),
                         spatial_dims=spatial_dims(plan), patch_size=tuple(plan["patch_size"]), **kwargs)


def build_loss_from_plan(plan: dict, reduction: str = "mean") -> nn.Module:
    """The training loss (``reduction="none"``: per-sample losses, for strategies), wrapped for deep
    supervision when the plan asks for it. With a plan ``ignore_label`` every part is built with it (the
    ignored voxels are masked out of every loss, as nnU-Net v2); without one the loss is built as before."""
    from focusseg.losses import DeepSupervisionLoss, build_loss

    tr = plan["training"]
    extra = {} if plan.get("ignore_label") is None else {"ignore_label": int(plan["ignore_label"])}
    if plan.get("regions"):  # a region plan's loss gets its regions (focusseg.losses.regions)
        extra["regions"] = [list(r) for r in plan["regions"]]
    loss = build_loss(tr["loss"], reduction=reduction, **extra)
    ds = tr.get("deep_supervision")
    if ds:
        loss = DeepSupervisionLoss(loss, **ds)
    return loss


def build_optimizer(plan: dict, network: nn.Module, total_iterations: int) -> torch.optim.Optimizer:
    from focusseg.strategies import OPTIMIZERS

    name, kwargs = split_spec(plan["training"]["optimizer"])
    lr = kwargs.pop("lr", 0.01)
    return OPTIMIZERS.build({"name": name, **kwargs}, params=network.parameters(), lr=lr,
                            total_iterations=total_iterations)


def build_lr_controller(plan: dict, optimizer: torch.optim.Optimizer, total_iterations: int) -> Any:
    from focusseg.strategies import LR_CONTROLLERS

    name, kwargs = split_spec(plan["training"]["lr_schedule"])
    lr0 = plan["training"]["optimizer"].get("lr", 0.01)
    if "horizon_epochs" in kwargs:  # a schedule planned in epochs (poly): in iterations for the controller
        kwargs["horizon_iterations"] = int(kwargs.pop("horizon_epochs")) * int(plan["training"]["iterations_per_epoch"])
    return LR_CONTROLLERS.build({"name": name, **kwargs}, optimizer=optimizer, lr0=lr0,
                                max_iterations=total_iterations)


def build_augmenter(plan: dict) -> Any:
    from focusseg.augment import AugmentConfig, BatchAugmenter

    spec = plan["training"].get("augmentation", "nnunet")
    cfg = AugmentConfig.from_dict({"preset": spec} if isinstance(spec, str) else dict(spec))
    return BatchAugmenter(cfg, spatial_dims=spatial_dims(plan))


def build_weighter(plan: dict) -> Any | None:
    spec = plan["training"].get("class_weighter")
    if not spec:
        return None
    from focusseg.strategies import CLASS_WEIGHTERS

    return CLASS_WEIGHTERS.build(spec, n_classes=int(plan["n_classes"]))


def build_sampler(plan: dict, case_shapes: dict, locations: dict) -> Any:
    """The plan's sampler over the training cases. ``locations`` are the store's; a plan ``ignore_label`` never
    has locations of its own (it is no class: foreground patches are never centred on ignored voxels), even in a
    store written otherwise."""
    from focusseg.data.samplers import SAMPLERS, sampling_patch

    ignore = plan.get("ignore_label")
    if ignore is not None:
        locations = {c: {k: v for k, v in (locs or {}).items() if int(k) != int(ignore)}
                     for c, locs in locations.items()}
    spec = plan["training"].get("sampler") or {"name": "foreground"}
    name, kwargs = split_spec(spec)
    kwargs.setdefault("p_foreground", plan["training"].get("foreground_oversampling", 0.33))
    return SAMPLERS.build({"name": name, **kwargs}, case_shapes=case_shapes,
                          patch_size=sampling_patch(plan), locations=locations)  # 2D: (1, H, W) at slice_axis


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles, as oneDNN uses them)."""
    probe = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(f()) for f in probe if callable(f))


def amp_dtype(plan: dict, device: torch.device) -> torch.dtype | None:
    """``training.amp``: "auto" | "bf16" | "fp16" | "none".

    - "auto": on CUDA, bf16 autocast on Ampere or newer (compute capability >= 8: bf16 has fp32's range, no
      scaler needed), else fp16 with a GradScaler (nnU-Net's choice on older cards); on the CPU, bf16 only where
      the CPU computes bf16 natively (:func:`cpu_has_native_bf16`: AVX512-BF16 or AMX), else fp32 — measured on
      an AVX2-only EPYC, a bf16 training step of the default Hippocampus U-Net took 11x longer than fp32 (7.6 s vs
      0.66 s), while on CPUs with AVX512-BF16 it was 1.5-2x faster.
    - "fp16" needs CUDA; on the CPU it falls back to bf16. "bf16" is taken as given (on any device).
    Explicit values are kept as they are."""
    amp = str(plan["training"].get("amp", "none")).lower()
    if amp in ("none", "off", "false", "fp32"):
        return None
    if amp == "auto":
        if device.type != "cuda":
            return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    if amp == "fp16" and device.type == "cuda":
        return torch.float16
    return torch.bfloat16
