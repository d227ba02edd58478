"""Callbacks, called by event name at fixed points of the training loop (Lightning Fabric's ``call``).

A callback implements any of ``on_train_start(trainer)``, ``before_batch(trainer, requests)``, ``after_loss(trainer,
step)`` (per-sample losses in ``step.per_sample_loss``), ``after_batch(trainer, step)``, ``after_validation(trainer,
scores)`` (per-class Dice), ``on_epoch_end(trainer, record)``, ``on_train_end(trainer, summary)``. Two kinds:

- an **observer** (the default) reads the trainer and writes outputs of its own; it changes nothing training uses
  (the task and its parameters, the parts, the sampler, the counters) and writes ``log.jsonl`` only through
  ``trainer.log``, the loop's one writer;
- a callback that **changes training** declares ``changes_training = True`` (fine-tuning's load, freeze and warm-up:
  :mod:`focusseg.engine.finetune.training`). It acts in :data:`TRAINING_HOOKS` only, and what it does must follow
  from the plan and the trainer's counters, as callbacks are not checkpointed. Strategies with state of their own
  (samplers, class weighters, LR controllers) are roles instead (:mod:`focusseg.roles`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

EVENTS = ("on_train_start", "before_batch", "after_loss", "after_batch", "after_validation", "on_epoch_end",
          "on_train_end")
#: The events at which a callback with ``changes_training = True`` may change training: ``on_train_start`` runs
#: after the parts are built and a resumed state is loaded, before the loop copies rank 0's weights to the other
#: ranks; ``before_batch`` runs before each step's forward pass.
TRAINING_HOOKS = ("on_train_start", "before_batch")


def changes_training(callback: Any) -> bool:
    """Whether ``callback`` (an instance or a class) declares that it changes training (``changes_training = True``);
    False for an observer."""
    return getattr(callback, "changes_training", False) is True


def call(callbacks: Iterable[Any], event: str, *args: Any, **kwargs: Any) -> None:
    """Call ``event`` on every callback that implements it, in order.

    Args:
        callbacks: the run's callbacks (observers and training-changing ones).
        event: one of :data:`EVENTS`.
        args: the event's arguments (the trainer first).
        kwargs: keyword arguments passed on.

    Raises:
        ValueError: ``event`` is not one of :data:`EVENTS`.
    """
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; known: {', '.join(EVENTS)}")
    for cb in callbacks:
        fn = getattr(cb, event, None)
        if fn is not None:
            fn(*args, **kwargs)
