"""The 2D configuration of a plan (nnU-Net's ``2d``): slices along the coarsest axis, an in-plane patch and a 2D
network (:func:`plan_2d`), and the helpers the loader, the sliding window and the recipes read a 2D plan with
(:func:`slice_axis_of`, :func:`network_spacing`). :func:`check_configuration` refuses a plan whose configuration
does not hold together.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from focusseg.errors import PlanError
from focusseg.nets.base import network_info, network_names
from focusseg.planning.topology import (
    GPU_PRESETS,
    PROFILES,
    estimate_training_memory,
    nnunet_deep_supervision,
    plan_cuda_network,
    plan_network,
    pooling_steps,
    shrink_patch,
)
from focusseg.settings import network_settings, training_settings

#: The configurations a plan can be: ``"3d"`` (the default, patches of the volume) or ``"2d"`` (slices).
CONFIGURATIONS = ("3d", "2d")
#: The 2D profile per device. CPU: the in-plane patch is the median in-plane shape capped at 512^2 pixels (a CT
#: slice fits whole), and a step processes about as many pixels as the 3D step's compute (``3 * 2 * 96^3``: a
#: 3x3 convolution costs a third of a 3x3x3 one per element), at most ``max_batch`` slices. CUDA: the GPU-memory
#: budget of :func:`~focusseg.planning.topology.plan_cuda_network` with nnU-Net's 2D initial patch (2048^2) and
#: feature cap (512).
#: ``max_batch`` stands in for nnU-Net's 5 %-of-the-dataset cap, which a plan cannot compute (it holds no case
#: count); nnU-Net's own 2D batches are 12-49 on typical CT/MR and larger on tiny slices.
PROFILES_2D: dict[str, dict[str, Any]] = {
    "cpu": {"pixel_budget": 512**2, "step_pixels": 3 * 2 * 96**3, "max_batch": 64, "max_pool": 6},
    "cuda": {"base_width": 32, "max_width": 512, "max_batch": 512},
}
#: nnU-Net v2 rotates 2D patches by up to +-180 deg, or +-15 deg when the patch's aspect ratio exceeds 1.5.
ROTATION_2D = ((-180.0, 180.0), (-15.0, 15.0))


def choose_slice_axis(spacing: list[float]) -> int:
    """The out-of-plane axis of the 2D configuration: the axis with the largest (coarsest) target spacing.

    nnU-Net transposes its (z, y, x) arrays so that ``argmax(spacing)`` comes first and slices along it; on ties
    (isotropic data) ``argmax`` takes the first of its (z, y, x) axes, i.e. z. focusseg's arrays are (x, y, z), so
    ties go to the *last* tied axis, which is the same anatomical axis."""
    sp = np.asarray(spacing, dtype=float).reshape(-1)
    if sp.size != 3 or not np.isfinite(sp).all() or (sp <= 0).any():
        raise PlanError(f"target_spacing {list(spacing)!r} must be 3 finite positive numbers to choose a slice axis")
    return int([a for a in range(3) if sp[a] == sp.max()][-1])


def inplane_axes(slice_axis: int) -> list[int]:
    """The two in-plane axes (in increasing order) of slices along ``slice_axis``."""
    return [a for a in range(3) if a != int(slice_axis)]


def is_2d(plan: dict) -> bool:
    """Whether ``plan`` is the 2D configuration."""
    return plan.get("configuration", "3d") == "2d"


def slice_axis_of(plan: dict) -> int | None:
    """The plan's slice axis for a 2D plan, None for a 3D one (what the loader and the sliding window take)."""
    return int(plan["slice_axis"]) if is_2d(plan) else None


def network_spacing(plan: dict) -> list[float]:
    """The spacing the network sees, one value per patch axis: the in-plane target spacing for a 2D plan."""
    spacing = [float(s) for s in plan["target_spacing"]]
    return [spacing[a] for a in inplane_axes(plan["slice_axis"])] if is_2d(plan) else spacing


def plan_2d(plan: dict) -> dict:
    """The 2D configuration of a 3D plan made by :func:`~focusseg.planning.planner.make_plan` (nnU-Net v2's ``2d``
    configuration):

    * ``slice_axis`` = :func:`choose_slice_axis` of the target spacing; the store (preprocessing) is the 3D one,
      so the same preprocessed store serves both configurations (its key holds no patch or network). Reading
      chosen: the out-of-plane axis keeps the 3D target spacing (nnU-Net's 2D keeps each case's own slice
      spacing; on isotropic data both agree);
    * ``patch_size`` (2 values, the in-plane axes in increasing order): the median in-plane resampled shape,
      capped by the profile (:data:`PROFILES_2D`), rounded to the network's pooling; on CUDA the GPU-memory
      budget's patch, batch and per-axis DynUNet topology (:func:`~focusseg.planning.topology.plan_cuda_network`
      in 2D, features up to 512);
    * ``batch_size``: CPU ``step_pixels // patch pixels`` in ``[2, max_batch]``; CUDA as many as the budget holds;
    * a 2D network of the profile's family, mirror TTA on the two in-plane axes, slice batches for inference,
      nnU-Net's 2D rotation range (:data:`ROTATION_2D`).

    A plan that is already 2D is returned as a copy."""
    out = copy.deepcopy(plan)
    if is_2d(plan):
        return out
    axis = choose_slice_axis(plan["target_spacing"])
    inplane = inplane_axes(axis)
    spacing = [float(plan["target_spacing"][a]) for a in inplane]
    median = [float(plan["median_shape_resampled"][a]) for a in inplane]
    out.pop("patch_size_planned", None)
    if plan.get("device_profile") == "cuda":
        prof = PROFILES_2D["cuda"]
        budget = float(plan.get("gpu_memory_gb") or GPU_PRESETS["m"])
        in_ch, k = len(plan["channel_names"]), int(plan["n_classes"])
        amp = training_settings(plan).amp or "auto"  # the planner always writes it; "auto" is its CUDA profile's
        gpu = plan_cuda_network(spacing, median, budget, in_ch, k, dataset_voxels=1e30, amp=amp,
                                base=prof["base_width"], cap=prof["max_width"])
        patch, batch = gpu["patch_size"], min(int(gpu["batch_size"]), prof["max_batch"])
        dsn, ds_weights = nnunet_deep_supervision(len(gpu["strides"]))
        network: dict[str, Any] = {"name": "dynunet", "n_stages": len(gpu["strides"]),
                                   "kernel_sizes": gpu["kernel_sizes"], "strides": gpu["strides"],
                                   "base_features": prof["base_width"], "max_features": prof["max_width"],
                                   "deep_supervision": dsn > 0}
        if dsn > 0:
            network["deep_supr_num"] = dsn
        out["training"]["deep_supervision"] = {"weights": ds_weights} if ds_weights else None
        est = estimate_training_memory(patch, batch, in_ch, k, gpu["kernel_sizes"], gpu["strides"], gpu["features"],
                                       dsn, amp)
        out["memory_estimate_gb"] = round(est["total_gb"], 3)
    else:
        prof = PROFILES_2D["cpu"]
        shrunk = shrink_patch(median, prof["pixel_budget"])
        n_pool = pooling_steps(float(shrunk.min()), max_pool=prof["max_pool"])
        patch = [int(math.ceil(p / 2**n_pool) * 2**n_pool) for p in shrunk]
        batch = max(2, min(prof["step_pixels"] // int(np.prod(patch)), prof["max_batch"]))
        network = plan_network(PROFILES["cpu"], n_pool, False)
        out["training"]["deep_supervision"] = None
    out["configuration"], out["slice_axis"] = "2d", axis
    out["patch_size"], out["batch_size"], out["network"] = [int(p) for p in patch], int(batch), network
    rotation = ROTATION_2D[0] if max(patch) / min(patch) <= 1.5 else ROTATION_2D[1]
    aug = training_settings(out).augmentation_options()  # {"preset": name} or the options
    out["training"]["augmentation"] = {**aug, "rotation_deg": list(rotation)}
    out["inference"]["mirror_axes"] = [0, 1]
    out["inference"]["batch_size"] = int(min(batch, 64))
    return out


def check_configuration(plan: dict) -> None:
    """Refuse (:class:`PlanError`) a ``configuration`` that is not 3d/2d, and a 2D plan whose ``patch_size`` is
    not 2 values, whose ``slice_axis`` is not 0, 1 or 2, or whose network has no 2D form (a 3D-only network of
    the registry); a 3D plan must not carry a ``slice_axis``."""
    cfg = plan.get("configuration", "3d")
    if cfg not in CONFIGURATIONS:
        raise PlanError(f"configuration {cfg!r} is not one of {', '.join(CONFIGURATIONS)}")
    axis = plan.get("slice_axis")
    if cfg == "3d":
        if axis is not None:
            raise PlanError(f"slice_axis {axis!r} is set but the plan is the 3d configuration",
                            hint="--set configuration=2d (or drop slice_axis)")
        return
    if len(plan["patch_size"]) != 2:
        raise PlanError(f"the 2d configuration needs a 2-value in-plane patch_size, got {list(plan['patch_size'])}",
                        hint="--set patch_size=[H,W] (the two axes other than slice_axis)")
    if not isinstance(axis, int) or isinstance(axis, bool) or axis not in (0, 1, 2):
        raise PlanError(f"slice_axis {axis!r} must be 0, 1 or 2 in a 2d plan")
    net = network_settings(plan)
    name = None if net is None else net.name
    try:
        dims = network_info(str(name)).spatial_dims
    except KeyError:
        return  # an unknown network is reported where it is built
    if 2 not in dims:
        two_d = [n for n in network_names() if 2 in network_info(n).spatial_dims]
        raise PlanError(f"network {name!r} is 3D only; the 2d configuration needs a 2D network",
                        hint=f"--set network.name=... one of {', '.join(two_d)}")
