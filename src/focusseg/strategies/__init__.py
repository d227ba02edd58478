"""Training strategies, one file per idea, and the registries recipes name them by.

Builders have one signature per registry so the trainer can build any entry the same way:

- ``SAMPLERS.build(spec, case_shapes=..., patch_size=...)`` -> ``Sampler`` ("focused_practice").
- ``CLASS_WEIGHTERS.build(spec, n_classes=K)`` -> ``ClassWeighter`` ("tcf", "pcf", "cbs").
- ``LR_CONTROLLERS.build(spec, optimizer=..., lr0=..., max_iterations=...)`` -> ``LRController``
  ("poly", "cosine", "constant", "metric_driven"; the last ignores ``max_iterations``).
- ``OPTIMIZERS.build(spec, params=..., lr=..., total_iterations=...)`` -> ``torch.optim.Optimizer``
  ("sgd", "adamw", "ranger21"; only Ranger21 uses ``total_iterations``, for its warmup/warmdown).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from focusseg.data.samplers import SAMPLERS  # one sampler registry: foreground, uniform, focused_practice
from focusseg.registry import Registry
from focusseg.strategies.class_weights import CBSWeighter, PCFWeighter, TCFWeighter
from focusseg.strategies.cycle import CycleTask, cycle_select, ensemble_logits, keep_schedule
from focusseg.strategies.focused_practice import FocusedPracticeSampler, otsu_threshold
from focusseg.strategies.lr import ConstantLR, CosineLR, MetricDrivenLR, PolyLR
from focusseg.strategies.model_cv import modelwise_splits
from focusseg.strategies.ranger21 import Ranger21

CLASS_WEIGHTERS: Registry[Any] = Registry("class weighter")
LR_CONTROLLERS: Registry[Any] = Registry("lr controller")
OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")

CLASS_WEIGHTERS.register("tcf")(TCFWeighter)
CLASS_WEIGHTERS.register("pcf")(PCFWeighter)
CLASS_WEIGHTERS.register("cbs")(CBSWeighter)


@LR_CONTROLLERS.register("poly")
def _poly(optimizer: torch.optim.Optimizer, lr0: float, max_iterations: int, **kw: Any) -> PolyLR:
    return PolyLR(optimizer, lr0, max_iterations, **kw)


@LR_CONTROLLERS.register("cosine")
def _cosine(optimizer: torch.optim.Optimizer, lr0: float, max_iterations: int, **kw: Any) -> CosineLR:
    return CosineLR(optimizer, lr0, max_iterations, **kw)


@LR_CONTROLLERS.register("constant")
def _constant(optimizer: torch.optim.Optimizer, lr0: float, max_iterations: int = 0) -> ConstantLR:
    return ConstantLR(optimizer, lr0)


@LR_CONTROLLERS.register("metric_driven")
def _metric(optimizer: torch.optim.Optimizer, lr0: float, max_iterations: int = 0, **kw: Any) -> MetricDrivenLR:
    return MetricDrivenLR(optimizer, lr0, **kw)


@OPTIMIZERS.register("sgd")
def _sgd(
    params: Iterable[Any],
    lr: float,
    total_iterations: int = 0,
    momentum: float = 0.99,
    weight_decay: float = 3e-5,
    nesterov: bool = True,
    **kw: Any,
) -> torch.optim.Optimizer:
    """nnU-Net's SGD: Nesterov momentum 0.99, weight decay 3e-5."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, **kw)


@OPTIMIZERS.register("adamw")
def _adamw(
    params: Iterable[Any], lr: float, total_iterations: int = 0, weight_decay: float = 3e-5, **kw: Any
) -> torch.optim.Optimizer:
    """AdamW with FP-PET's weight decay 3e-5 (paper 000 §3.4: "same initial settings" as its SGD)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kw)


@OPTIMIZERS.register("ranger21")
def _ranger21(params: Iterable[Any], lr: float, total_iterations: int, **kw: Any) -> torch.optim.Optimizer:
    return Ranger21(params, lr=lr, total_iterations=total_iterations, **kw)


__all__ = [
    "CBSWeighter",
    "CLASS_WEIGHTERS",
    "ConstantLR",
    "CosineLR",
    "CycleTask",
    "FocusedPracticeSampler",
    "LR_CONTROLLERS",
    "MetricDrivenLR",
    "OPTIMIZERS",
    "PCFWeighter",
    "PolyLR",
    "Ranger21",
    "SAMPLERS",
    "TCFWeighter",
    "cycle_select",
    "ensemble_logits",
    "keep_schedule",
    "modelwise_splits",
    "otsu_threshold",
]
