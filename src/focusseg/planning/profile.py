"""Cost of a network: parameters, forward FLOPs, memory saved for backward, and measured step time.

* ``count_parameters(m) = sum(p.numel())`` over (trainable) parameters; works on the meta device.
* ``estimate_flops`` counts the forward pass with ``torch.utils.flop_counter.FlopCounterMode``, which counts
  a multiply-add as 2 FLOPs for convolutions and matmuls (norms, activations and softmax are not counted).
* ``estimate_activation_bytes`` sums the tensors autograd saves for backward during one training forward
  (``saved_tensors_hooks``), parameters excluded; on a meta-device model it costs nothing. It is an upper
  bound of the activation memory (a storage saved twice is counted twice) and ignores allocator overhead.
  Training memory ~ activations + 4 x parameter bytes (weights, gradients, two Adam moments).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from focusseg.nets.base import build_network
from focusseg.nets.dynunet import dynunet_topology
from focusseg.nets.from_plan import build_network_from_plan
from focusseg.planning import topology as pl
from focusseg.settings import network_settings, training_settings


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameter elements."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def estimate_flops(model: nn.Module, patch_size: Sequence[int], in_channels: int, batch_size: int = 1) -> int:
    """Forward FLOPs for one batch of ``(batch_size, in_channels, *patch_size)``, model in eval mode.

    Runs the forward on the model's own device, so a model built under ``torch.device("meta")`` is
    counted for free (no memory, no compute).
    """
    was_training = model.training
    model.eval()
    x = torch.zeros((batch_size, in_channels, *patch_size), device=_device_of(model))
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def estimate_activation_bytes(
    model: nn.Module, patch_size: Sequence[int], in_channels: int, batch_size: int = 2
) -> int:
    """Bytes of the tensors saved for backward by one training-mode forward (parameters excluded)."""
    params = {id(p) for p in model.parameters()}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if id(t) not in params:
            total += t.numel() * t.element_size()
        return t

    was_training = model.training
    model.train()
    x = torch.zeros((batch_size, in_channels, *patch_size), device=_device_of(model), requires_grad=False)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
    finally:
        model.train(was_training)
    return total


def _flops_on_meta(name: str, in_ch: int, out_ch: int, patch: tuple[int, ...], kw: Mapping[str, Any]) -> int | None:
    try:
        with torch.device("meta"):
            net = build_network(name, in_ch, out_ch, spatial_dims=len(patch), patch_size=patch, **kw)
        return estimate_flops(net, patch, in_ch)
    except (RuntimeError, NotImplementedError):  # e.g. SwinUNETR's mask building calls .item()
        return None


def time_training_step(
    model: nn.Module,
    patch_size: Sequence[int],
    in_channels: int,
    out_channels: int,
    batch_size: int = 2,
    repeats: int = 2,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Mean seconds of forward + cross-entropy + backward on random data (one untimed warm-up step)."""
    device = _device_of(model)
    model.train()
    x = torch.randn((batch_size, in_channels, *patch_size), device=device)
    y = torch.randint(0, out_channels, (batch_size, *patch_size), device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x)
            out = out[0] if isinstance(out, list) else out
            loss = F.cross_entropy(out.float(), y)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def describe_networks(
    names: Sequence[str],
    patch_size: Sequence[int],
    in_channels: int,
    out_channels: int,
    device: str | torch.device = "cpu",
    batch_size: int = 2,
    repeats: int = 2,
    network_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    measure_time: bool = True,
) -> list[dict[str, Any]]:
    """Per network: ``name, params, gflops`` (forward, batch 1), ``activation_gib`` (saved for backward,
    batch ``batch_size``) and ``step_s`` (measured forward + backward on ``device``, None if not measured).

    ``network_kwargs`` maps a name to extra builder kwargs. The patch is validated against the divisor.
    """
    patch = tuple(int(p) for p in patch_size)
    rows = []
    for name in names:
        kw = dict((network_kwargs or {}).get(name, {}))
        flops = _flops_on_meta(name, in_channels, out_channels, patch, kw)
        net = build_network(name, in_channels, out_channels, spatial_dims=len(patch), patch_size=patch, **kw)
        net = net.to(device)
        if flops is None:
            flops = estimate_flops(net, patch, in_channels)
        act = estimate_activation_bytes(net, patch, in_channels, batch_size)
        step = time_training_step(net, patch, in_channels, out_channels, batch_size, repeats) if measure_time else None
        rows.append({
            "name": name,
            "params": count_parameters(net),
            "gflops": flops / 1e9,
            "activation_gib": act / 2**30,
            "step_s": step,
            "device": str(torch.device(device)),
        })  # fmt: skip
        del net
    return rows


def estimate_plan_memory(plan: Mapping[str, Any], model: nn.Module | None = None) -> dict[str, Any]:
    """Estimated GPU memory (GB = 2**30 bytes) of one training step of a plan's network at its patch and batch.

    * DynUNet: the planner's analytic formula (``planning.topology.estimate_training_memory``; the same number the
      plan's ``memory_estimate_gb`` records), from the plan's strides, kernels and features;
    * any other network: the tensors autograd saves during a training forward, measured on the meta device
      (:func:`estimate_activation_bytes`, fp32) and scaled to the plan's AMP dtype (x 2/4 under fp16/bf16),
      x 1.1 fragmentation, + 18 bytes per parameter + 0.5 GB (the same terms as the DynUNet formula).

    Returns ``{"total_gb", "activations_gb", "fixed_gb", "parameters", "method"}``. ``model`` (optional) is the
    network already built from the plan (on any device; it is rebuilt on the meta device when needed).
    Not measured on a GPU.
    """
    name, kw = network_settings(plan).split()
    patch = [int(p) for p in plan["patch_size"]]
    batch = int(plan.get("batch_size", 2))
    in_ch, n_cls = len(plan["channel_names"]), int(plan["n_classes"])
    amp = training_settings(plan).amp or "none"
    if name == "dynunet":
        ks, st = dynunet_topology(len(patch), kw.get("kernel_sizes"), kw.get("strides"), kw.get("n_stages"))
        cap = kw.get("max_features") or (320 if len(patch) == 3 else 512)
        feats = pl.dynunet_features(len(st), int(kw.get("base_features", 32)), int(cap))
        dsn = int(kw.get("deep_supr_num", len(st) - 2)) if kw.get("deep_supervision") else 0
        est = pl.estimate_training_memory(patch, batch, in_ch, n_cls, ks, st, feats, dsn, amp)
        return {"total_gb": est["total_gb"], "activations_gb": est["activations_gb"], "fixed_gb": est["fixed_gb"],
                "parameters": est["parameters"], "method": "analytic (DynUNet topology)"}
    if model is None or _device_of(model).type != "meta":
        with torch.device("meta"):
            model = build_network_from_plan(dict(plan))
    saved = estimate_activation_bytes(model, patch, in_ch, batch)
    b = pl.AMP_BYTES.get(str(amp).lower(), 4) if amp else 4
    act = pl.FRAGMENTATION * saved * b / 4
    params = count_parameters(model)
    fixed = pl.BYTES_PER_PARAMETER * params + pl.FIXED_OVERHEAD_GB * 2**30
    return {"total_gb": (act + fixed) / 2**30, "activations_gb": act / 2**30, "fixed_gb": fixed / 2**30,
            "parameters": params, "method": "saved tensors on the meta device"}


def describe_plan(plan: Mapping[str, Any], device: str | torch.device = "cpu", measure_time: bool = False,
                  repeats: int = 2) -> dict[str, Any]:
    """The planned network's cost: ``network, patch, batch, params, gflops`` (forward, one sample, counted on the
    meta device), ``train_memory_gb`` (:func:`estimate_plan_memory`), ``budget_gb`` (the plan's
    ``gpu_memory_gb``, None for a CPU plan) and ``step_s`` (a timed training step on ``device`` when
    ``measure_time``, else None)."""
    patch = tuple(int(p) for p in plan["patch_size"])
    in_ch, n_cls = len(plan["channel_names"]), int(plan["n_classes"])
    with torch.device("meta"):
        net = build_network_from_plan(dict(plan))
    try:
        flops: int | None = estimate_flops(net, patch, in_ch)
    except (RuntimeError, NotImplementedError):  # e.g. SwinUNETR's mask building calls .item()
        flops = None
    mem = estimate_plan_memory(plan, net)
    step = None
    if measure_time:
        real = build_network_from_plan(dict(plan)).to(device)
        amp = training_settings(plan).amp or "none"
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(str(amp).lower())
        if dtype is torch.float16 and torch.device(device).type != "cuda":
            dtype = torch.bfloat16
        step = time_training_step(real, patch, in_ch, n_cls, int(plan.get("batch_size", 2)), repeats, dtype)
    return {"network": network_settings(plan).name, "patch": list(patch), "batch": int(plan.get("batch_size", 2)),
            "params": count_parameters(net), "gflops": None if flops is None else flops / 1e9,
            "train_memory_gb": mem["total_gb"], "budget_gb": plan.get("gpu_memory_gb"), "step_s": step}
