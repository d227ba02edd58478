"""Fine-tuning at training time: load the source, freeze the encoder for a while, warm the learning rate up.

These are callbacks that change training (``changes_training = True``; the contract is in
:mod:`focusseg.engine.events`): they act in ``on_train_start`` and ``before_batch`` only, keep no state of their own
that a checkpoint would need (freezing follows ``trainer.epoch``, warm-up ``trainer.iteration``; the source is loaded
on fresh runs only), and write their event lines through the loop's ``trainer.log``. :func:`callbacks_for` builds
them from the plan's ``training.init_from`` entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from focusseg.engine.finetune.encoder import encoder_parameter_names, no_encoder_error, planned_encoder_names
from focusseg.engine.finetune.source import (
    LoadReport,
    Source,
    load_matching,
    member_weights,
    no_match_error,
    print_report,
    read_source,
)
from focusseg.settings import training_settings


def task_networks(task: Any) -> list[nn.Module]:
    """The trained network(s) of a task: ``SupervisedTask.network``, or ``CycleTrainingTask.networks``."""
    if hasattr(task, "networks"):
        return list(task.networks)
    return [task.network]


class InitFrom:
    """Load the source into every network of the task at ``on_train_start`` (fresh runs only).

    Runs after the parts are built and before the first step, on every rank; the loop then copies rank 0's
    weights to the others. Network ``i`` takes :func:`~focusseg.engine.finetune.source.member_weights` ``i``.
    The table of loaded tensors is printed and written as one ``init_from`` event line (with the source's
    sha256, the fine-tuning settings and :meth:`LoadReport.as_dict` of the first network).

    Args:
        source: the source read by :func:`~focusseg.engine.finetune.plan.prepare`; its CPU copy is released
            once loaded.
        entry: the plan's ``training.init_from`` entry (for the settings in the event line).

    Raises:
        CheckpointError: no tensor of the source matches any network (at ``on_train_start``).
    """

    changes_training: ClassVar[bool] = True

    def __init__(self, source: Source, entry: Mapping[str, Any] | None = None) -> None:
        self.source: Source | None = source
        self.entry = entry or {}
        self.reports: list[LoadReport] = []

    def on_train_start(self, trainer: Any) -> None:
        source = self.source
        assert source is not None
        nets = task_networks(trainer.parts.task)
        self.reports = [load_matching(net, member_weights(source.weights, i), str(source.path))
                        for i, net in enumerate(nets)]
        if not any(r.loaded for r in self.reports):
            raise no_match_error(source, len(source.weights))
        print_report(self.reports[0])
        extra = {"networks": len(nets)} if len(nets) > 1 else {}
        trainer.log.event("init_from", sha256=source.sha256,
                          freeze_encoder_epochs=self.entry.get("freeze_encoder_epochs", 0),
                          warmup_epochs=self.entry.get("warmup_epochs", 0), **extra, **self.reports[0].as_dict())
        self.source = None


class FreezeEncoder:
    """Keep the encoder's parameters from training while ``trainer.epoch < epochs``.

    The encoder is found by :func:`~focusseg.engine.finetune.encoder.planned_encoder_names` (or, for a network
    that cannot run on the meta device, by probing the real network on its device). Frozen parameters get
    ``requires_grad = False`` and ``grad = None`` before every step of those epochs, so the optimiser skips them
    entirely (no step, no momentum, no weight decay: they stay bit-identical); from epoch ``epochs`` on they
    train again. Checked before every batch, so a resumed run freezes exactly as long as an uninterrupted one.
    ``freeze_encoder`` / ``unfreeze_encoder`` event lines go to ``trainer.log``.

    Args:
        epochs: how many epochs the encoder stays frozen (0: never).
        plan: the plan whose network is probed (default: ``trainer.plan``).
        keep_trainable: encoder tensors that train from the start: those ``--init-from`` re-initialised (the first
            convolution with another channel count), which frozen would stay random.

    Raises:
        PlanError: the network has no encoder left to freeze (at ``on_train_start``).
    """

    changes_training: ClassVar[bool] = True

    def __init__(self, epochs: int, plan: dict | None = None, keep_trainable: Iterable[str] = ()) -> None:
        self.epochs = int(epochs)
        self.plan = plan
        self.keep_trainable = set(keep_trainable)
        self.names: list[str] = []
        self.params: list[torch.nn.Parameter] = []
        self.frozen = False

    def on_train_start(self, trainer: Any) -> None:
        if self.epochs <= 0 or trainer.epoch >= self.epochs:
            return
        plan = self.plan if self.plan is not None else trainer.plan
        nets = task_networks(trainer.parts.task)
        try:
            self.names = planned_encoder_names(plan)
        except Exception:  # noqa: BLE001  (no meta support: probe the real network on its device)
            p = next(nets[0].parameters())
            x = torch.zeros(1, len(plan["channel_names"]), *[int(s) for s in plan["patch_size"]], device=p.device,
                            dtype=p.dtype)
            self.names = encoder_parameter_names(nets[0], x)
        self.names = [n for n in self.names if n not in self.keep_trainable]
        wanted = set(self.names)
        self.params = [p for net in nets for n, p in net.named_parameters() if n in wanted]
        if not self.params:
            raise no_encoder_error(plan)
        self._sync(trainer)

    def before_batch(self, trainer: Any, requests: Any) -> None:
        if self.params:
            self._sync(trainer)

    def _sync(self, trainer: Any) -> None:
        """Freeze or unfreeze to match ``trainer.epoch`` (logging the change)."""
        want = trainer.epoch < self.epochs
        if want and not self.frozen:
            for p in self.params:
                p.requires_grad_(False)
                p.grad = None
            self.frozen = True
            trainer.log.event("freeze_encoder", at_epoch=trainer.epoch, until_epoch=self.epochs,
                              tensors=len(self.names), values=sum(p.numel() for p in self.params))
        elif not want and self.frozen:
            for p in self.params:
                p.requires_grad_(True)
            self.frozen = False
            trainer.log.event("unfreeze_encoder", at_epoch=trainer.epoch)


class WarmupLR:
    """An LR controller (:class:`focusseg.roles.LRController`) wrapped with a linear warm-up.

    ``step(it)`` lets the wrapped controller set the scheduled rate, then multiplies every parameter group's
    rate by ``(it + 1) / W`` while ``it < W``: the rate rises linearly from ``scheduled / W`` to the scheduled
    value, around whatever controller the plan names (poly, cosine, metric-driven). ``state_dict`` is the wrapped
    controller's (the unscaled schedule), so checkpoints are the same with and without warm-up. A controller that
    does not rewrite the rate on a call (poly and cosine on the validation call) is not scaled twice: a group
    whose rate is still the one written here is scaled from the unscaled value remembered with it. Any other
    attribute (``max_iterations``, ...) is read from and written to the wrapped controller.

    Args:
        controller: the plan's LR controller.
        optimizers: the optimisers whose parameter groups it sets.
        warmup_iterations: ``W``; 0 or less: no warm-up.
    """

    _own = ("controller", "optimizers", "warmup_iterations", "_written")

    def __init__(self, controller: Any, optimizers: list[torch.optim.Optimizer], warmup_iterations: int) -> None:
        object.__setattr__(self, "controller", controller)
        object.__setattr__(self, "optimizers", list(optimizers))
        object.__setattr__(self, "warmup_iterations", int(warmup_iterations))
        object.__setattr__(self, "_written", {})

    def factor(self, iteration: int) -> float:
        """The warm-up factor at ``iteration``: ``(iteration + 1) / W`` before ``W``, 1 from then on."""
        w = self.warmup_iterations
        return 1.0 if w <= 0 or iteration >= w else (max(int(iteration), 0) + 1) / w

    def step(self, iteration: int, metric: float | None = None) -> float:
        """Step the wrapped controller, then scale the rates by :meth:`factor`; returns the scaled rate."""
        lr = self.controller.step(iteration, metric)
        f = self.factor(iteration)
        for opt in self.optimizers:
            for group in opt.param_groups:
                cur = float(group["lr"])
                prev = self._written.get(id(group))
                base = prev[1] if prev is not None and cur == prev[0] else cur
                group["lr"] = base * f
                self._written[id(group)] = (group["lr"], base)
        return lr * f if isinstance(lr, (int, float)) else lr

    def state_dict(self) -> dict[str, Any]:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state)

    def __getattr__(self, name: str) -> Any:
        if name in WarmupLR._own:  # not set yet (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.controller, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in WarmupLR._own:
            object.__setattr__(self, name, value)
        else:
            setattr(self.controller, name, value)


class LRWarmup:
    """Wrap the run's LR controller (``trainer.parts.lr``) in :class:`WarmupLR` at ``on_train_start``, over
    ``epochs * training.iterations_per_epoch`` iterations (a resumed run continues at its iteration).

    Args:
        epochs: the warm-up's length in epochs (0: none).
    """

    changes_training: ClassVar[bool] = True

    def __init__(self, epochs: int) -> None:
        self.epochs = int(epochs)

    def on_train_start(self, trainer: Any) -> None:
        if self.epochs <= 0 or isinstance(trainer.parts.lr, WarmupLR):
            return
        ipe = training_settings(trainer.plan).need("iterations_per_epoch")
        trainer.parts.lr = WarmupLR(trainer.parts.lr, trainer.parts.task.optimizers, self.epochs * ipe)


def callbacks_for(plan: dict, resume: bool, source: Source | None = None) -> list[Any]:
    """The training-changing callbacks the plan's ``training.init_from`` entry asks for.

    Args:
        plan: the run's plan.
        resume: whether the run is resumed (the source is then not loaded again: the checkpoint holds the weights).
        source: the source :func:`~focusseg.engine.finetune.plan.prepare` read; read from the entry when None.

    Returns:
        :class:`InitFrom` (fresh runs), :class:`FreezeEncoder` and :class:`LRWarmup` (when their epochs are
        set); empty for a run from scratch.
    """
    entry = training_settings(plan).init_from
    if entry is None:
        return []
    out: list[Any] = []
    if not resume:
        if source is None:
            source = read_source(entry["source"])
        out.append(InitFrom(source, entry))
    if entry.get("freeze_encoder_epochs", 0):
        out.append(FreezeEncoder(entry["freeze_encoder_epochs"], plan, entry.get("reinitialised", ())))
    if entry.get("warmup_epochs", 0):
        out.append(LRWarmup(entry["warmup_epochs"]))
    return out
