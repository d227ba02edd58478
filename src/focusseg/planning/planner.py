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
- normalisation: CT channels ``ct`` (clip to foreground 0.5/99.5 percentiles + z-score with foreground
  mean/std); others ``zscore`` per image, masked to the non-zero region when cropping removed >= 25 %.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from focusseg.errors import PlanError

if TYPE_CHECKING:
    from focusseg.io.dataset import DatasetSpec

PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {"voxel_budget": 96**3, "step_voxels": 2 * 96**3, "base_width": 16, "max_width": 256,
            "network": "unet", "amp": "bf16", "iterations_per_epoch": 100},
    "cuda": {"voxel_budget": 128**3, "step_voxels": 2 * 128**3, "base_width": 32, "max_width": 320,
             "network": "dynunet", "amp": "fp16", "iterations_per_epoch": 250},
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


def make_plan(fp: dict, device: str = "cpu", overrides: dict | None = None) -> dict:
    """A complete, human-readable plan; ``overrides`` is a nested dict merged last (every field overridable)."""
    profile = PROFILES["cuda" if device.startswith("cuda") else "cpu"]
    spacing = target_spacing(fp)
    scale = _positive_vector(fp, "median_spacing") / np.array(spacing)
    shape_after_crop = _positive_vector(fp, "median_shape_after_crop", allow_zero=True)
    if shape_after_crop.shape != scale.shape:
        raise PlanError(f"fingerprint: median_shape_after_crop has {shape_after_crop.size} axes, median_spacing "
                        f"{scale.size}")
    if not isinstance(fp.get("n_cases"), int) or fp["n_cases"] < 1:
        raise PlanError(f"fingerprint field 'n_cases' = {fp.get('n_cases')!r} must be a positive integer")
    median_shape = (shape_after_crop * scale).tolist()
    patch, n_pool = plan_patch(median_shape, profile["voxel_budget"])
    patch_vox = int(np.prod(patch))
    dataset_vox = float(np.prod(median_shape)) * fp["n_cases"]
    batch = max(2, min(profile["step_voxels"] // patch_vox, int(0.05 * dataset_vox // patch_vox)))
    mask_norm = fp.get("median_crop_fraction", 1.0) < 0.75
    norm = []
    for ch in fp["intensity"]:
        if ch["channel"].strip().upper() == "CT":
            norm.append({"scheme": "ct", "clip": [ch["percentile_00_5"], ch["percentile_99_5"]],
                         "mean": ch["mean"], "std": ch["std"]})
        else:
            norm.append({"scheme": "zscore", "use_mask": mask_norm})
    labels = {str(k): int(v) for k, v in fp["labels"].items()}
    n_classes = max(labels.values()) + 1
    deep_supervision = profile["network"] == "dynunet"
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
        "network": plan_network(profile, n_pool, deep_supervision),
        "training": {
            "loss": {"ce": 1.0, "soft_dice": 1.0},
            "deep_supervision": {"weights": "nnunet"} if deep_supervision else None,
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5},
            "lr_schedule": {"name": "poly", "exponent": 0.9},
            "grad_clip": 12.0,
            "max_epochs": 1000,
            "iterations_per_epoch": profile["iterations_per_epoch"],
            "foreground_oversampling": 0.33,
            "augmentation": "nnunet",
            "amp": profile["amp"],
            "val_every": 1,
            "val_max_cases": None,
            "sampler": {"name": "foreground"},
            "class_weighter": None,
            "seed": 0,
        },
        "inference": {"overlap": 0.5, "mirror_axes": [0, 1, 2], "batch_size": 2},
    }
    if overrides:
        plan = deep_merge(plan, overrides)
    return plan


def validate_plan(plan: dict, spec: DatasetSpec) -> None:
    """Refuse (:class:`PlanError`) a plan that cannot work on the dataset ``spec`` describes, before any work:
    a patch that is not 2 or 3 positive integers, a non-positive batch size or target spacing, ``n_classes`` or
    label values that differ from ``dataset.json``'s, a channel count (``channel_names``, ``normalization``)
    that differs from the dataset's, and a class weighter (TCF/PCF/CBS weight every class index
    ``0..n_classes-1``) with non-contiguous label values such as {0, 1, 3}."""
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
    if plan_values != spec.label_values:
        raise PlanError(f"plan label values {plan_values} differ from dataset.json's {spec.label_values}",
                        hint="re-plan this dataset (the plan was made for another one)")
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
