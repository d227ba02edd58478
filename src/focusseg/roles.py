"""Typed roles that strategies play in the training loop (``Sampler``, ``ClassWeighter``, ``LRController``).

The loop calls these at fixed points; each part is small and stateful, with ``state_dict``/``load_state_dict``
so that ``--resume`` continues exactly. This module depends on torch alone: the data layer (loader, samplers),
the strategies and the engine all import it, and it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class PatchRequest:
    """One training sample to crop: a case and the patch's start corner in preprocessed voxel coordinates.

    ``start`` may be negative or reach past the volume: the loader pads with zeros (label 0).
    ``key`` identifies the patch for samplers that remember per-patch state (Focused Practice); -1 otherwise.
    """

    case: str
    start: tuple[int, ...]
    key: int = -1


@dataclass
class StepOutput:
    """What one training step reports to strategies.

    ``per_sample_loss`` is detached, shape (B,), aligned with ``requests``; ``per_class_tp/fp/fn`` are (K,) voxel
    counts of the argmax prediction over the batch (background included) for cheap running scores.
    ``finite`` is False when the step was skipped because the loss or the gradient was NaN/inf (the optimiser
    did not step; the loop counts such steps and stops training after too many in a row).
    """

    requests: list[PatchRequest]
    loss: float
    per_sample_loss: torch.Tensor
    per_class_tp: torch.Tensor | None = None
    per_class_fp: torch.Tensor | None = None
    per_class_fn: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    finite: bool = True


@runtime_checkable
class Sampler(Protocol):
    """Chooses what to train on. Runs in the main process so training feedback can reach it."""

    def next_batch(self, batch_size: int, generator: torch.Generator) -> list[PatchRequest]: ...

    def update(self, step: StepOutput) -> None: ...

    def epoch_end(self, epoch: int) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class ClassWeighter(Protocol):
    """Per-class loss weights re-set from per-class validation scores (TCF / PCF / CBS)."""

    def weights(self) -> torch.Tensor: ...

    def update(self, scores: torch.Tensor) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class LRController(Protocol):
    """Sets the optimiser's learning rate: called every iteration with ``metric=None`` and after each validation
    with the validation metric (mean foreground Dice in [0, 1]). Returns the learning rate now in force."""

    def step(self, iteration: int, metric: float | None = None) -> float: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
