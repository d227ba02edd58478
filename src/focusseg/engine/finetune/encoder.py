"""Which parameters are a network's encoder, found from its behaviour rather than its attribute names.

One probing forward pass in eval mode (on the meta device when the network supports it: no memory, no compute)
records the order in which modules start and which ones upsample. Every module with parameters of its own that
starts before the first upsampling module is encoder (the bottleneck included); the decoder, skip fusion, output
block and modules that do not run in eval mode (deep-supervision heads) are not. The rule holds for every network
family of the registry; ``docs/finetuning.md`` lists what it finds in each.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from focusseg.errors import PlanError
from focusseg.nets.from_plan import build_network_from_plan
from focusseg.settings import network_settings


def encoder_parameter_names(network: nn.Module, example: torch.Tensor) -> list[str]:
    """The encoder's parameter names, by one forward pass of ``example``.

    A module upsamples when its input and output have the example's number of dims, no spatial axis of the
    output is smaller and one is larger (a transposed convolution, an interpolation, an ``UpCat``);
    ``nn.Linear`` never counts (on channels-last transformer tokens it widens the feature axis, not a spatial
    one). The encoder is every parameter of a module that starts before the first upsampling module.

    Args:
        network: the network; its train/eval mode is restored afterwards.
        example: one input batch on the network's device (the meta device works), run without gradients.

    Returns:
        Parameter names as in ``network.named_parameters()``; empty when nothing upsamples.
    """
    order: dict[int, int] = {}
    ups: list[int] = []
    ndim = example.dim()

    def pre(module: nn.Module, args: tuple) -> None:
        order.setdefault(id(module), len(order))

    def post(module: nn.Module, args: tuple, out: Any) -> None:
        if isinstance(module, nn.Linear):
            return
        x = args[0] if args else None
        y = next((o for o in out if isinstance(o, torch.Tensor)), None) if isinstance(out, (list, tuple)) else out
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dim() == y.dim() == ndim):
            return
        grow = [int(b) - int(a) for a, b in zip(x.shape[2:], y.shape[2:])]
        if min(grow) >= 0 and max(grow) > 0:
            ups.append(order[id(module)])

    handles = []
    for m in network.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    was_training = network.training
    try:
        network.eval()
        with torch.no_grad():
            network(example)
    finally:
        for h in handles:
            h.remove()
        network.train(was_training)
    if not ups:
        return []
    first_up = min(ups)
    names: list[str] = []
    seen: set[int] = set()
    for mname, m in network.named_modules():
        idx = order.get(id(m))
        if idx is None or idx >= first_up:
            continue
        for pname, p in m.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                names.append(f"{mname}.{pname}" if mname else pname)
    return names


def planned_encoder_names(plan: dict) -> list[str]:
    """:func:`encoder_parameter_names` of the plan's network, built and probed on the meta device with one patch
    of the plan's size (``channel_names``, ``patch_size``).

    Raises:
        Exception: whatever building or running the network on the meta device raises (SwinUNETR cannot run
            there); callers then probe the real network on its device.
    """
    with torch.device("meta"):
        net = build_network_from_plan(plan)
        x = torch.zeros(1, len(plan["channel_names"]), *[int(s) for s in plan["patch_size"]])
    return encoder_parameter_names(net, x)


def no_encoder_error(plan: dict) -> PlanError:
    """The error for ``--freeze-encoder-epochs`` on a network in which no module upsamples."""
    ns = network_settings(plan)
    name = None if ns is None else ns.name
    return PlanError(f"--freeze-encoder-epochs: found no encoder in network {name!r} (no module upsamples in its "
                     "forward pass)", hint="fine-tune without --freeze-encoder-epochs")
