"""Dynamic class loss weights (role ``ClassWeighter``): TCF, PCF and CBS from "Runtime freezing" (paper 003 §2.4).

Weights are re-set once per epoch from the foreground classes' validation Dice ``S_i``: ``update(scores)`` takes
``(K - 1,)`` scores, ``weights()`` returns ``(K,)`` with the background fixed at ``background_weight``. A NaN
score (class absent) keeps the class's weight; histories start at the first validation.

- TCF (eq. 2): ``w_i = frozen_weight (0.1) if S_i > threshold (0.9) else 1``.
- PCF (eq. 3): when the plateau trigger fires on the best unfrozen class ``i``, freeze it; frozen stays frozen.
- CBS (eq. 4): on a trigger, freeze ``i``, then every unfrozen ``k`` gets ``min(1 / (S_k + zeta), max_weight)``.

Reading chosen for eq. 3's trigger (``criterion="plateau"``): fire when a window of ``delta + 1`` epochs brought
no improvement larger than ``eps`` (plateau or decline); ``"literal"`` fires only on a decline, as printed. The
derivation: ``docs/strategies.md``.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class _Weighter:
    def __init__(self, n_classes: int, frozen_weight: float = 0.1, background_weight: float = 1.0) -> None:
        if n_classes < 2:
            raise ValueError(f"n_classes counts background and must be >= 2, got {n_classes}")
        self.n_classes = int(n_classes)
        self.frozen_weight = float(frozen_weight)
        self.background_weight = float(background_weight)
        self.fg_weights: list[float] = [1.0] * (self.n_classes - 1)
        self.epoch = -1  # index j of the last update

    def weights(self) -> torch.Tensor:
        return torch.tensor([self.background_weight, *self.fg_weights], dtype=torch.float32)

    def _check(self, scores: torch.Tensor | list[float]) -> list[float]:
        s = torch.as_tensor(scores, dtype=torch.float64).flatten()
        if s.numel() != self.n_classes - 1:
            raise ValueError(f"expected {self.n_classes - 1} foreground scores, got shape {tuple(s.shape)}")
        return [float(v) for v in s]

    def state_dict(self) -> dict[str, Any]:
        return {"fg_weights": list(self.fg_weights), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["fg_weights"]) != self.n_classes - 1:
            raise ValueError("state has a different number of classes")
        self.fg_weights = [float(w) for w in state["fg_weights"]]
        self.epoch = int(state["epoch"])


class TCFWeighter(_Weighter):
    """Threshold Class Freezing (eq. 2): ``w_i = frozen_weight if S_i > threshold else 1``."""

    def __init__(
        self, n_classes: int, threshold: float = 0.9, frozen_weight: float = 0.1, background_weight: float = 1.0
    ) -> None:
        super().__init__(n_classes, frozen_weight, background_weight)
        self.threshold = float(threshold)

    def update(self, scores: torch.Tensor | list[float]) -> None:
        s = self._check(scores)
        self.epoch += 1
        for i, v in enumerate(s):
            if not math.isnan(v):
                self.fg_weights[i] = self.frozen_weight if v > self.threshold else 1.0


def _nanmax(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else -math.inf


class PCFWeighter(_Weighter):
    """Plateau Class Freezing (eq. 3); see the module docstring for the trigger reading.

    Args:
        n_classes: K, background included.
        window: delta >= 1, epochs in the window beyond the current one (the paper gives no value; 5).
        epsilon: tolerance in Dice units (paper: "some small eps"; 0.01 = one Dice point).
        frozen_weight: 0.1 in the paper.
        criterion: "plateau" (default: D <= eps) or "literal" (eq. 3 as printed: D < -eps).
    """

    boost = False

    def __init__(
        self,
        n_classes: int,
        window: int = 5,
        epsilon: float = 0.01,
        frozen_weight: float = 0.1,
        criterion: str = "plateau",
        background_weight: float = 1.0,
    ) -> None:
        super().__init__(n_classes, frozen_weight, background_weight)
        if window < 1 or epsilon < 0:
            raise ValueError(f"need window >= 1 and epsilon >= 0, got {window}, {epsilon}")
        if criterion not in ("plateau", "literal"):
            raise ValueError(f"criterion must be 'plateau' or 'literal', got {criterion!r}")
        self.window = int(window)
        self.epsilon = float(epsilon)
        self.criterion = criterion
        self.history: list[list[float]] = []  # history[t][c]
        self.frozen: list[bool] = [False] * (self.n_classes - 1)
        self.last_trigger = 0  # u
        self.triggers: list[int] = []

    def improvement(self, cls: int, j: int | None = None) -> float | None:
        """``D = max(S[j-delta .. j]) - max(S[u .. j-delta-1])`` for foreground class index ``cls``; None when
        fewer than ``delta + 2`` epochs lie in ``[u, j]``."""
        j = self.epoch if j is None else j
        start = max(j - self.window, self.last_trigger)
        pre = [self.history[t][cls] for t in range(self.last_trigger, start)]
        if not pre:
            return None
        win = [self.history[t][cls] for t in range(start, j + 1)]
        return _nanmax(win) - _nanmax(pre)

    def _triggered(self, d: float | None) -> bool:
        if d is None or math.isnan(d) or math.isinf(d):
            return False
        return d <= self.epsilon if self.criterion == "plateau" else d < -self.epsilon

    def update(self, scores: torch.Tensor | list[float]) -> None:
        s = self._check(scores)
        self.history.append(s)
        self.epoch += 1
        candidates = [c for c in range(len(s)) if not self.frozen[c] and not math.isnan(s[c])]
        if not candidates:
            return
        best = max(candidates, key=lambda c: s[c])  # first index on ties
        if not self._triggered(self.improvement(best)):
            return
        self.last_trigger = self.epoch
        self.triggers.append(self.epoch)
        if not self.boost or self.freeze:
            self.frozen[best] = True
            self.fg_weights[best] = self.frozen_weight
        if self.boost:
            for c in range(len(s)):
                if not self.frozen[c] and not math.isnan(s[c]):
                    self.fg_weights[c] = min(1.0 / (s[c] + self.zeta), self.max_weight)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "history": [list(h) for h in self.history],
            "frozen": list(self.frozen),
            "last_trigger": self.last_trigger,
            "triggers": list(self.triggers),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.history = [[float(v) for v in h] for h in state["history"]]
        self.frozen = [bool(f) for f in state["frozen"]]
        self.last_trigger = int(state["last_trigger"])
        self.triggers = [int(t) for t in state["triggers"]]


class CBSWeighter(PCFWeighter):
    """Class Boost Strategy (eq. 4): PCF's trigger and freeze, then ``w_k = min(1 / (S_k + zeta), max_weight)``
    for every unfrozen class ``k``.

    Args (beyond PCF's): zeta > 0 keeps the ratio defined at S = 0 (paper: "some small zeta"; 1e-3);
    max_weight: the cap, 2 in the paper; freeze: also freeze the triggering class (default True, see module doc).
    """

    boost = True

    def __init__(
        self,
        n_classes: int,
        window: int = 5,
        epsilon: float = 0.01,
        zeta: float = 1e-3,
        max_weight: float = 2.0,
        frozen_weight: float = 0.1,
        freeze: bool = True,
        criterion: str = "plateau",
        background_weight: float = 1.0,
    ) -> None:
        super().__init__(n_classes, window, epsilon, frozen_weight, criterion, background_weight)
        if zeta <= 0:
            raise ValueError(f"zeta must be > 0, got {zeta}")
        self.zeta = float(zeta)
        self.max_weight = float(max_weight)
        self.freeze = bool(freeze)
