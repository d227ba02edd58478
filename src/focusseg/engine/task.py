"""Tasks own the network(s) and the step.

- ``SupervisedTask``: one network; forward under autocast, the loss with class weights and its batch definition,
  and the detached per-sample losses strategies rank samples by; backward with gradient clipping (and a
  GradScaler for fp16 on CUDA).
- ``CycleTrainingTask``: three networks trained together (paper 004, :mod:`focusseg.strategies.cycle`); each
  learns from the samples its two peers select; it predicts as the mean of the three networks' logits.

A task exposes ``inference_module()``, ``optimizers``, ``step(...) -> StepOutput`` and ``state_dict``. A step whose
loss or gradient norm is not finite does not update the weights (``StepOutput.finite = False``). The supervised
step reads the device once (loss and gradient norm together, :func:`read_step_scalars`). Region plans, fp16 and
the host syncs: ``docs/tasks.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from focusseg.engine.build import (
    build_augmenter,
    build_loss_from_plan,
    build_lr_controller,
    build_optimizer,
    build_weighter,
)
from focusseg.engine.distributed import GlobalSelection, has_unused_parameters
from focusseg.errors import PlanError
from focusseg.nets.from_plan import MeanEnsemble, amp_dtype, build_network_from_plan
from focusseg.nets.layout import thin_channels_last
from focusseg.regions import plan_regions, region_counts
from focusseg.roles import PatchRequest, StepOutput
from focusseg.settings import training_settings
from focusseg.strategies.cycle import CycleTask
from focusseg.strategies.cycle import class_counts as counts


def as_float(out: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor | list[torch.Tensor]:
    """Network output(s) in float32 for the loss (autocast may give bf16/fp16; deep supervision gives a list)."""
    return [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()


def class_counts(logits: torch.Tensor, labels: torch.Tensor, k: int, ignore_label: int | None = None
                 ) -> tuple[torch.Tensor, ...]:
    """Per-class TP, FP, FN voxel counts of the argmax prediction over a batch, on the logits' device without a
    host sync (:func:`focusseg.strategies.cycle.class_counts`: only channel 0 of a (labels, instances) target);
    voxels of the ``ignore_label`` are not counted."""
    return counts(logits, labels, k, ignore_label)


def read_step_scalars(*values: torch.Tensor) -> list[float]:
    """The step's one host sync: the given 0-dim tensors (loss, gradient norm) stacked in float32 and copied to
    the host together."""
    return torch.stack([v.detach().float().reshape(()) for v in values]).tolist()


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict[str, Any] | None) -> str | None:
    """Load a GradScaler state saved on another device or precision; returns what changed (for an event line).

    - enabled scaler, state present: loaded (same device and precision, the usual case);
    - enabled scaler, state absent or empty (a CPU / bf16 / fp32 checkpoint resumed with fp16 on CUDA): a fresh
      scaler (torch's initial scale 2**16; it adapts within a few steps) -> ``"fresh"``;
    - disabled scaler, state present (a CUDA fp16 checkpoint resumed on CPU or in bf16): ignored -> ``"ignored"``;
    - disabled scaler, no state: nothing to do."""
    has_state = bool(state)
    if scaler.is_enabled():
        if has_state:
            scaler.load_state_dict(state)
            return None
        return "fresh"
    return "ignored" if has_state else None


def training_forward(network: nn.Module, compile_spec: Any = None, channels_last: bool | str = False):
    """The callable the supervised task trains through (``training.compile``, ``training.channels_last``):

    * ``channels_last`` (3D networks): true -> parameters in ``torch.channels_last_3d`` memory format (inputs are
      converted in the step), which lets cuDNN pick NDHWC kernels on recent GPUs; ``"thin"`` -> only the
      convolutions with few output channels run channels-last (:func:`~focusseg.nets.layout.thin_channels_last`:
      oneDNN's channels-first kernels are slow for them on CPUs);
    * ``compile_spec``: false / None (default) -> the network itself; true -> ``torch.compile(network)``;
      a dict -> ``torch.compile(network, **spec)`` (e.g. ``{"mode": "max-autotune", "backend": "inductor"}``).
      The compiled module shares the network's parameters: checkpoints, validation and inference use the
      plain network (no ``_orig_mod.`` keys), and the compilation cost is paid once per training process.
    """
    if channels_last == "thin":
        thin_channels_last(network)
    elif channels_last:
        network.to(memory_format=torch.channels_last_3d)
    if compile_spec in (None, False):
        return network
    if compile_spec is True:
        kwargs: dict[str, Any] = {}
    elif isinstance(compile_spec, dict):
        kwargs = dict(compile_spec)
        unknown = set(kwargs) - {"mode", "backend", "fullgraph", "dynamic", "options"}
        if unknown:
            raise PlanError(f"training.compile: unknown option(s) {', '.join(sorted(unknown))} "
                            "(known: mode, backend, fullgraph, dynamic, options)")
    else:
        raise PlanError(f"training.compile {compile_spec!r} must be true, false or an object of torch.compile "
                        "options")
    return torch.compile(network, **kwargs)


class SupervisedTask:
    def __init__(self, network: nn.Module, optimizer: torch.optim.Optimizer, loss: nn.Module, n_classes: int,
                 amp: torch.dtype | None, grad_clip: float = 12.0, per_sample_loss: nn.Module | None = None,
                 channels_last: bool | str = False, compile_spec: Any = None, ignore_label: int | None = None,
                 regions: list[list[int]] | None = None) -> None:
        self.network, self.optimizer, self.loss = network, optimizer, loss
        self.regions = regions  # region plan: per-region step counts (module docstring)
        self.ignore_label = ignore_label  # left out of the step's class counts (the losses mask it themselves)
        self.channels_last = channels_last if channels_last == "thin" else bool(channels_last)
        self._compile_spec = compile_spec
        self.loss_scale = 1.0  # several processes with an uneven batch split (engine.distributed.World.loss_scale)
        self.forward = training_forward(network, compile_spec, self.channels_last)
        self.per_sample_loss = per_sample_loss
        self.optimizers = [optimizer]
        self.k, self.amp, self.grad_clip = n_classes, amp, grad_clip
        device_type = next(network.parameters()).device.type
        self.device_type = device_type
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16 and device_type == "cuda")

    def train(self) -> None:
        self.network.train()

    def distribute(self, world: Any, global_batch: int, find_unused_parameters: bool = False,
                   probe_shape: tuple[int, ...] | None = None) -> None:
        """Train through DistributedDataParallel on ``world`` (gradients averaged over its ranks, this rank's loss
        scaled so the average is the global batch's mean); the network itself (its state dict, inference) is
        unchanged. ``probe_shape``: an input shape to find parameters that get no gradient
        (:func:`~focusseg.engine.distributed.has_unused_parameters`)."""
        self.loss_scale = world.loss_scale(global_batch)
        unused = find_unused_parameters or (probe_shape is not None and has_unused_parameters(self.network,
                                                                                              probe_shape))
        self.forward = training_forward(world.wrap(self.network, unused), self._compile_spec, self.channels_last)

    def inference_module(self) -> nn.Module:
        return self.network

    def step(self, images: torch.Tensor, labels: torch.Tensor, requests: list[PatchRequest],
             class_weights: torch.Tensor | None, callbacks_after_loss=None) -> StepOutput:
        """Forward, loss, backward, clip, one host read (loss and gradient norm), then step or skip."""
        if self.channels_last is True:
            images = images.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(self.device_type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            out = self.forward(images)
        outputs = as_float(out)
        loss = self.loss(outputs, labels, class_weights=class_weights)
        with torch.no_grad():
            if self.per_sample_loss is not None:
                detached = [o.detach() for o in outputs] if isinstance(outputs, list) else outputs.detach()
                per_sample = self.per_sample_loss(detached, labels, class_weights=class_weights)
            else:
                per_sample = loss.detach().expand(labels.shape[0])
            main = outputs[0] if isinstance(outputs, list) else outputs
            if self.regions:
                tp, fp, fn = region_counts(main.detach(), labels, self.regions).unbind(0)
            else:
                tp, fp, fn = class_counts(main.detach(), labels, self.k, self.ignore_label)
        self.optimizer.zero_grad(set_to_none=True)
        scaled = loss if self.loss_scale == 1.0 else loss * self.loss_scale
        self.scaler.scale(scaled).backward()  # a NaN loss too: its NaN gradients are dropped below
        self.scaler.unscale_(self.optimizer)  # no-op without a scaler
        norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
        loss_value, norm_value = read_step_scalars(loss, norm)  # the step's one host sync
        step = StepOutput(requests, loss_value, per_sample.detach(), tp, fp, fn)
        step.finite = math.isfinite(loss_value)
        if callbacks_after_loss is not None:
            callbacks_after_loss(step)
        if step.finite and math.isfinite(norm_value):
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            if not self.scaler.is_enabled():  # fp16 overflow (finite loss, inf gradient): the scaler's business
                step.finite = False
        if self.scaler.is_enabled():
            self.scaler.update()  # on the device: lowers the scale after inf gradients, else may grow it
        return step

    def set_epoch(self, epoch: int) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """Load a task state saved on any device (tensors may be on the CPU): the network copies into its
        parameters, the optimiser casts its state to each parameter's device and dtype (torch's
        ``Optimizer.load_state_dict``), the GradScaler state is loaded, started fresh or ignored
        (:func:`load_scaler_state`). Returns event notes for the log (empty when nothing switched)."""
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        switch = load_scaler_state(self.scaler, state.get("scaler"))
        return [{"part": "grad_scaler", "action": switch}] if switch else []


class FiniteStepOptimizer:
    """An optimiser whose ``step`` first clips its parameters' gradient norm and skips the update (dropping the
    gradients, ``skipped = True``) when that norm is NaN/inf. Everything else is the wrapped optimiser's."""

    def __init__(self, optimizer: torch.optim.Optimizer, params, grad_clip: float | None) -> None:
        self.optimizer = optimizer
        self.params = list(params)
        self.grad_clip = float("inf") if grad_clip is None else float(grad_clip)
        self.skipped = False

    def step(self, closure=None):
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        if bool(torch.isfinite(norm)):
            return self.optimizer.step(closure)
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped = True
        return None

    def __getattr__(self, name: str) -> Any:
        if name == "optimizer":  # not yet set (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.optimizer, name)


class CycleTrainingTask:
    """Three networks, co-taught by committee selection (``keep``, ``criterion``, ``ramp_epochs`` as in
    :class:`focusseg.strategies.cycle.CycleTask`). Runs in fp32 or bf16 autocast (no fp16 scaler)."""

    def __init__(self, networks: list[nn.Module], optimizers: list[torch.optim.Optimizer], loss: nn.Module,
                 n_classes: int, amp: torch.dtype | None, grad_clip: float = 12.0, ignore_label: int | None = None,
                 **cycle: Any) -> None:
        self.networks, self.optimizers, self.k = networks, optimizers, n_classes
        self.ignore_label = ignore_label
        self.amp = amp if amp != torch.float16 else torch.bfloat16
        self.device_type = next(networks[0].parameters()).device.type
        self.ensemble = MeanEnsemble(networks)
        self._guards = [FiniteStepOptimizer(o, n.parameters(), grad_clip) for o, n in zip(optimizers, networks)]
        # clipping moves into the guards (same order: clip, then step, per network)
        self._cycle = CycleTask(networks, self._guards, self._loss_fn(loss), grad_clip=None,
                                ignore_label=ignore_label, **cycle)

    @staticmethod
    def _loss_fn(loss: nn.Module):
        return lambda out, labels, **kw: loss(as_float(out), labels, **kw)

    def train(self) -> None:
        for n in self.networks:
            n.train()

    def distribute(self, world: Any, global_batch: int, find_unused_parameters: bool = False,
                   probe_shape: tuple[int, ...] | None = None) -> None:
        """Each network through DistributedDataParallel (``find_unused_parameters`` when a probe pass of
        ``probe_shape`` leaves a parameter without gradient); the committee selects on the global batch
        (:class:`~focusseg.engine.distributed.GlobalSelection`; its normalisation by the global count is exact
        for any split of the batch)."""
        self._cycle.forwards = [world.wrap(n, find_unused_parameters or (
            probe_shape is not None and has_unused_parameters(n, probe_shape))) for n in self.networks]
        self._cycle.selection = GlobalSelection(world, global_batch)

    def inference_module(self) -> nn.Module:
        return self.ensemble

    def step(self, images: torch.Tensor, labels: torch.Tensor, requests: list[PatchRequest],
             class_weights: torch.Tensor | None, callbacks_after_loss=None) -> StepOutput:
        for g in self._guards:
            g.skipped = False
        with torch.autocast(self.device_type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            step = self._cycle.step(images, labels, requests, class_weights)
        step.finite = math.isfinite(step.loss) and not any(g.skipped for g in self._guards)
        if step.per_class_tp is None:  # counts come from the step's own forward pass (no second forward)
            with torch.no_grad():
                logits = self.ensemble(images)
            step.per_class_tp, step.per_class_fp, step.per_class_fn = class_counts(logits.float(), labels, self.k,
                                                                                   self.ignore_label)
        if callbacks_after_loss is not None:
            callbacks_after_loss(step)
        return step

    def set_epoch(self, epoch: int) -> None:
        self._cycle.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self._cycle.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """As :meth:`SupervisedTask.load_state_dict` (no scaler: cycle training runs fp32 or bf16)."""
        self._cycle.load_state_dict(state)
        return []


def build_task(plan: dict, device: torch.device, total_iterations: int, amp: torch.dtype | None):
    """The task and the optimisers' LR controller named by the plan (``training.task``: supervised | cycle)."""
    tr = training_settings(plan)
    name, kwargs = tr.task_name, ({} if tr.task is None else tr.task.split()[1])
    per_sample = build_loss_from_plan(plan, reduction="none")
    k, clip = int(plan["n_classes"]), float("inf") if tr.grad_clip is None else tr.grad_clip  # None: no clipping
    ignore = plan.get("ignore_label")  # no class: the loss masks it, the step's class counts leave it out
    if name == "supervised":
        net = build_network_from_plan(plan).to(device)
        opt = build_optimizer(plan, net, total_iterations)
        channels_last = tr.channels_last if len(plan["patch_size"]) == 3 else False
        task = SupervisedTask(net, opt, build_loss_from_plan(plan), k, amp, clip, per_sample_loss=per_sample,
                              channels_last=channels_last, compile_spec=tr.compile_spec(), ignore_label=ignore,
                              regions=plan_regions(plan))
        return task, build_lr_controller(plan, opt, total_iterations)
    if name == "cycle":
        if plan_regions(plan):
            raise PlanError("the cycle task selects samples by softmax class counts; region-based training uses "
                            "the supervised task (set training.task=supervised)")
        if tr.compile or tr.channels_last is True:
            raise PlanError("training.compile and training.channels_last apply to the supervised task; the cycle "
                            "task trains three networks through its own step (set them to false)")
        nets = [build_network_from_plan(plan).to(device) for _ in range(3)]
        if tr.channels_last == "thin" and len(plan["patch_size"]) == 3:  # per layer: works in any step
            for n in nets:
                thin_channels_last(n)
        opts = [build_optimizer(plan, n, total_iterations) for n in nets]
        lrs = [build_lr_controller(plan, o, total_iterations) for o in opts]
        return CycleTrainingTask(nets, opts, per_sample, k, amp, clip, ignore_label=ignore, **kwargs), LRGroup(lrs)
    raise KeyError(f"unknown training task {name!r}; known: supervised, cycle")


class LRGroup:
    """One LR controller per optimiser, stepped together (cycle training's three optimisers)."""

    def __init__(self, controllers: list[Any]) -> None:
        self.controllers = controllers

    @property
    def max_iterations(self) -> int:
        return getattr(self.controllers[0], "max_iterations", 0)

    @max_iterations.setter
    def max_iterations(self, value: int) -> None:
        for c in self.controllers:
            if hasattr(c, "max_iterations"):
                c.max_iterations = value

    def step(self, iteration: int, metric: float | None = None) -> float:
        return [c.step(iteration, metric) for c in self.controllers][0]

    def state_dict(self) -> dict[str, Any]:
        return {"controllers": [c.state_dict() for c in self.controllers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for c, s in zip(self.controllers, state["controllers"]):
            c.load_state_dict(s)


@dataclass
class Parts:
    """What the loop trains with: the task, the LR controller, the augmenter and the class weighter (or None)."""

    task: SupervisedTask | CycleTrainingTask
    lr: Any
    augmenter: Any
    weighter: Any | None


def build_parts(plan: dict, total_iterations: int, device: torch.device) -> Parts:
    task, lr = build_task(plan, device, total_iterations, amp_dtype(plan, device))
    return Parts(task=task, lr=lr, augmenter=build_augmenter(plan), weighter=build_weighter(plan))
