"""Fingerprint -> plan: target spacing, patch and batch size, normalisation, network, training defaults.

nnU-Net's rules where they carry over (see REFERENCE_FACTS.md "nnU-Net planning"), plus a **device profile**:
nnU-Net assumes a GPU with ~8 GB; on a 2-core CPU its 128^3-class patches and 32-320 feature PlainConvUNet
take 5-20 s per step. The CPU profile bounds the voxels processed per step instead of GPU memory and picks a
MONAI UNet whose width starts at 16 (0.03 s / 1.0 s per fp32 step at 32^3 / 96^3, batch 2, on this machine),
trained under bf16 autocast.

Rules:
- target spacing = median spacing; if the coarsest axis is > 3x the finest and the median shape along it is
  < 1/3 of the others, that axis takes the 10th percentile of its spacings (but no finer than the others).
- patch: the median resampled shape, shrunk (largest axis relative to the median shape first) until
  ``patch_voxels <= voxel_budget`` (CPU 96^3 = 884,736; CUDA 128^3), rounded up to a multiple of
  ``2**n_pool`` where n_pool halvings leave a bottleneck of >= 4 voxels (at most 5).
- batch: ``budget_voxels_per_step // patch_voxels`` (CPU 2*96^3 / CUDA 2*128^3), at least 2, capped so a
  batch holds at most 5 % of the dataset's voxels (nnU-Net's cap).
- CUDA profile (:func:`plan_cuda_network`): instead of a voxel budget, a GPU-memory budget (presets m / l / xl =
  8 / 24 / 40 GB as nnU-Net's ResEnc planners, or the whole card minus headroom) and an analytic training-memory
  estimate (:func:`estimate_training_memory`) choose patch and batch; the DynUNet's strides and kernels are chosen
  per axis by nnU-Net's rule (:func:`pool_and_conv_props`), so thick-slice axes are pooled later and get 1x3x3
  kernels until then; deep-supervision heads are only built where their nnU-Net weight is nonzero.
- normalisation: CT channels ``ct`` (clip to foreground 0.5/99.5 percentiles + z-score with foreground
  mean/std); others ``zscore`` per image, masked to the non-zero region when cropping removed >= 25 %.
- labels: ``labels`` holds the classes; a label named ``ignore`` (nnU-Net's ignore label) is recorded apart as
  ``ignore_label`` and gets no output channel (``n_classes`` = max class value + 1).
- regions (nnU-Net's region-based training, :mod:`focusseg.regions`): a dataset with region-based labels (pass its
  ``spec`` to :func:`make_plan`) gets ``regions``, ``regions_class_order`` and ``region_names``, one sigmoid
  output per region, and the loss ``region_dice_bce`` (Dice + BCE, batch Dice); ``n_classes`` stays the label
  value range. A plan without regions keeps its form (and its hash).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from focusseg.errors import PlanError
from focusseg.io.dataset import split_ignore_label

if TYPE_CHECKING:
    from focusseg.io.dataset import DatasetSpec

PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {"voxel_budget": 96**3, "step_voxels": 2 * 96**3, "base_width": 16, "max_width": 256,
            "network": "unet", "amp": "auto", "iterations_per_epoch": 100},
    "cuda": {"voxel_budget": 128**3, "step_voxels": 2 * 128**3, "base_width": 32, "max_width": 320,
             "network": "dynunet", "amp": "auto", "iterations_per_epoch": 250},
}


def target_spacing(fp: dict) -> list[float]:
    spacing = _positive_vector(fp, "median_spacing")
    shape = np.array(fp["median_shape_after_crop"], dtype=float) * np.array(fp["median_spacing"]) / spacing
    worst = int(np.argmax(spacing))
    others = [i for i in range(len(spacing)) if i != worst]
    if not others:
        return [float(s) for s in spacing]
    aniso_spacing = spacing[worst] > 3 * spacing.min()
    aniso_voxels = shape[worst] * 3 < shape[others].min()
    if aniso_spacing and aniso_voxels:
        p10 = float(fp["spacing_percentile_10"][worst])
        if math.isfinite(p10) and p10 > 0:
            spacing[worst] = max(p10, spacing[others].max() + 1e-5)
    return [float(s) for s in spacing]


def _positive_vector(fp: dict, key: str, allow_zero: bool = False) -> np.ndarray:
    """``fp[key]`` as a float vector, refused (:class:`PlanError`) unless finite and positive (or >= 0)."""
    try:
        v = np.array(fp[key], dtype=float).reshape(-1)
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanError(f"fingerprint field {key!r} is missing or not a list of numbers") from exc
    if v.size == 0 or not np.isfinite(v).all() or ((v < 0).any() if allow_zero else (v <= 0).any()):
        raise PlanError(f"fingerprint field {key!r} = {v.tolist()} must hold finite positive numbers")
    return v


def _n_pool(size: float, max_pool: int = 5, min_feature: int = 4) -> int:
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
    n_pool = _n_pool(float(patch.min()))
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


def make_plan(fp: dict, device: str = "cpu", overrides: dict | None = None, gpu_memory_gb: float | None = None,
              preset: str | None = None, configuration: str = "3d", spec: DatasetSpec | None = None) -> dict:
    """A complete, human-readable plan; ``overrides`` is a nested dict merged last (every field overridable).

    ``device="cuda"`` plans for a GPU budget (:func:`gpu_budget`: ``preset`` m / l / xl / whole and the card's
    ``gpu_memory_gb``; default the visible card minus headroom, or the M preset's 8 GB when none is visible):
    patch, batch and a per-axis DynUNet topology from :func:`plan_cuda_network`; the plan records
    ``gpu_memory_gb`` (the budget), ``preset`` and ``memory_estimate_gb``. The CPU plan ignores both arguments.
    ``configuration="2d"``: nnU-Net's 2D configuration of the same data (:func:`plan_2d`).
    ``spec``: the dataset's :class:`~focusseg.io.dataset.DatasetSpec`, needed only for region-based labels (the
    fingerprint does not carry them): its regions go into the plan (:func:`region_fields`).
    """
    cuda = device.startswith("cuda")
    profile = PROFILES["cuda" if cuda else "cpu"]
    budget = gpu_budget(gpu_memory_gb, preset, device) if cuda else None
    spacing = target_spacing(fp)
    scale = _positive_vector(fp, "median_spacing") / np.array(spacing)
    shape_after_crop = _positive_vector(fp, "median_shape_after_crop", allow_zero=True)
    if shape_after_crop.shape != scale.shape:
        raise PlanError(f"fingerprint: median_shape_after_crop has {shape_after_crop.size} axes, median_spacing "
                        f"{scale.size}")
    if not isinstance(fp.get("n_cases"), int) or fp["n_cases"] < 1:
        raise PlanError(f"fingerprint field 'n_cases' = {fp.get('n_cases')!r} must be a positive integer")
    median_shape = (shape_after_crop * scale).tolist()
    dataset_vox = float(np.prod(median_shape)) * fp["n_cases"]
    # the ignore label (nnU-Net's, see focusseg.io.dataset) is no class: no output channel, recorded apart
    labels, ignore_label = split_ignore_label({str(k): int(v) for k, v in fp["labels"].items()})
    n_classes = max(labels.values()) + 1
    if budget is None:
        patch, n_pool = plan_patch(median_shape, profile["voxel_budget"])
        patch_vox = int(np.prod(patch))
        batch = max(2, min(profile["step_voxels"] // patch_vox, int(0.05 * dataset_vox // patch_vox)))
        network = plan_network(profile, n_pool, profile["network"] == "dynunet")
        ds_weights = None
    else:
        gpu = plan_cuda_network(spacing, median_shape, budget[0], len(fp["channel_names"]), n_classes, dataset_vox,
                                amp=profile["amp"], base=profile["base_width"], cap=profile["max_width"])
        patch, batch = gpu["patch_size"], gpu["batch_size"]
        dsn, ds_weights = nnunet_deep_supervision(len(gpu["strides"]))
        network = {"name": "dynunet", "n_stages": len(gpu["strides"]), "kernel_sizes": gpu["kernel_sizes"],
                   "strides": gpu["strides"], "base_features": profile["base_width"],
                   "max_features": profile["max_width"], "deep_supervision": dsn > 0}
        if dsn > 0:
            network["deep_supr_num"] = dsn
    mask_norm = fp.get("median_crop_fraction", 1.0) < 0.75
    norm = []
    for ch in fp["intensity"]:
        if ch["channel"].strip().upper() == "CT":
            norm.append({"scheme": "ct", "clip": [ch["percentile_00_5"], ch["percentile_99_5"]],
                         "mean": ch["mean"], "std": ch["std"]})
        else:
            norm.append({"scheme": "zscore", "use_mask": mask_norm})
    if budget is None:
        deep_supervision: Any = {"weights": "nnunet"} if profile["network"] == "dynunet" else None
    else:
        deep_supervision = {"weights": ds_weights} if ds_weights else None
    plan = {
        "version": 1,
        "dataset": fp["dataset"],
        "device_profile": "cuda" if device.startswith("cuda") else "cpu",
        "channel_names": fp["channel_names"],
        "labels": labels,
        "n_classes": n_classes,
        "target_spacing": spacing,
        "median_shape_resampled": [round(s, 1) for s in median_shape],
        "patch_size": patch,
        "batch_size": int(batch),
        "normalization": norm,
        "resample_order_image": 3,
        "network": network,
        "training": {
            "loss": {"ce": 1.0, "soft_dice": 1.0},
            "deep_supervision": deep_supervision,
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5},
            "lr_schedule": {"name": "poly", "exponent": 0.9},
            "grad_clip": 12.0,
            "max_epochs": 1000,
            "iterations_per_epoch": profile["iterations_per_epoch"],
            "foreground_oversampling": 0.33,
            "augmentation": "nnunet",
            "amp": profile["amp"],
            "validation": "patches",
            "val_patches": 32,
            "val_every": 1,
            "val_full_every": 10,
            "val_max_cases": None,
            "sampler": {"name": "foreground"},
            "class_weighter": None,
            "channels_last": False,
            "compile": False,
            "seed": 0,
        },
        "inference": {"overlap": 0.5, "mirror_axes": [0, 1, 2], "batch_size": 2},
    }
    if ignore_label is not None:  # only then: a plan without one keeps its form (and its hash)
        plan["ignore_label"] = ignore_label
    if spec is not None and spec.regions:  # only then (region-based training, focusseg.regions)
        plan.update(region_fields(spec))
        plan["training"]["loss"] = {"name": "region_dice_bce", "batch": True}
    if budget is not None:
        plan["gpu_memory_gb"], plan["preset"] = budget[0], budget[1]
        plan["memory_estimate_gb"] = round(gpu["estimate"]["total_gb"], 3)
    if configuration == "2d":
        plan = plan_2d(plan)
    elif configuration != "3d":
        raise PlanError(f"configuration {configuration!r} is not one of {', '.join(CONFIGURATIONS)}")
    if overrides:
        plan = deep_merge(plan, overrides)
    return plan


def validate_plan(plan: dict, spec: DatasetSpec) -> None:
    """Refuse (:class:`PlanError`) a plan that cannot work on the dataset ``spec`` describes, before any work:
    a patch that is not 2 or 3 positive integers, a non-positive batch size or target spacing, ``n_classes`` or
    label values that differ from ``dataset.json``'s, a channel count (``channel_names``, ``normalization``)
    that differs from the dataset's, and a class weighter (TCF/PCF/CBS weight every class index
    ``0..n_classes-1``) with non-contiguous label values such as {0, 1, 3}. The plan's ``labels`` are the
    classes (dataset.json's labels without the ignore label); ``ignore_label`` must be dataset.json's ignore
    label value (absent when it declares none)."""
    if not isinstance(plan, dict):
        raise PlanError(f"a plan must be a JSON object, not {type(plan).__name__}")
    for key in ("patch_size", "n_classes", "labels", "channel_names", "normalization", "target_spacing"):
        if key not in plan:
            raise PlanError(f"plan has no {key!r}")
    patch = plan["patch_size"]
    if (not isinstance(patch, (list, tuple)) or len(patch) not in (2, 3)
            or not all(isinstance(p, int) and not isinstance(p, bool) for p in patch)):
        raise PlanError(f"patch_size {patch!r} must be 2 or 3 integers")
    if any(p < 1 for p in patch):
        raise PlanError(f"patch_size {list(patch)} has an axis below 1")
    check_configuration(plan)
    spacing = plan["target_spacing"]
    try:
        sp = np.asarray(spacing, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        sp = np.array([np.nan])
    if sp.size != 3 or not np.isfinite(sp).all() or (sp <= 0).any():
        raise PlanError(f"target_spacing {spacing!r} must be 3 finite positive numbers (mm)")
    batch = plan.get("batch_size", 2)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise PlanError(f"batch_size {batch!r} must be a positive integer")
    labels = plan["labels"]
    if not isinstance(labels, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                               for v in labels.values()):
        raise PlanError("plan 'labels' must map names to integer values")
    plan_values = sorted(set(labels.values()))
    if plan_values != spec.class_values:
        raise PlanError(f"plan label values {plan_values} differ from dataset.json's {spec.class_values}"
                        + (f" (its ignore label {spec.ignore_label} is no class)" if spec.ignore_label is not None
                           else ""),
                        hint="re-plan this dataset (the plan was made for another one)")
    ignore = plan.get("ignore_label")
    if ignore != spec.ignore_label or isinstance(ignore, bool):
        said = "none" if spec.ignore_label is None else spec.ignore_label
        raise PlanError(f"plan ignore_label {ignore!r} differs from dataset.json's ignore label ({said})",
                        hint="re-plan this dataset (the plan was made for another one)")
    _validate_regions(plan, spec)
    n_classes = plan["n_classes"]
    if n_classes != spec.n_classes:
        raise PlanError(f"n_classes {n_classes!r} does not match the labels (max label value "
                        f"{spec.n_classes - 1} + 1 = {spec.n_classes})")
    n_ch = len(plan["channel_names"]) if isinstance(plan["channel_names"], (dict, list)) else -1
    if n_ch != spec.n_channels:
        raise PlanError(f"plan has {n_ch} channel(s), the dataset {spec.n_channels}",
                        hint="re-plan this dataset (the plan was made for another one)")
    norm = plan["normalization"]
    if not isinstance(norm, list) or len(norm) != spec.n_channels:
        raise PlanError(f"plan normalization has {len(norm) if isinstance(norm, list) else 'no'} entries, the "
                        f"dataset {spec.n_channels} channel(s)")
    weighter = (plan.get("training") or {}).get("class_weighter")
    if weighter and not spec.labels_contiguous:
        missing = sorted(set(range(spec.n_classes)) - set(spec.label_values))
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        name = weighter.get("name") if isinstance(weighter, dict) else weighter
        raise PlanError(f"class weighter {name!r} "
                        f"needs contiguous label values 0..{spec.n_classes - 1}; dataset.json declares "
                        f"{spec.label_values[:12]}{'...' if len(spec.label_values) > 12 else ''} "
                        f"(class indices {missing[:10]}{more} are never present)",
                        hint="relabel to consecutive values, or set training.class_weighter=null")


def region_fields(spec: DatasetSpec) -> dict:
    """The plan fields of a region-based dataset: ``regions`` (lists of label values), ``regions_class_order``
    and ``region_names`` (dataset.json's names, for reports). Empty for a dataset without regions."""
    if not spec.regions:
        return {}
    return {"regions": spec.region_list, "regions_class_order": list(spec.regions_class_order or ()),
            "region_names": list(spec.regions)}


def _validate_regions(plan: dict, spec: DatasetSpec) -> None:
    """A region plan must match dataset.json's regions, train with a region loss, and use no class weighter or
    cycle task (both work on softmax classes: refused rather than silently wrong)."""
    hint = "re-plan this dataset (the plan was made for another one)"
    want = region_fields(spec)
    for key in ("regions", "regions_class_order"):
        if plan.get(key) != want.get(key):
            said = "none" if want.get(key) is None else json_text(want[key])
            raise PlanError(f"plan {key} {json_text(plan.get(key))} differs from dataset.json's ({said})", hint=hint)
    if not spec.regions:
        return
    from focusseg.losses.regions import REGION_LOSSES

    tr = plan.get("training") or {}
    loss = tr.get("loss")
    if isinstance(loss, str):
        parts = [loss]
    elif isinstance(loss, dict) and "name" in loss:
        parts = [loss["name"]] if loss["name"] != "compound" else list(loss.get("parts") or [None])
    elif isinstance(loss, dict):
        parts = list(loss)
    else:
        parts = [None]
    parts = [p.get("name") if isinstance(p, dict) else p for p in parts]
    if not all(p in REGION_LOSSES for p in parts):
        raise PlanError(f"training.loss {json_text(loss)} is not a region loss; a region-based plan trains its "
                        f"sigmoid region outputs with {', '.join(REGION_LOSSES)}",
                        hint='set training.loss to {"name": "region_dice_bce"} (or re-plan)')
    if tr.get("class_weighter"):
        raise PlanError("training.class_weighter weights softmax classes; it does not apply to region-based "
                        "training", hint="set training.class_weighter=null")
    task = tr.get("task") or "supervised"
    if (task if isinstance(task, str) else task.get("name")) == "cycle":
        raise PlanError("the cycle task selects samples by softmax class counts; region-based training uses the "
                        "supervised task", hint="set training.task=supervised")


def json_text(value: Any) -> str:
    """``value`` as compact JSON text (for one-line errors)."""
    import json

    return json.dumps(value, separators=(",", ":"), default=str)


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base`` (nested dicts merge; anything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and v.get("_replace") is not True:
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy({kk: vv for kk, vv in v.items() if kk != "_replace"} if isinstance(v, dict) else v)
    return out


def parse_set(assignments: list[str]) -> dict:
    """``["training.batch_size=4", "patch_size=[32,32,32]"]`` -> nested override dict (values parsed as JSON
    when they parse, else kept as strings)."""
    import json

    out: dict = {}
    for a in assignments:
        if "=" not in a:
            raise ValueError(f"--set expects KEY=VALUE, got {a!r}")
        key, raw = a.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------------------------------------------
# CUDA profile: nnU-Net's per-axis topology and a GPU-memory budget
# --------------------------------------------------------------------------------------------------------------

#: GPU-memory targets (GB = 2**30 bytes) in the spirit of nnU-Net's residual-encoder presets
#: (nnU-Net docs, "Residual Encoder Presets": ResEnc M ~9-11 GB, L ~24 GB, XL ~40 GB; the planners'
#: ``gpu_memory_target_in_gb`` is 8 / 24 / 40). ``"whole"`` plans for the card's memory minus :func:`headroom_gb`.
GPU_PRESETS: dict[str, float] = {"m": 8.0, "l": 24.0, "xl": 40.0}
PRESET_NAMES = (*GPU_PRESETS, "whole")
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
#: Measured on the meta device (``nets.profile.estimate_activation_bytes``): 2.85 for the 6-stage 32-320 DynUNet.
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
      default target).
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


def match_deep_supervision(plan: dict) -> dict:
    """Make a DynUNet's number of deep-supervision outputs equal the number of nonzero deep-supervision weights
    (``training.deep_supervision.weights``: a list, trailing zeros dropped, or ``"nnunet"``, resolved as
    :func:`nnunet_deep_supervision`), so no zero-weight head is built; at most MONAI's ``n_stages - 2`` heads.
    Returns a new plan; other networks and plans without deep supervision are returned unchanged."""
    net = plan.get("network") or {}
    ds = (plan.get("training") or {}).get("deep_supervision")
    if net.get("name") != "dynunet" or not net.get("deep_supervision") or not ds:
        return plan
    out = copy.deepcopy(plan)
    n_stages = len(net["strides"]) if net.get("strides") else int(net.get("n_stages") or 5)
    weights = ds.get("weights", "nnunet") if isinstance(ds, dict) else "nnunet"
    if isinstance(weights, str):
        dsn, w = nnunet_deep_supervision(n_stages)
    else:
        w = [float(v) for v in weights]
        while w and w[-1] == 0:
            w.pop()
        if len(w) - 1 > max(0, n_stages - 2):
            raise PlanError(f"{len(w)} nonzero deep-supervision weights but a {n_stages}-stage DynUNet has at most "
                            f"{max(1, n_stages - 1)} outputs")
        dsn = max(0, len(w) - 1)
    if w is None or dsn == 0:
        out["network"]["deep_supervision"] = False
        out["network"].pop("deep_supr_num", None)
        out["training"]["deep_supervision"] = None
        return out
    out["network"]["deep_supr_num"] = dsn
    out["training"]["deep_supervision"] = {**(ds if isinstance(ds, dict) else {}), "weights": w}
    return out


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


# --------------------------------------------------------------------------------------------------------------
# The 2D configuration (nnU-Net's "2d"; issue 15 part 3)
# --------------------------------------------------------------------------------------------------------------

#: The configurations a plan can be: ``"3d"`` (the default, patches of the volume) or ``"2d"`` (slices).
CONFIGURATIONS = ("3d", "2d")
#: The 2D profile per device. CPU: the in-plane patch is the median in-plane shape capped at 512^2 pixels (a CT
#: slice fits whole), and a step processes about as many pixels as the 3D step's compute (``3 * 2 * 96^3``: a
#: 3x3 convolution costs a third of a 3x3x3 one per element), at most ``max_batch`` slices. CUDA: the GPU-memory
#: budget of :func:`plan_cuda_network` with nnU-Net's 2D initial patch (2048^2) and feature cap (512).
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
    """The 2D configuration of a 3D plan made by :func:`make_plan` (nnU-Net v2's ``2d`` configuration):

    * ``slice_axis`` = :func:`choose_slice_axis` of the target spacing; the store (preprocessing) is the 3D one,
      so the same preprocessed store serves both configurations (its key holds no patch or network). Reading
      chosen: the out-of-plane axis keeps the 3D target spacing (nnU-Net's 2D keeps each case's own slice
      spacing; on isotropic data both agree);
    * ``patch_size`` (2 values, the in-plane axes in increasing order): the median in-plane resampled shape,
      capped by the profile (:data:`PROFILES_2D`), rounded to the network's pooling; on CUDA the GPU-memory
      budget's patch, batch and per-axis DynUNet topology (:func:`plan_cuda_network` in 2D, features up to 512);
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
        amp = plan["training"].get("amp", "auto")
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
        n_pool = _n_pool(float(shrunk.min()), max_pool=prof["max_pool"])
        patch = [int(math.ceil(p / 2**n_pool) * 2**n_pool) for p in shrunk]
        batch = max(2, min(prof["step_pixels"] // int(np.prod(patch)), prof["max_batch"]))
        network = plan_network(PROFILES["cpu"], n_pool, False)
        out["training"]["deep_supervision"] = None
    out["configuration"], out["slice_axis"] = "2d", axis
    out["patch_size"], out["batch_size"], out["network"] = [int(p) for p in patch], int(batch), network
    rotation = ROTATION_2D[0] if max(patch) / min(patch) <= 1.5 else ROTATION_2D[1]
    aug = out["training"].get("augmentation", "nnunet")
    if isinstance(aug, str):
        aug = {"preset": aug}
    out["training"]["augmentation"] = {**aug, "rotation_deg": list(rotation)}
    out["inference"]["mirror_axes"] = [0, 1]
    out["inference"]["batch_size"] = int(min(batch, 64))
    return out


def plan_configuration(plan: dict, *layers: dict | None) -> dict:
    """``plan`` with the override ``layers`` (recipe form, ``--set``) merged in order, in the configuration they
    ask for: when they set ``configuration: "2d"`` on a 3D planner plan, the plan is first turned into its 2D
    configuration (:func:`plan_2d`) and the layers are merged on top of that, so a recipe's or the user's
    ``patch_size``, ``batch_size`` or ``network`` still win. A 2D plan cannot be turned back into a 3D one
    (:class:`PlanError`: plan again without the 2D configuration)."""
    merged = plan
    for layer in layers:
        merged = deep_merge(merged, layer or {})
    want, have = merged.get("configuration", "3d"), plan.get("configuration", "3d")
    if want not in CONFIGURATIONS:
        raise PlanError(f"configuration {want!r} is not one of {', '.join(CONFIGURATIONS)}")
    if want == have:
        return merged
    if want == "3d":
        raise PlanError("the plan is the 2d configuration; a 3d plan cannot be derived from it",
                        hint="plan the dataset again without --configuration 2d")
    out = plan_2d(plan)
    for layer in layers:
        out = deep_merge(out, layer or {})
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
    net = plan.get("network") or {}
    name = net if isinstance(net, str) else net.get("name")
    from focusseg.nets.base import network_info, network_names

    try:
        dims = network_info(str(name)).spatial_dims
    except KeyError:
        return  # an unknown network is reported where it is built
    if 2 not in dims:
        two_d = [n for n in network_names() if 2 in network_info(n).spatial_dims]
        raise PlanError(f"network {name!r} is 3D only; the 2d configuration needs a 2D network",
                        hint=f"--set network.name=... one of {', '.join(two_d)}")
