"""Weighted sums of losses: ``L = sum_i w_i L_i`` (FP-PET, paper 000 sec. 3.5: CE + soft Dice + Tversky;
FLARE21, paper 002 eq. 1: Dice + TopK CE; VALDO, paper 001: Dice + BCE).

Specs::

    {"ce": 1, "soft_dice": 1, "tversky": 1}                           # name -> weight, default options
    {"ce": 1, "tversky": {"weight": 0.5, "alpha": 0.3, "beta": 0.7}}  # name -> weight + options
    {"name": "compound", "parts": [{"name": "ce", "weight": 1}, {"name": "topk_ce", "k": 10, "weight": 1}]}

Every part is built by name from the loss registry; options given to the compound itself (``reduction``,
``ignore_label``) reach every part, so a per-sample compound is the weighted sum of per-sample parts and every part
masks the ignored voxels. Class weights reach every part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from focusseg.losses._build import LOSSES, build_loss
from focusseg.losses._common import REDUCTIONS, check_option


class CompoundLoss(nn.Module):
    """``sum_i w_i L_i(logits, target, class_weights)``.

    Args:
        losses: the built parts.
        weights: one float per part.
        reduction: ``"mean"`` | ``"none"``; must be every part's reduction.
    """

    def __init__(self, losses: Sequence[nn.Module], weights: Sequence[float], reduction: str = "mean") -> None:
        super().__init__()
        if len(losses) == 0 or len(losses) != len(weights):
            raise ValueError(f"need one weight per part and at least one part, got {len(losses)}/{len(weights)}")
        self.reduction = check_option("reduction", reduction, REDUCTIONS)
        for part in losses:
            if getattr(part, "reduction", reduction) != reduction:
                raise ValueError(f"part {type(part).__name__} has reduction {part.reduction!r}, not {reduction!r}")
        self.parts = nn.ModuleList(losses)
        self.weights = [float(w) for w in weights]

    def forward(self, logits: Tensor, target: Tensor, class_weights: Tensor | None = None) -> Tensor:
        total = None
        for weight, part in zip(self.weights, self.parts):
            term = weight * part(logits, target, class_weights)
            total = term if total is None else total + term
        return total


def parse_parts(parts: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[tuple[float, dict[str, Any]]]:
    """Both spec forms -> ``[(weight, {"name": ..., **options})]``."""
    out = []
    if isinstance(parts, Mapping):
        for name, value in parts.items():
            opts = dict(value) if isinstance(value, Mapping) else {"weight": value}
            if "name" in opts:
                raise ValueError(f"part {name!r}: the name is the key, do not repeat it")
            out.append((float(opts.pop("weight", 1.0)), {"name": name, **opts}))
        return out
    for spec in parts:
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ValueError(f"a compound part is a mapping with a 'name', got {spec!r}")
        opts = dict(spec)
        out.append((float(opts.pop("weight", 1.0)), opts))
    return out


@LOSSES.register("compound")
def compound(
    parts: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None, reduction: str = "mean", **common: Any
) -> CompoundLoss:
    """Build a :class:`CompoundLoss`; ``reduction`` and ``common`` options go to every part.

    Default parts (``"compound"`` by name alone): ``{"ce": 1, "dice": 1}``.
    """
    parsed = parse_parts(parts if parts is not None else {"ce": 1.0, "dice": 1.0})
    if not parsed:
        raise ValueError("a compound loss needs at least one part")
    losses = [build_loss(spec, reduction=reduction, **common) for _, spec in parsed]
    return CompoundLoss(losses, [w for w, _ in parsed], reduction=reduction)
