"""Shared helpers for the strategy tests."""

from __future__ import annotations

import io
from typing import Any

import torch


def through_torch_save(state: Any) -> Any:
    """What a checkpoint gives back: ``torch.save`` then ``torch.load(weights_only=True)``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)
