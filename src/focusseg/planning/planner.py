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
from typing import Any

import numpy as np

PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {"voxel_budget": 96**3, "step_voxels": 2 * 96**3, "base_width": 16, "max_width": 256,
            "network": "unet", "amp": "bf16", "iterations_per_epoch": 100},
    "cuda": {"voxel_budget": 128**3, "step_voxels": 2 * 128**3, "base_width": 32, "max_width": 320,
             "network": "dynunet", "amp": "fp16", "iterations_per_epoch": 250},
}


def target_spacing(fp: dict) -> list[float]:
    spacing = np.array(fp["median_spacing"], dtype=float)
    shape = np.array(fp["median_shape_after_crop"], dtype=float) * np.array(fp["median_spacing"]) / spacing
    worst = int(np.argmax(spacing))
    others = [i for i in range(len(spacing)) if i != worst]
    aniso_spacing = spacing[worst] > 3 * spacing.min()
    aniso_voxels = shape[worst] * 3 < shape[others].min()
    if aniso_spacing and aniso_voxels:
        p10 = float(fp["spacing_percentile_10"][worst])
        spacing[worst] = max(p10, spacing[others].max() + 1e-5)
    return [float(s) for s in spacing]


def _n_pool(size: float, max_pool: int = 5, min_feature: int = 4) -> int:
    return int(max(0, min(max_pool, math.floor(math.log2(max(size, 1) / min_feature)))))


def plan_patch(median_shape: list[float], voxel_budget: int) -> tuple[list[int], int]:
    """Patch size (multiple of 2**n_pool) and n_pool from the median shape and a voxel budget."""
    patch = np.array([max(8.0, s) for s in median_shape], dtype=float)
    while np.prod(patch) > voxel_budget:
        rel = patch / np.array(median_shape)
        ax = int(np.argmax(rel if rel.max() > 1 else patch))
        patch[ax] = max(8.0, patch[ax] * 0.9)
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
    scale = np.array(fp["median_spacing"]) / np.array(spacing)
    median_shape = (np.array(fp["median_shape_after_crop"]) * scale).tolist()
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
