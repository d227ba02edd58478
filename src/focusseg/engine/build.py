"""Build the parts of a run from its plan: network, loss, optimiser, LR controller, augmenter, sampler and
class weighter. Every name resolves through a registry, so a recipe can name anything registered.

The layer below the tasks: :mod:`focusseg.engine.task` builds a task from these and assembles a run's
:class:`~focusseg.engine.task.Parts`; nothing here imports the task module."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from focusseg.augment import AugmentConfig, BatchAugmenter
from focusseg.data.samplers import SAMPLERS, sampling_patch
from focusseg.losses import DeepSupervisionLoss, build_loss
from focusseg.nets.from_plan import spatial_dims
from focusseg.settings import training_settings
from focusseg.strategies import CLASS_WEIGHTERS, LR_CONTROLLERS, OPTIMIZERS


def build_loss_from_plan(plan: dict, reduction: str = "mean") -> nn.Module:
    """The training loss (``reduction="none"``: per-sample losses, for strategies), wrapped for deep
    supervision when the plan asks for it. With a plan ``ignore_label`` every part is built with it (the
    ignored voxels are masked out of every loss, as nnU-Net v2); without one the loss is built as before."""
    tr = training_settings(plan)
    extra = {} if plan.get("ignore_label") is None else {"ignore_label": int(plan["ignore_label"])}
    if plan.get("regions"):  # a region plan's loss gets its regions (focusseg.losses.regions)
        extra["regions"] = [list(r) for r in plan["regions"]]
    loss = build_loss(tr.need("loss").to_value(), reduction=reduction, **extra)
    ds = tr.deep_supervision_kwargs()
    if ds:
        loss = DeepSupervisionLoss(loss, **ds)
    return loss


def build_optimizer(plan: dict, network: nn.Module, total_iterations: int) -> torch.optim.Optimizer:
    name, kwargs = training_settings(plan).need("optimizer").split()
    lr = kwargs.pop("lr", 0.01)
    return OPTIMIZERS.build({"name": name, **kwargs}, params=network.parameters(), lr=lr,
                            total_iterations=total_iterations)


def build_lr_controller(plan: dict, optimizer: torch.optim.Optimizer, total_iterations: int) -> Any:
    tr = training_settings(plan)
    name, kwargs = tr.need("lr_schedule").split()
    lr0 = tr.lr
    if "horizon_epochs" in kwargs:  # a schedule planned in epochs (poly): in iterations for the controller
        kwargs["horizon_iterations"] = int(kwargs.pop("horizon_epochs")) * tr.need("iterations_per_epoch")
    return LR_CONTROLLERS.build({"name": name, **kwargs}, optimizer=optimizer, lr0=lr0,
                                max_iterations=total_iterations)


def build_augmenter(plan: dict) -> Any:
    cfg = AugmentConfig.from_dict(training_settings(plan).augmentation_options())
    return BatchAugmenter(cfg, spatial_dims=spatial_dims(plan))


def build_weighter(plan: dict) -> Any | None:
    spec = training_settings(plan).class_weighter
    if spec is None:
        return None
    return CLASS_WEIGHTERS.build(spec.to_value(), n_classes=int(plan["n_classes"]))


def build_sampler(plan: dict, case_shapes: dict, locations: dict) -> Any:
    """The plan's sampler over the training cases. ``locations`` are the store's; a plan ``ignore_label`` never
    has locations of its own (it is no class: foreground patches are never centred on ignored voxels), even in a
    store written otherwise."""
    ignore = plan.get("ignore_label")
    if ignore is not None:
        locations = {c: {k: v for k, v in (locs or {}).items() if int(k) != int(ignore)}
                     for c, locs in locations.items()}
    tr = training_settings(plan)
    name, kwargs = tr.sampler.split()
    kwargs.setdefault("p_foreground", tr.foreground_oversampling)
    return SAMPLERS.build({"name": name, **kwargs}, case_shapes=case_shapes,
                          patch_size=sampling_patch(plan), locations=locations)  # 2D: (1, H, W) at slice_axis


