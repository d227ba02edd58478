"""Deep supervision: one loss over the list of outputs ``[full, 1/2, 1/4, ...]`` (highest resolution first).

    L = sum_i w_i L(logits_i, down_i(target))

* ``weights="nnunet"``: ``w_i = 2^-i``, the lowest resolution set to 0, normalised to sum 1
  (5 outputs -> 0.5333, 0.2667, 0.1333, 0.0667, 0).
* ``weights=[0.7, 0.2, 0.1]``: FLARE21 (paper 002 sec. 2, beta_1..beta_3); a list is used as given (not
  normalised); outputs past its end get weight 0, and zero-weight outputs are not computed.
* ``down_i`` resizes the label map with ``mode`` (default ``"nearest-exact"``, as nnU-Net v2), so an ignore label
  keeps its value at every resolution. The weights live here only; class weights and reduction pass through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusseg.losses._build import LOSSES, build_loss

DS_MODES = ("nearest-exact", "nearest")


def nnunet_weights(n_outputs: int) -> list[float]:
    """``2^-i`` for i < n, the last set to 0 (when n > 1), normalised to sum 1."""
    if n_outputs < 1:
        raise ValueError(f"n_outputs must be >= 1, got {n_outputs}")
    w = [0.5**i for i in range(n_outputs)]
    if n_outputs > 1:
        w[-1] = 0.0
    total = sum(w)
    return [v / total for v in w]


def downsample_target(target: Tensor, size: Sequence[int], mode: str = "nearest-exact") -> Tensor:
    """Label map ``(B, C, *spatial)`` or ``(B, *spatial)`` resized to ``size`` -> ``(B, C, *size)``, in the
    target's dtype (uint8 labels stay uint8; every channel, e.g. a blob loss's instance map, resized alike)."""
    if target.ndim == len(size) + 1:
        target = target[:, None]
    if tuple(target.shape[2:]) == tuple(size):
        return target
    return F.interpolate(target.float(), size=tuple(size), mode=mode).to(target.dtype)


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of a loss over deep-supervision outputs.

    Args:
        loss: the inner loss (module or spec).
        weights: ``"nnunet"`` or a list of non-negative floats, highest resolution first.
        n_outputs: number of outputs expected (checked when given); with ``"nnunet"`` None means "as many as
            the network returns".
        mode: ``"nearest-exact"`` or ``"nearest"`` target resizing.
    """

    def __init__(
        self,
        loss: nn.Module | str | Mapping[str, Any],
        weights: str | Sequence[float] = "nnunet",
        n_outputs: int | None = None,
        mode: str = "nearest-exact",
    ) -> None:
        super().__init__()
        self.loss = build_loss(loss)
        if mode not in DS_MODES:
            raise ValueError(f"mode must be one of {DS_MODES}, got {mode!r}")
        self.mode = mode
        self.n_outputs = n_outputs
        if isinstance(weights, str):
            if weights != "nnunet":
                raise ValueError(f"weights must be 'nnunet' or a list of floats, got {weights!r}")
            self.weights: list[float] | None = nnunet_weights(n_outputs) if n_outputs else None
        else:
            w = [float(v) for v in weights]
            if not w or min(w) < 0 or sum(w) <= 0:
                raise ValueError(f"weights must be non-negative with a positive sum, got {w}")
            if n_outputs is not None and len(w) > n_outputs:
                raise ValueError(f"{len(w)} weights for {n_outputs} outputs")
            self.weights = w
        self.reduction = getattr(self.loss, "reduction", "mean")

    def weights_for(self, n: int) -> list[float]:
        """The weight of each of ``n`` outputs."""
        if self.n_outputs is not None and n != self.n_outputs:
            raise ValueError(f"expected {self.n_outputs} outputs, got {n}")
        w = self.weights if self.weights is not None else nnunet_weights(n)
        if len(w) > n:
            raise ValueError(f"{len(w)} deep-supervision weights for {n} outputs")
        return list(w) + [0.0] * (n - len(w))

    def forward(
        self, outputs: Tensor | Sequence[Tensor], target: Tensor, class_weights: Tensor | None = None
    ) -> Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target, class_weights)
        total = None
        for w, out in zip(self.weights_for(len(outputs)), outputs):
            if w == 0:
                continue
            term = w * self.loss(out, downsample_target(target, out.shape[2:], self.mode), class_weights)
            total = term if total is None else total + term
        return total


@LOSSES.register("deep_supervision")
def deep_supervision(
    loss: str | Mapping[str, Any] | None = None,
    weights: str | Sequence[float] = "nnunet",
    n_outputs: int | None = None,
    mode: str = "nearest-exact",
    **inner_options: Any,
) -> DeepSupervisionLoss:
    """Registry builder; ``inner_options`` (e.g. ``reduction``) go to the inner loss.

    The inner loss defaults to ``{"ce": 1, "dice": 1}``.
    """
    inner = build_loss(loss if loss is not None else {"ce": 1.0, "dice": 1.0}, **inner_options)
    return DeepSupervisionLoss(inner, weights=weights, n_outputs=n_outputs, mode=mode)
