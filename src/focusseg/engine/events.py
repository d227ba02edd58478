"""Callbacks dispatched by name (Lightning Fabric's ``call``): an observer implements any of

``on_train_start(trainer)``, ``before_batch(trainer, requests)``, ``after_loss(trainer, step)`` (per-sample
losses in ``step.per_sample_loss``), ``after_batch(trainer, step)``, ``after_validation(trainer, scores)``
(per-class Dice), ``on_epoch_end(trainer, record)``, ``on_train_end(trainer, summary)``.

Observers never change training; strategies that do (samplers, class weighters, LR controllers) have roles
of their own in :mod:`focusseg.roles`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

EVENTS = ("on_train_start", "before_batch", "after_loss", "after_batch", "after_validation", "on_epoch_end",
          "on_train_end")


def call(callbacks: Iterable[Any], event: str, *args: Any, **kwargs: Any) -> None:
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; known: {', '.join(EVENTS)}")
    for cb in callbacks:
        fn = getattr(cb, event, None)
        if fn is not None:
            fn(*args, **kwargs)
