"""Networks as a plan names them: the network of ``plan["network"]`` with the plan's channels and dimensions, the
module a run exports (one network, or the mean of a cycle run's three), and the autocast dtype a plan asks for."""

from __future__ import annotations

import torch
from torch import nn

from focusseg.devices import cpu_has_native_bf16
from focusseg.nets.base import NETWORKS, build_network
from focusseg.plugins import load_entry_points, missing_name_error
from focusseg.regions import output_channels
from focusseg.registry import split_spec
from focusseg.settings import training_settings


def spatial_dims(plan: dict) -> int:
    return len(plan["patch_size"])


def build_network_from_plan(plan: dict) -> nn.Module:
    """The plan's network, with the plan's channels, outputs, dimensions and patch.

    Raises:
        MissingPluginError: a network the plan's plugin record says a plugin provided, and that plugin is not
            installed (installed plugins are loaded first; nothing the plan names is imported).
        KeyError: any other unknown network (the message lists the known ones).
    """
    name, kwargs = split_spec(plan["network"])  # outputs: n_classes, or one per region (focusseg.regions)
    if name not in NETWORKS:
        load_entry_points()
        missing = None if name in NETWORKS else missing_name_error("network", name, plan)
        if missing is not None:
            raise missing
    return build_network(name, in_channels=len(plan["channel_names"]), out_channels=output_channels(plan),
                         spatial_dims=spatial_dims(plan), patch_size=tuple(plan["patch_size"]), **kwargs)


def amp_dtype(plan: dict, device: torch.device) -> torch.dtype | None:
    """``training.amp``: "auto" | "bf16" | "fp16" | "none".

    - "auto": on CUDA, bf16 autocast on Ampere or newer (compute capability >= 8: bf16 has fp32's range, no
      scaler needed), else fp16 with a GradScaler (nnU-Net's choice on older cards); on the CPU, bf16 only where
      the CPU computes bf16 natively (:func:`cpu_has_native_bf16`: AVX512-BF16 or AMX), else fp32: without native
      support bf16 is emulated and a training step is many times slower than fp32, with it faster (figures:
      BENCHMARKS.md).
    - "fp16" needs CUDA; on the CPU it falls back to bf16. "bf16" is taken as given (on any device).
    Explicit values are kept as they are."""
    amp = training_settings(plan).amp or "none"
    if amp in ("none", "off", "false", "fp32"):
        return None
    if amp == "auto":
        if device.type != "cuda":
            return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    if amp == "fp16" and device.type == "cuda":
        return torch.float16
    return torch.bfloat16


class MeanEnsemble(nn.Module):
    """Mean of the members' logits (main output only); in training mode too, for simplicity of export."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x) for m in self.members]
        outs = [o[0] if isinstance(o, (list, tuple)) else o for o in outs]
        return torch.stack(outs).mean(0)


def build_inference_module(plan: dict) -> nn.Module:
    """The module a run exports: its network, or the mean ensemble of a cycle run's three networks."""
    if training_settings(plan).task_name == "cycle":
        return MeanEnsemble([build_network_from_plan(plan) for _ in range(3)])
    return build_network_from_plan(plan)

