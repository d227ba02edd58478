"""Learning-rate controllers (role ``LRController``): poly, cosine with warmup, constant, and FP-PET's
metric-driven rate.

The loop calls ``step(iteration)`` before every optimiser step and ``step(iteration, metric)`` after each
validation (mean foreground Dice in [0, 1]); a controller writes the rate into its optimiser and returns it.
poly (nnU-Net): ``lr0 * (1 - it / H) ** 0.9`` (``H`` = ``max_it``, or ``horizon_iterations``: FLARE21's 1000-epoch
schedule stopped at 300); cosine with linear warmup; constant (pairs with Ranger21).
metric_driven (FP-PET, paper 000 §3.4 eq. 2): ``lr = lr0 * base ** (dice / divisor)`` (3e-5, 0.9, 10), re-set
after each validation. Reading chosen: ``dice`` in **percent** (``dice_in_percent=True``); in [0, 1] the rate could
fall by at most 1 %, not the decay the paper describes. Formulas: ``docs/strategies.md``.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class _Controller:
    """Shared part: writes ``lr`` into the optimiser; ``state_dict`` holds the rate in force."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr0: float) -> None:
        if lr0 <= 0:
            raise ValueError(f"lr0 must be > 0, got {lr0}")
        self.optimizer = optimizer
        self.lr0 = float(lr0)
        self.lr = float(lr0)
        self._apply(self.lr)

    def _apply(self, lr: float) -> float:
        self.lr = float(lr)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        return self.lr

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "lr0": self.lr0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr0 = float(state["lr0"])
        self._apply(float(state["lr"]))


class ConstantLR(_Controller):
    """``lr = lr0`` at every iteration."""

    def step(self, iteration: int, metric: float | None = None) -> float:
        return self._apply(self.lr0)


class PolyLR(_Controller):
    """nnU-Net's polynomial decay ``lr0 * (1 - it / H) ** exponent`` (per iteration), ``H`` =
    ``horizon_iterations`` when given (a schedule planned for longer than the run, which stops at
    ``max_iterations``), else ``max_iterations``; ``it`` is clamped to ``[0, min(max_iterations, H)]``."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, lr0: float, max_iterations: int, exponent: float = 0.9,
        horizon_iterations: int | None = None,
    ) -> None:
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        if horizon_iterations is not None and int(horizon_iterations) < 1:
            raise ValueError(f"horizon_iterations must be >= 1, got {horizon_iterations}")
        self.max_iterations = int(max_iterations)
        self.horizon_iterations = None if horizon_iterations is None else int(horizon_iterations)
        self.exponent = float(exponent)
        super().__init__(optimizer, lr0)

    def step(self, iteration: int, metric: float | None = None) -> float:
        if metric is not None:  # validation call: the schedule depends on the iteration only
            return self.lr
        horizon = self.horizon_iterations or self.max_iterations
        it = min(max(int(iteration), 0), self.max_iterations, horizon)
        return self._apply(self.lr0 * (1.0 - it / horizon) ** self.exponent)


class CosineLR(_Controller):
    """Cosine annealing from ``lr0`` to ``min_lr`` after ``warmup_iterations`` of linear warmup."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr0: float,
        max_iterations: int,
        warmup_iterations: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        if not 0 <= warmup_iterations < max_iterations:
            raise ValueError(f"need 0 <= warmup_iterations < max_iterations, got {warmup_iterations}")
        self.max_iterations = int(max_iterations)
        self.warmup_iterations = int(warmup_iterations)
        self.min_lr = float(min_lr)
        super().__init__(optimizer, lr0)

    def step(self, iteration: int, metric: float | None = None) -> float:
        if metric is not None:
            return self.lr
        it = min(max(int(iteration), 0), self.max_iterations)
        w = self.warmup_iterations
        if it < w:
            return self._apply(self.lr0 * (it + 1) / w)
        frac = (it - w) / (self.max_iterations - w)
        return self._apply(self.min_lr + (self.lr0 - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac)))


class MetricDrivenLR(_Controller):
    """FP-PET eq. 2: ``lr = lr0 * base ** (dice / divisor)`` after each validation (see module docstring).

    Args:
        lr0: rate at Dice 0 (paper: 3e-5).
        base, divisor: 0.9 and 10 in the paper.
        dice_in_percent: multiply the [0, 1] metric by 100 first (the reading chosen; False = literal [0, 1]).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr0: float = 3e-5,
        base: float = 0.9,
        divisor: float = 10.0,
        dice_in_percent: bool = True,
    ) -> None:
        if not 0 < base <= 1 or divisor <= 0:
            raise ValueError(f"need 0 < base <= 1 and divisor > 0, got base={base}, divisor={divisor}")
        self.base = float(base)
        self.divisor = float(divisor)
        self.dice_in_percent = bool(dice_in_percent)
        super().__init__(optimizer, lr0)

    def rate_for(self, dice: float) -> float:
        """The rate eq. 2 gives for a validation Dice in [0, 1]."""
        if not math.isfinite(dice):
            return self.lr
        d = dice * 100.0 if self.dice_in_percent else dice
        return self.lr0 * self.base ** (d / self.divisor)

    def step(self, iteration: int, metric: float | None = None) -> float:
        if metric is None:
            return self._apply(self.lr)  # keep the rate set by the last validation
        return self._apply(self.rate_for(float(metric)))
