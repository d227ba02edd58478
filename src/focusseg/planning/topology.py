"""Patch, batch and network topology per device profile: nnU-Net's rules under a voxel or GPU-memory budget.

The CPU profile (:data:`PROFILES`) bounds the voxels per patch and step and picks a narrow network
(:func:`plan_patch`, :func:`plan_network`). The CUDA profile (:func:`plan_cuda_network`) fits patch and batch to a
GPU-memory budget (:func:`gpu_budget`: presets m / l / xl = 8 / 24 / 40 GB, as nnU-Net's ResEnc planners) with
nnU-Net's per-axis pooling rule (:func:`pool_and_conv_props`), an analytic training-memory estimate
(:func:`estimate_training_memory`) and nnU-Net's deep-supervision weights (:func:`nnunet_deep_supervision`).
``docs/planning.md`` describes the rules.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from focusseg.errors import PlanError
from focusseg.planning.resenc import RESENC_PRESETS

#: Per device: patch and step voxel budgets, network family and widths, AMP, iterations per epoch, and the memory
#: layout of training and inference (``channels_last`` / ``accelerate``: on CPUs the thin convolutions run
#: channels-last 3D, :mod:`focusseg.nets.layout`, measured faster there; GPUs keep the default layout).
PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {"voxel_budget": 96**3, "step_voxels": 2 * 96**3, "base_width": 16, "max_width": 256,
            "network": "unet", "amp": "auto", "iterations_per_epoch": 100,
            "channels_last": "thin", "accelerate": "thin"},
    "cuda": {"voxel_budget": 128**3, "step_voxels": 2 * 128**3, "base_width": 32, "max_width": 320,
             "network": "dynunet", "amp": "auto", "iterations_per_epoch": 250,
             "channels_last": False, "accelerate": "none"},
}


def pooling_steps(size: float, max_pool: int = 5, min_feature: int = 4) -> int:
    """How many times an axis of ``size`` voxels is halved, keeping at least ``min_feature`` voxels at the
    bottom: ``floor(log2(size / min_feature))`` clipped to ``[0, max_pool]`` (nnU-Net's rule)."""
    return int(max(0, min(max_pool, math.floor(math.log2(max(size, 1) / min_feature)))))


#: The smallest patch size along any axis (a volume thinner than this is padded).
MIN_PATCH = 8.0


def shrink_patch(median_shape: list[float], voxel_budget: int) -> np.ndarray:
    """The unrounded patch: the median shape (each axis at least :data:`MIN_PATCH`), shrunk by 10 % steps
    (largest axis relative to the median shape first, then the largest axis) until ``prod <= voxel_budget``.
    An axis at the floor is never chosen, so the loop ends on every shape: when every axis is at the floor the
    patch is ``MIN_PATCH**3`` even if that exceeds the budget. Each axis starts at most at ``voxel_budget``
    (no axis can be larger once the others are at the floor), which bounds the iterations."""
    median = np.array([m if math.isfinite(m) and m > 0 else 1.0 for m in map(float, median_shape)], dtype=float)
    cap = max(MIN_PATCH, float(voxel_budget))
    patch = np.array([min(max(MIN_PATCH, s), cap) for s in median], dtype=float)
    while np.prod(patch) > voxel_budget:
        shrinkable = patch > MIN_PATCH
        if not shrinkable.any():
            break
        rel = np.where(shrinkable, patch / median, -np.inf)
        ax = int(np.argmax(rel if rel.max() > 1 else np.where(shrinkable, patch, -np.inf)))
        patch[ax] = max(MIN_PATCH, patch[ax] * 0.9)
    return patch


def plan_patch(median_shape: list[float], voxel_budget: int) -> tuple[list[int], int]:
    """Patch size (multiple of 2**n_pool) and n_pool from the median shape and a voxel budget."""
    patch = shrink_patch(median_shape, voxel_budget)
    n_pool = pooling_steps(float(patch.min()))
    div = 2**n_pool
    rounded = [int(math.ceil(p / div) * div) for p in patch]
    return rounded, n_pool


def plan_network(profile: dict, n_pool: int, deep_supervision: bool) -> dict:
    widths = [min(profile["base_width"] * 2**i, profile["max_width"]) for i in range(n_pool + 1)]
    if profile["network"] == "unet":
        return {"name": "unet", "channels": widths, "strides": [2] * n_pool, "num_res_units": 2,
                "norm": "instance"}
    return {"name": "dynunet", "n_stages": n_pool + 1, "base_features": profile["base_width"],
            "max_features": profile["max_width"], "deep_supervision": deep_supervision}


# --------------------------------------------------------------------------------------------------------------
# CUDA profile: nnU-Net's per-axis topology and a GPU-memory budget
# --------------------------------------------------------------------------------------------------------------

#: GPU-memory targets (GB = 2**30 bytes) in the spirit of nnU-Net's residual-encoder presets
#: (nnU-Net docs, "Residual Encoder Presets": ResEnc M ~9-11 GB, L ~24 GB, XL ~40 GB; the planners'
#: ``gpu_memory_target_in_gb`` is 8 / 24 / 40). ``"whole"`` plans for the card's memory minus :func:`headroom_gb`.
GPU_PRESETS: dict[str, float] = {"m": 8.0, "l": 24.0, "xl": 40.0}
#: Every preset a plan may name: the budgets above, ``whole``, and nnU-Net's own ResEnc planners
#: (``resenc-m`` / ``resenc-l`` / ``resenc-xl``, :mod:`focusseg.planning.resenc`: their targets are 8 / 24 / 40 GB).
PRESET_NAMES = (*GPU_PRESETS, "whole", *RESENC_PRESETS)
#: nnU-Net's ``UNet_featuremap_min_edge_length``: an axis is pooled only while it has >= 2 * 4 voxels.
MIN_FEATURE_MAP = 4
#: At most this many poolings along one axis (nnU-Net v2 does not cap them; its 3d_fullres plans pool 5-6 times).
MAX_POOL_PER_AXIS = 6
#: MONAI's ``DynUNet`` needs at least 3 stages (2 poolings; ``check_kernel_stride``).
MIN_STAGES = 3
#: Under fp16/bf16 autocast every activation is 2 bytes, without AMP 4 ("auto" is fp16 or bf16 on CUDA).
AMP_BYTES = {"fp16": 2, "bf16": 2, "auto": 2}
#: Saved tensors per conv-output element: the conv output (kept by the norm) and the norm/activation output (kept
#: by the next conv) are 2; the third covers skip concatenations, transposed-conv outputs and backward transients.
#: Counted on the meta device (``planning.profile.estimate_activation_bytes``): 2.85 for the 6-stage 32-320 DynUNet.
SAVED_PER_ELEMENT = 3
#: Per logit element of every head: the fp32 logits the loss casts, softmax, one-hot target, gradient (4 B each).
LOSS_BYTES_PER_LOGIT = 16
#: Per parameter: fp32 weight + fp32 gradient + two fp32 Adam moments (SGD momentum takes one) + fp16 copy.
BYTES_PER_PARAMETER = 18
#: cuDNN workspace and allocator slack that does not scale with the batch.
FIXED_OVERHEAD_GB = 0.5
#: Allocator fragmentation on top of the batch-dependent part.
FRAGMENTATION = 1.1
_GB = 2**30


def headroom_gb(card_gb: float) -> float:
    """Memory left free on a card (CUDA context, cuDNN handles, other processes): ``max(1, 0.1 * card)`` GB."""
    return max(1.0, 0.1 * float(card_gb))


def visible_gpu_memory_gb(device: str = "cuda") -> float | None:
    """Total memory (GB) of the CUDA card ``device`` names, or None when torch sees none."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = torch.device(device).index
    return torch.cuda.get_device_properties(0 if index is None else index).total_memory / _GB


def gpu_budget(gpu_memory_gb: float | None = None, preset: str | None = None,
               device: str = "cuda") -> tuple[float, str, float | None]:
    """``(budget_gb, preset, card_gb)``: the memory a CUDA plan may use.

    * ``preset`` m / l / xl: 8 / 24 / 40 GB, capped at the card's memory minus headroom when the card is given
      (L on a 24 GB card plans for 21.6 GB); refused when the card is smaller than the target;
    * ``"whole"``: the card's memory minus :func:`headroom_gb`;
    * no preset: ``"whole"`` when ``gpu_memory_gb`` is given or a card is visible, else ``"m"`` (8 GB, nnU-Net's
      default target);
    * ``resenc-m`` / ``resenc-l`` / ``resenc-xl``: the target of nnU-Net's planner (8 / 24 / 40 GB), refused on a
      smaller card like m / l / xl, but not capped (nnU-Net's planner plans for its target).
    """
    if gpu_memory_gb is not None and not (isinstance(gpu_memory_gb, (int, float)) and math.isfinite(gpu_memory_gb)
                                          and gpu_memory_gb > 0):
        raise PlanError(f"gpu_memory_gb {gpu_memory_gb!r} must be a positive number of GB")
    name = None if preset is None else str(preset).strip().lower()
    if name is not None and name not in PRESET_NAMES:
        raise PlanError(f"preset {preset!r} is not one of {', '.join(PRESET_NAMES)}")
    card = float(gpu_memory_gb) if gpu_memory_gb is not None else None
    if card is None and name in (None, "whole"):
        card = visible_gpu_memory_gb(device)
    if name is None:
        name = "whole" if card is not None else "m"
    if name == "whole":
        if card is None:
            raise PlanError("preset 'whole' needs the card's memory: no CUDA device is visible",
                            hint="give --gpu-memory GB, or a preset m, l or xl")
        budget = card - headroom_gb(card)
        if budget <= 0:
            raise PlanError(f"a {card:g} GB card leaves no memory after {headroom_gb(card):g} GB headroom")
        return round(budget, 3), name, card
    if name in RESENC_PRESETS:
        target = RESENC_PRESETS[name].gpu_memory_gb
        if card is not None and target > card:
            raise PlanError(f"preset {name!r} targets {target:g} GB, more than the {card:g} GB card",
                            hint="choose a smaller preset, or 'whole'")
        return target, name, card
    budget = GPU_PRESETS[name]
    if card is not None:
        if budget > card:
            raise PlanError(f"preset {name!r} targets {budget:g} GB, more than the {card:g} GB card",
                            hint="choose a smaller preset, or 'whole'")
        budget = min(budget, round(card - headroom_gb(card), 3))  # L on a 24 GB card: 21.6 GB
    return budget, name, card


def pool_and_conv_props(spacing: list[float], patch: list[float], min_feature: int = MIN_FEATURE_MAP,
                        max_pool: int = MAX_POOL_PER_AXIS) -> tuple[list[list[int]], list[list[int]]]:
    """Per-stage ``(kernel_sizes, strides)`` for a patch, nnU-Net's rule (``get_pool_and_conv_props``,
    Isensee et al. 2021, "network topology"), one pooling step (= one stage) at a time:

    * an axis can be pooled while its current size is >= ``2 * min_feature`` and it was pooled < ``max_pool``
      times; of those axes only the ones whose current spacing is < 2x the finest current spacing among them are
      pooled (a thick-slice axis waits until in-plane pooling has coarsened the others to within 2x);
    * a lone poolable axis is pooled only while it has >= ``3 * min_feature`` voxels;
    * pooling doubles an axis's spacing and halves (ceil) its size; the stage strides are 2 on pooled axes, 1 else;
    * kernel 3 along an axis once its current spacing is < 2x the finest of all axes (then it stays 3), else 1
      (nnU-Net's 1x3x3 convs on thick slices); the bottleneck uses 3 along every axis.

    The first stage has stride 1. Never fewer than :data:`MIN_STAGES` = 3 stages (MONAI's ``DynUNet`` refuses
    fewer): while the rule stops earlier, the finest axes with >= 4 voxels are pooled once more (a bottleneck
    of >= 2 voxels, e.g. 8^3 -> 4^3 -> 2^3).
    """
    dim = len(spacing)
    cur_sp = [float(s) for s in spacing]
    cur_sz = [float(p) for p in patch]
    n_pool = [0] * dim
    kernel = [1] * dim
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * dim]
    while True:
        valid = [a for a in range(dim) if cur_sz[a] >= 2 * min_feature and n_pool[a] < max_pool]
        if valid:
            finest = min(cur_sp[a] for a in valid)
            valid = [a for a in valid if cur_sp[a] / finest < 2]
        if len(valid) == 1 and cur_sz[valid[0]] < 3 * min_feature:
            valid = []
        if not valid:
            break
        finest_all = min(cur_sp)
        kernel = [3 if kernel[a] == 3 or cur_sp[a] / finest_all < 2 else 1 for a in range(dim)]
        kernels.append(list(kernel))
        strides.append([2 if a in valid else 1 for a in range(dim)])
        for a in valid:
            n_pool[a] += 1
            cur_sp[a] *= 2
            cur_sz[a] = math.ceil(cur_sz[a] / 2)
    while len(strides) < MIN_STAGES:  # too small to pool by the rule: pool the finest axes with >= 4 voxels
        fits = [a for a in range(dim) if cur_sz[a] >= 4] or [int(np.argmax(cur_sz))]
        finest = min(cur_sp[a] for a in fits)
        pooled = [a for a in fits if cur_sp[a] / finest < 2]
        finest_all = min(cur_sp)
        kernel = [3 if kernel[a] == 3 or cur_sp[a] / finest_all < 2 else 1 for a in range(dim)]
        kernels.append(list(kernel))
        strides.append([2 if a in pooled else 1 for a in range(dim)])
        for a in pooled:
            cur_sp[a] *= 2
            cur_sz[a] = math.ceil(cur_sz[a] / 2)
    kernels.append([3] * dim)
    return kernels, strides


def stride_divisors(strides: list[list[int]]) -> list[int]:
    """Per axis, the product of the stage strides: every patch size must be a multiple of it."""
    return [int(math.prod(s[a] for s in strides)) for a in range(len(strides[0]))]


def dynunet_features(n_stages: int, base: int = 32, cap: int = 320) -> list[int]:
    """``f_s = min(base * 2**s, cap)`` (nnU-Net: 32, capped at 320 in 3D)."""
    return [min(base * 2**s, cap) for s in range(n_stages)]


def dynunet_parameter_count(in_channels: int, n_classes: int, kernels: list[list[int]], strides: list[list[int]],
                            features: list[int], deep_supr_num: int = 0) -> int:
    """Parameters of focusseg's MONAI ``DynUNet`` (convs without bias, affine instance norms, 1x1x1 heads with
    bias), counted from the topology: encoder stage s ``f_{s-1} -> f_s -> f_s`` with kernel ``k_s``; decoder level s
    a transposed conv ``f_{s+1} -> f_s`` (kernel = stride ``st_{s+1}``) and ``2 f_s -> f_s -> f_s`` with ``k_{s+1}``
    (MONAI's convention); heads ``f_0`` and ``f_1..f_dsn`` -> classes. Equal to ``count_parameters`` (tested)."""
    n = len(features)
    total = 0
    prev = in_channels
    for s in range(n):
        k = math.prod(kernels[s])
        total += prev * features[s] * k + features[s] * features[s] * k + 4 * features[s]
        prev = features[s]
    for s in range(n - 1):
        k = math.prod(kernels[s + 1])
        f, up = features[s], features[s + 1]
        total += up * f * math.prod(strides[s + 1]) + 2 * f * f * k + f * f * k + 4 * f
    for f in [features[0], *features[1:1 + deep_supr_num]]:
        total += f * n_classes + n_classes
    return int(total)


def dynunet_feature_elements(patch: list[int], strides: list[list[int]], features: list[int], n_classes: int,
                             deep_supr_num: int = 0) -> tuple[int, int]:
    """``(E, H)`` per sample: E = conv-output elements (channels x voxels) of every conv — two per encoder stage,
    a transposed conv and two convs per decoder level (the count nnU-Net's ``compute_conv_feature_map_size``
    makes) —, H = logit elements of the full-resolution output and the deep-supervision heads."""
    voxels = []
    size = [int(p) for p in patch]
    for st in strides:
        size = [max(1, -(-sz // s)) for sz, s in zip(size, st)]
        voxels.append(math.prod(size))
    e_stage = [f * v for f, v in zip(features, voxels)]
    elements = 2 * sum(e_stage) + 3 * sum(e_stage[:-1])
    logits = n_classes * sum(voxels[: 1 + deep_supr_num])
    return int(elements), int(logits)


def estimate_training_memory(patch: list[int], batch: int, in_channels: int, n_classes: int,
                             kernels: list[list[int]], strides: list[list[int]], features: list[int],
                             deep_supr_num: int = 0, amp: str | None = "fp16") -> dict[str, float]:
    """Estimated peak GPU memory (GB = 2**30 bytes) of one DynUNet training step (forward, loss, backward, step):

        activations = batch * (K * b * E + 16 * H)        K = 3 saved tensors per conv-output element,
                                                          b = 2 bytes under fp16/bf16 autocast (4 without),
                                                          E, H from :func:`dynunet_feature_elements`
        parameters  = 18 * P                              fp32 weight, gradient, 2 Adam moments, fp16 copy
        total       = 1.1 * activations + parameters + 0.5 GB   (fragmentation; cuDNN workspace)

    Cross-check with nnU-Net: its planner's reference (``UNet_reference_val_3d`` = 560e6 conv-output elements
    per sample fits batch 2 in its 8 GB target) is 7.1 bytes per element and sample, everything included;
    this formula gives K * b = 6 bytes plus the per-parameter and fixed terms. Not measured on a GPU.
    """
    b = AMP_BYTES.get(str(amp).lower(), 4) if amp else 4
    elements, logits = dynunet_feature_elements(patch, strides, features, n_classes, deep_supr_num)
    params = dynunet_parameter_count(in_channels, n_classes, kernels, strides, features, deep_supr_num)
    per_sample = SAVED_PER_ELEMENT * b * elements + LOSS_BYTES_PER_LOGIT * logits
    act = FRAGMENTATION * batch * per_sample
    fixed = BYTES_PER_PARAMETER * params + FIXED_OVERHEAD_GB * _GB
    return {"total_gb": (act + fixed) / _GB, "activations_gb": act / _GB, "per_sample_gb": FRAGMENTATION
            * per_sample / _GB, "fixed_gb": fixed / _GB, "parameters": params, "conv_elements": elements,
            "logit_elements": logits}


def nnunet_deep_supervision(n_stages: int) -> tuple[int, list[float] | None]:
    """``(deep_supr_num, weights)``: nnU-Net supervises the ``n_stages - 1`` decoder outputs with ``2^-i``
    weights, the lowest-resolution one at 0, normalised; its zero-weight head is not built, so the network gets
    ``n_stages - 2`` outputs (``deep_supr_num = n_stages - 3``) and the loss their nonzero weights. Below 4 stages
    only the full-resolution output has a weight: no deep supervision (``(0, None)``)."""
    if n_stages < 4:
        return 0, None
    raw = [0.5**i for i in range(n_stages - 2)]  # losses.deep_supervision.nnunet_weights(n_stages - 1) without
    return n_stages - 3, [w / sum(raw) for w in raw]  # its zero (torch-free: planning stays fast)


def plan_cuda_network(spacing: list[float], median_shape: list[float], budget_gb: float, in_channels: int,
                      n_classes: int, dataset_voxels: float, amp: str = "fp16", base: int = 32,
                      cap: int = 320) -> dict:
    """Patch, batch and DynUNet topology for a GPU budget (nnU-Net's ``get_plans_for_configuration``):

    1. start from a patch of the spacing's aspect ratio (isotropic in mm) with ``256^3 * max(1, budget / 8 GB)``
       voxels, clipped to the median resampled shape (each axis at least :data:`MIN_PATCH`);
    2. topology = :func:`pool_and_conv_props`; patch rounded up to each axis's stride product;
    3. while the :func:`estimate_training_memory` at batch 2 exceeds the budget, shrink the axis that is largest
       relative to the median shape by 10 % (and go to 2);
    4. batch = as many samples as the budget holds, at least 2, at most 5 % of the dataset's voxels (nnU-Net).

    Raises :class:`PlanError` when even the smallest patch does not fit at batch 2.
    """
    spacing_a = np.array(spacing, dtype=float)
    median = np.array([max(MIN_PATCH, float(m)) if math.isfinite(m) else MIN_PATCH for m in median_shape])
    inv = 1.0 / spacing_a
    dims = len(spacing_a)  # nnU-Net's initial patch: 256^3 voxels in 3D, 2048^2 pixels in 2D (x budget / 8 GB)
    volume = (256.0**3 if dims == 3 else 2048.0**2) * max(1.0, budget_gb / GPU_PRESETS["m"])
    initial = inv * (volume / np.prod(inv)) ** (1 / dims)
    patch_f = np.maximum(MIN_PATCH, np.minimum(initial, median))
    budget = budget_gb
    while True:
        kernels, strides = pool_and_conv_props(list(spacing_a), patch_f.tolist())
        div = stride_divisors(strides)
        patch = [int(math.ceil(p / d) * d) for p, d in zip(patch_f, div)]
        features = dynunet_features(len(strides), base, cap)
        dsn, _ = nnunet_deep_supervision(len(strides))
        est = estimate_training_memory(patch, 2, in_channels, n_classes, kernels, strides, features, dsn, amp)
        if est["total_gb"] <= budget:
            break
        shrinkable = patch_f > MIN_PATCH
        if not shrinkable.any():
            raise PlanError(f"the smallest patch {patch} needs ~{est['total_gb']:.2f} GB at batch 2, more than the "
                            f"{budget:g} GB budget", hint="give a larger --gpu-memory or preset")
        rel = np.where(shrinkable, np.array(patch) / median, -np.inf)
        ax = int(np.argmax(rel))
        patch_f[ax] = max(MIN_PATCH, patch_f[ax] * 0.9)
    patch_vox = float(np.prod(patch))
    fit = int((budget - est["fixed_gb"]) // est["per_sample_gb"])
    cap5 = int(round(0.05 * dataset_voxels / patch_vox))
    batch = max(2, min(fit, cap5))
    est = estimate_training_memory(patch, batch, in_channels, n_classes, kernels, strides, features, dsn, amp)
    return {"patch_size": patch, "batch_size": batch, "kernel_sizes": kernels, "strides": strides,
            "features": features, "deep_supr_num": dsn, "estimate": est}
