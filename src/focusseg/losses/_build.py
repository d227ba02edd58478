"""The loss registry and ``build_loss``: recipes name losses, the registry builds them.

Specs (docs/CONTRACTS.md): a name (``"dice"``), a mapping with a name (``{"name": "topk_ce", "k": 10}``), or a
compound mapping without a name, ``{"ce": 1, "soft_dice": 1, "tversky": 1}`` (part name -> weight, or part
name -> ``{"weight": w, **options}``). A ``torch.nn.Module`` is passed through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from focusseg.registry import Registry

LOSSES: Registry[nn.Module] = Registry("loss")


def build_loss(spec: str | Mapping[str, Any] | nn.Module, **overrides: Any) -> nn.Module:
    """Build a loss from a spec.

    Args:
        spec: a registered name (``"dice"``), ``{"name": ..., **options}``, a compound mapping of names to weights
            (``{"ce": 1, "soft_dice": 1}``, no ``"name"`` key), or an already built module (returned as is).
        overrides: options that win over the spec's (e.g. ``reduction="none"``); for a compound spec they reach
            every part.

    Returns:
        The loss module, called as ``loss(logits, target, class_weights=None)``.

    Raises:
        ValueError: for options given with an already built module, or a malformed spec.
        KeyError: for an unknown loss name.
    """
    if isinstance(spec, nn.Module):
        if overrides:
            raise ValueError(f"cannot apply options {sorted(overrides)} to an already built loss {spec!r}")
        return spec
    if isinstance(spec, Mapping) and "name" not in spec:
        return LOSSES.build({"name": "compound", "parts": dict(spec)}, **overrides)
    return LOSSES.build(spec, **overrides)


def loss_names() -> list[str]:
    """Names of every registered loss."""
    return LOSSES.names()
