"""Fingerprint -> plan: target spacing, patch and batch size, normalisation, network, training defaults.

nnU-Net's rules where they carry over, plus a **device profile**: nnU-Net assumes a GPU with ~8 GB. The CPU
profile bounds the voxels processed per step instead (CPU 96^3, CUDA 128^3 per patch) and picks a narrow MONAI
UNet (width 16); the CUDA profile fits patch and batch to a GPU-memory budget (:mod:`focusseg.planning.topology`).
:func:`make_plan` writes the plan, :func:`plan_configuration` merges recipe and ``--set`` layers in the
configuration they ask for (:mod:`focusseg.planning.twod`), :func:`match_deep_supervision` fits the network's
heads to the loss weights and :func:`validate_plan` refuses a plan that cannot work on a dataset.

Target spacing, patch, batch, normalisation, labels (the ignore label gets no output channel) and regions follow
the rules in ``docs/planning.md``. A plan without regions keeps its form (and its hash).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from focusseg.errors import PlanError, UsageError
from focusseg.io.dataset import split_ignore_label
from focusseg.io.jsonfile import loads_bounded
from focusseg.losses.regions import REGION_LOSSES
from focusseg.planning.resenc import RESENC_PRESETS, focusseg_resenc, preset_of
from focusseg.planning.topology import (
    PROFILES,
    gpu_budget,
    nnunet_deep_supervision,
    plan_cuda_network,
    plan_network,
    plan_patch,
)
from focusseg.planning.twod import CONFIGURATIONS, ROTATION_2D, check_configuration, plan_2d
from focusseg.settings import network_settings, parse_plan_settings, training_settings

if TYPE_CHECKING:
    from focusseg.io.dataset import DatasetSpec


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


def make_plan(fp: dict, device: str = "cpu", overrides: dict | None = None, gpu_memory_gb: float | None = None,
              preset: str | None = None, configuration: str = "3d", spec: DatasetSpec | None = None) -> dict:
    """A complete, human-readable plan; ``overrides`` is a nested dict merged last (every field overridable).

    ``device="cuda"`` plans for a GPU budget (:func:`~focusseg.planning.topology.gpu_budget`: ``preset``
    m / l / xl / whole and the card's ``gpu_memory_gb``; default the visible card minus headroom, or the M preset's
    8 GB when none is visible): patch, batch and a per-axis DynUNet topology from
    :func:`~focusseg.planning.topology.plan_cuda_network`; the plan records ``gpu_memory_gb`` (the budget),
    ``preset`` and ``memory_estimate_gb``. The CPU plan ignores both arguments.
    ``configuration="2d"``: nnU-Net's 2D configuration of the same data (:func:`~focusseg.planning.twod.plan_2d`).
    ``preset`` ``resenc-m`` / ``resenc-l`` / ``resenc-xl`` (cpu and cuda alike): nnU-Net's own Residual Encoder plan
    (:mod:`focusseg.planning.resenc`): its target spacing, patch, batch and network (``network.name`` ``"nnunet"``
    with nnU-Net's plans.json architecture and ``input_axes``, the focusseg axis each network axis reads), deep
    supervision with nnU-Net's weights; channels, labels, normalisation and training defaults as for the device.
    ``spec``: the dataset's :class:`~focusseg.io.dataset.DatasetSpec`, needed only for region-based labels (the
    fingerprint does not carry them): its regions go into the plan (:func:`region_fields`).

    Args:
        fp: the dataset fingerprint (:func:`focusseg.planning.fingerprint.compute_fingerprint`).
        device: ``"cpu"`` or ``"cuda"`` (any ``"cuda..."``): which device profile to plan for.
        overrides: nested plan fields merged last.
        gpu_memory_gb: the GPU-memory budget (CUDA only).
        preset: ``m`` / ``l`` / ``xl`` / ``whole`` (CUDA only), or ``resenc-m`` / ``resenc-l`` / ``resenc-xl``.
        configuration: ``"3d"`` or ``"2d"``.
        spec: the dataset's spec, for region-based labels.

    Returns:
        The plan, a JSON-serialisable dict.

    Raises:
        PlanError: for a malformed fingerprint, an unknown configuration or preset, or a non-positive
            ``gpu_memory_gb``; overrides are merged unchecked (:func:`validate_plan` checks the result).
    """
    cuda = device.startswith("cuda")
    profile = PROFILES["cuda" if cuda else "cpu"]
    resenc = preset_of(preset)
    rs: dict[str, Any] = {}
    if resenc is not None:
        if cuda:
            gpu_budget(gpu_memory_gb, resenc.name, device)  # refuses a card smaller than the preset's target
        if configuration not in CONFIGURATIONS:
            raise PlanError(f"configuration {configuration!r} is not one of {', '.join(CONFIGURATIONS)}")
        rs = focusseg_resenc(fp, resenc.name, "2d" if configuration == "2d" else "3d_fullres")
        budget = None
        spacing = [float(s) for s in rs["target_spacing"]]
    else:
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
    if resenc is not None:
        patch, batch = rs["patch_size"], rs["batch_size"]
        arch = rs["architecture"]
        network = {"name": "nnunet", "network_class_name": arch["network_class_name"],
                   "arch_kwargs": arch["arch_kwargs"], "_kw_requires_import": arch["_kw_requires_import"],
                   "input_axes": rs["input_axes"], "deep_supervision": True}
        ds_weights = None
    elif budget is None:
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
    if resenc is not None:  # nnU-Net trains every decoder output: 2^-i weights, the lowest one 0
        deep_supervision: Any = {"weights": "nnunet"}
    elif budget is None:
        deep_supervision = {"weights": "nnunet"} if profile["network"] == "dynunet" else None
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
            "channels_last": profile["channels_last"],
            "compile": False,
            "seed": 0,
        },
        "inference": {"overlap": 0.5, "mirror_axes": [0, 1, 2], "batch_size": 2},
    }
    if profile["accelerate"] != "none":  # only then: a GPU plan keeps its form
        plan["inference"]["accelerate"] = profile["accelerate"]
    if ignore_label is not None:  # only then: a plan without one keeps its form (and its hash)
        plan["ignore_label"] = ignore_label
    if spec is not None and spec.regions:  # only then (region-based training, focusseg.regions)
        plan.update(region_fields(spec))
        plan["training"]["loss"] = {"name": "region_dice_bce", "batch": True}
    if budget is not None:
        plan["gpu_memory_gb"], plan["preset"] = budget[0], budget[1]
        plan["memory_estimate_gb"] = round(gpu["estimate"]["total_gb"], 3)
    if resenc is not None:
        plan["gpu_memory_gb"], plan["preset"] = resenc.gpu_memory_gb, resenc.name
        plan["nnunet_planner"] = {"planner": rs["planner"],
                                  "configuration": "2d" if configuration == "2d" else "3d_fullres",
                                  "transpose_forward": rs["transpose_forward"]}
        plan["resample_separate_z"] = {"threshold": 3.0, "order": 0}  # nnU-Net's resampling of anisotropic cases
        if configuration == "2d":
            plan = resenc_2d(plan, rs)
    elif configuration == "2d":
        plan = plan_2d(plan)
    elif configuration != "3d":
        raise PlanError(f"configuration {configuration!r} is not one of {', '.join(CONFIGURATIONS)}")
    if overrides:
        plan = deep_merge(plan, overrides)
    return plan


def resenc_2d(plan: dict, rs: dict) -> dict:
    """A ResEnc plan (made with the 2D configuration's patch, batch and network) made nnU-Net's 2D configuration
    ``rs`` (:func:`~focusseg.planning.resenc.focusseg_resenc`): its slice axis, with the 2D fields
    :func:`~focusseg.planning.twod.plan_2d` sets (nnU-Net's 2D rotation range, mirroring on the two in-plane axes,
    slice batches for inference)."""
    out = copy.deepcopy(plan)
    patch = [int(p) for p in rs["patch_size"]]
    out["configuration"], out["slice_axis"] = "2d", int(rs["slice_axis"])
    out["patch_size"] = patch
    rotation = ROTATION_2D[0] if max(patch) / min(patch) <= 1.5 else ROTATION_2D[1]
    aug = training_settings(out).augmentation_options()
    out["training"]["augmentation"] = {**aug, "rotation_deg": list(rotation)}
    out["inference"]["mirror_axes"] = [0, 1]
    out["inference"]["batch_size"] = int(min(int(out["batch_size"]), 64))
    return out


def validate_plan(plan: dict, spec: DatasetSpec) -> None:
    """Refuse (:class:`PlanError`) a plan that cannot work on the dataset ``spec`` describes, before any work:
    a patch that is not 2 or 3 positive integers, a non-positive batch size or target spacing, ``n_classes`` or
    label values that differ from ``dataset.json``'s, a channel count (``channel_names``, ``normalization``)
    that differs from the dataset's, and a class weighter (TCF/PCF/CBS weight every class index
    ``0..n_classes-1``) with non-contiguous label values such as {0, 1, 3}. The plan's ``labels`` are the
    classes (dataset.json's labels without the ignore label); ``ignore_label`` must be dataset.json's ignore
    label value (absent when it declares none). Last, the ``training``, ``inference`` and ``network`` sections and
    the plan's cost bounds (:func:`focusseg.settings.parse_plan_settings`)."""
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
    weighter = training_settings(plan).class_weighter
    if weighter is not None and not spec.labels_contiguous:
        missing = sorted(set(range(spec.n_classes)) - set(spec.label_values))
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        name = weighter.name
        raise PlanError(f"class weighter {name!r} "
                        f"needs contiguous label values 0..{spec.n_classes - 1}; dataset.json declares "
                        f"{spec.label_values[:12]}{'...' if len(spec.label_values) > 12 else ''} "
                        f"(class indices {missing[:10]}{more} are never present)",
                        hint="relabel to consecutive values, or set training.class_weighter=null")
    parse_plan_settings(plan)  # the sections' types, ranges and known keys, and the plan's cost bounds


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
    tr = training_settings(plan)
    loss = tr.loss
    if loss is None:
        parts: list[Any] = [None]
    elif loss.name is None:  # a compound mapping of parts
        parts = list(loss.kwargs)
    else:
        parts = [loss.name] if loss.name != "compound" else list(loss.get("parts") or [None])
    parts = [p.get("name") if isinstance(p, dict) else p for p in parts]
    if not all(p in REGION_LOSSES for p in parts):
        raise PlanError(f"training.loss {json_text(None if loss is None else loss.to_value())} is not a region "
                        "loss; a region-based plan trains its "
                        f"sigmoid region outputs with {', '.join(REGION_LOSSES)}",
                        hint='set training.loss to {"name": "region_dice_bce"} (or re-plan)')
    if tr.class_weighter is not None:
        raise PlanError("training.class_weighter weights softmax classes; it does not apply to region-based "
                        "training", hint="set training.class_weighter=null")
    if tr.task_name == "cycle":
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
    when they parse within :func:`~focusseg.io.jsonfile.loads_bounded`'s bounds, else kept as strings, which the
    plan's checks then refuse where a number or list is expected)."""
    out: dict = {}
    for a in assignments:
        if "=" not in a:
            raise ValueError(f"--set expects KEY=VALUE, got {a!r}")
        key, raw = a.split("=", 1)
        try:
            value = loads_bounded(raw, None, UsageError)
        except UsageError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def match_deep_supervision(plan: dict) -> dict:
    """Make a DynUNet's number of deep-supervision outputs equal the number of nonzero deep-supervision weights
    (``training.deep_supervision.weights``: a list, trailing zeros dropped, or ``"nnunet"``, resolved as
    :func:`~focusseg.planning.topology.nnunet_deep_supervision`), so no zero-weight head is built; at most MONAI's
    ``n_stages - 2`` heads. Returns a new plan; other networks and plans without deep supervision are returned
    unchanged."""
    net = network_settings(plan)
    ds = training_settings(plan).deep_supervision_kwargs()
    if net is None or net.name != "dynunet" or not net.deep_supervision or not ds:
        return plan
    out = copy.deepcopy(plan)
    n_stages = len(net.get("strides")) if net.get("strides") else int(net.get("n_stages") or 5)
    weights = ds.get("weights", "nnunet")
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
    out["training"]["deep_supervision"] = {**ds, "weights": w}
    return out


def plan_configuration(plan: dict, *layers: dict | None) -> dict:
    """``plan`` with the override ``layers`` (recipe form, ``--set``) merged in order, in the configuration they
    ask for: when they set ``configuration: "2d"`` on a 3D planner plan, the plan is first turned into its 2D
    configuration (:func:`~focusseg.planning.twod.plan_2d`) and the layers are merged on top of that, so a
    recipe's or the user's ``patch_size``, ``batch_size`` or ``network`` still win. A 2D plan cannot be turned back
    into a 3D one (:class:`PlanError`: plan again without the 2D configuration)."""
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
    if plan.get("preset") in RESENC_PRESETS:
        raise PlanError(f"the {plan['preset']} plan is nnU-Net's 3d_fullres configuration; its 2d configuration "
                        "is planned from the fingerprint", hint="plan the dataset again with --configuration 2d")
    out = plan_2d(plan)
    for layer in layers:
        out = deep_merge(out, layer or {})
    return out
