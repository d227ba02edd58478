"""focusseg runs written back as nnU-Net v2 model folders (``focusseg export RUN --format nnunet --out FOLDER``).

A run can be exported when its plan's network is ``"nnunet"`` (trained on ``--nnunet-plans``, a ``resenc-*``
preset, or fine-tuned from an nnU-Net model folder): the network is then nnU-Net's own class with nnU-Net's
parameter names, and everything around it has an nnU-Net equivalent. :func:`nnunet_plans` reconstructs plans.json
(one configuration: nnU-Net's configuration fields, the architecture, the axis transposition, the per-channel
normalisation and its statistics) and dataset.json from the focusseg plan -- starting from the original plans
fields where the plan was converted from nnU-Net's plans (its ``"nnunet"`` provenance keeps them) -- and
:func:`checkpoint_payload` the ``checkpoint_final.pth`` content nnU-Net's predictor reads, holding only plain
dicts, lists, tuples, ints, floats, strings and tensors.

Refused in one line (:class:`~focusseg.errors.UsageError`): another network, a normalisation with no nnU-Net
scheme computing the same numbers (``quantile`` other than min-max, ``zscore`` over a mask without its holes
filled), a 2D plan.

Axes: focusseg's array axis ``a`` is nnU-Net's axis ``2 - a`` (reversed); the network's ``input_axes[n]`` (the
focusseg axis network axis ``n`` reads) gives ``transpose_forward[n] = 2 - input_axes[n]``, so spacing and patch
(listed per network axis in nnU-Net's plans) are the focusseg values in ``input_axes`` order.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from focusseg.errors import UsageError
from focusseg.nets.nnunet_dna import (
    CLASS_PATHS,
    architecture_spec,
    check_architecture,
    check_input_axes,
    default_arch_kwargs,
)

#: The trainer an exported checkpoint names (its network is the plans' network, built as nnU-Net builds it).
TRAINER = "nnUNetTrainer"
#: The plans identifier written when the plan carries none.
PLANS_NAME = "nnUNetPlans"
#: nnU-Net's resampling function (the one every default configuration names).
RESAMPLING_FN = "resample_data_or_seg_to_shape"
#: focusseg's file ending when the plan records none.
FILE_ENDING = ".nii.gz"


def _refuse(source: str | Path, why: str) -> UsageError:
    return UsageError(f"cannot be exported as an nnU-Net model folder: {why}", source)


def network_architecture(plan: Mapping[str, Any], source: str | Path) -> tuple[dict[str, Any], list[int]]:
    """The plan's ``"nnunet"`` network as nnU-Net's ``architecture`` object and its ``input_axes``.

    Raises:
        UsageError: the plan's network is not ``"nnunet"``, or is 2D.
        PlanError: an architecture the checks refuse.
    """
    net = plan.get("network")
    name = net.get("name") if isinstance(net, Mapping) else net
    if name != "nnunet":
        raise _refuse(source, f"its network is {name!r}; only runs whose network is \"nnunet\" (trained with "
                              "--nnunet-plans, a resenc-* preset, or from an nnU-Net model) have nnU-Net's network")
    dim = len(plan["patch_size"])
    if dim != 3:
        raise _refuse(source, "a 2D plan (nnU-Net's 2d keeps each case's own spacing along the slice axis)")
    cls_name, kwargs = net.get("network_class_name"), net.get("arch_kwargs")
    required = net.get("_kw_requires_import")
    if cls_name is None and kwargs is None:
        cls_name, kwargs, required = CLASS_PATHS["PlainConvUNet"], default_arch_kwargs(dim), ["conv_op", "norm_op",
                                                                                             "nonlin"]
    arch = {"network_class_name": cls_name, "arch_kwargs": kwargs, "_kw_requires_import": required or []}
    cls, checked = check_architecture(arch, dim, None, source, "network")
    axes = list(check_input_axes(net.get("input_axes"), dim, source))
    return architecture_spec(cls, checked), axes


def normalization(plan: Mapping[str, Any], original: Mapping[str, Any] | None, source: str | Path
                  ) -> tuple[list[str], list[bool], dict[str, dict[str, float]]]:
    """Per channel: nnU-Net's scheme computing what the plan's scheme computes, ``use_mask_for_norm``, and the
    foreground statistics (CT's from the plan; the original plans' entry for the other schemes, else empty).

    Raises:
        UsageError: a scheme nnU-Net has no equivalent for.
    """
    schemes, masks, props = [], [], {}
    old_props = (original or {}).get("foreground_intensity_properties_per_channel") or {}
    for c, s in enumerate(plan["normalization"]):
        kind = s.get("scheme")
        stats = dict(old_props.get(str(c), {}))
        if kind == "ct":
            lo, hi = (float(v) for v in s["clip"])
            stats.update({"mean": float(s["mean"]), "std": float(s["std"]), "percentile_00_5": lo,
                          "percentile_99_5": hi})
            schemes.append("CTNormalization")
            masks.append(False)
        elif kind == "zscore":
            use_mask = bool(s.get("use_mask", False))
            if use_mask and not s.get("fill_holes"):
                raise _refuse(source, f"channel {c}'s zscore over the non-zero mask without its holes filled has no "
                                      "nnU-Net equivalent (nnU-Net's mask is filled)")
            schemes.append("ZScoreNormalization")
            masks.append(use_mask)
        elif kind == "none":
            schemes.append("NoNormalization")
            masks.append(False)
        elif kind == "quantile" and float(s.get("lower", 0.01)) == 0.0 and float(s.get("upper", 0.99)) == 1.0:
            schemes.append("RescaleTo01Normalization")
            masks.append(False)
        else:
            raise _refuse(source, f"channel {c}'s normalisation {dict(s)} has no nnU-Net equivalent (ct, zscore, "
                                  "none and min-max quantile have)")
        props[str(c)] = stats
    return schemes, masks, props


def dataset_json(plan: Mapping[str, Any]) -> dict[str, Any]:
    """nnU-Net's dataset.json for the plan: channels, labels (region-based: each region's label values, with
    ``regions_class_order``), the ignore label, the file ending."""
    provenance = plan.get("nnunet") or {}
    out: dict[str, Any] = {"channel_names": {str(k): str(v) for k, v in plan["channel_names"].items()}}
    regions = plan.get("regions")
    if regions:
        names = plan.get("region_names") or [f"region_{i + 1}" for i in range(len(regions))]
        background = next((n for n, v in plan["labels"].items() if int(v) == 0), "background")
        labels: dict[str, Any] = {background: 0}
        for name, region in zip(names, regions):
            labels[str(name)] = [int(v) for v in region] if len(region) > 1 else int(region[0])
        out["labels"] = labels
        out["regions_class_order"] = [int(v) for v in plan["regions_class_order"]]
    else:
        out["labels"] = {str(k): int(v) for k, v in plan["labels"].items()}
    if plan.get("ignore_label") is not None:
        out["labels"]["ignore"] = int(plan["ignore_label"])
    out["file_ending"] = str(provenance.get("file_ending") or plan.get("file_ending") or FILE_ENDING)
    return out


def separate_z_kwargs(plan: Mapping[str, Any]) -> dict[str, Any]:
    """nnU-Net's resampling arguments for the plan's ``resample_separate_z``: decided per case above its threshold
    (``force_separate_z`` None, ``order_z``), or never (``force_separate_z`` False) for a plan without it, which
    resamples every axis alike; a threshold of 1 is nnU-Net's ``force_separate_z`` True."""
    spec = plan.get("resample_separate_z")
    if spec is None:
        return {"force_separate_z": False, "order_z": 0}
    threshold = float(spec.get("threshold", 3.0))
    if threshold <= 1.0:
        return {"force_separate_z": True, "order_z": int(spec.get("order", 0))}
    return {"force_separate_z": None, "order_z": int(spec.get("order", 0)),
            "separate_z_anisotropy_threshold": threshold}


def nnunet_plans(plan: Mapping[str, Any], source: str | Path) -> tuple[dict[str, Any], str, list[int]]:
    """plans.json for the focusseg plan (module docstring): ``(plans, configuration name, input_axes)``.

    Raises:
        UsageError: a plan that cannot be exported (module docstring).
        PlanError: an architecture the checks refuse.
    """
    architecture, axes = network_architecture(plan, source)
    provenance = plan.get("nnunet") if isinstance(plan.get("nnunet"), Mapping) else {}
    original = provenance.get("plans") if isinstance(provenance.get("plans"), Mapping) else None
    configuration = str(provenance.get("configuration") or "3d_fullres")
    schemes, masks, props = normalization(plan, original, source)
    forward = [2 - a for a in axes]
    backward = [forward.index(i) for i in range(3)]
    spacing = [float(plan["target_spacing"][a]) for a in axes]
    patch = [int(plan["patch_size"][a]) for a in axes]
    order = int(plan.get("resample_order_image", 3))
    separate = separate_z_kwargs(plan)
    base = copy.deepcopy(dict(original)) if original is not None else {}
    old_cfg = dict((base.get("configurations") or {}).get(configuration) or {})
    cfg: dict[str, Any] = {
        "data_identifier": old_cfg.get("data_identifier", f"{PLANS_NAME}_{configuration}"),
        "preprocessor_name": old_cfg.get("preprocessor_name", "DefaultPreprocessor"),
        "batch_size": int(plan["batch_size"]),
        "patch_size": patch,
        "median_image_size_in_voxels": old_cfg.get("median_image_size_in_voxels", [float(p) for p in patch]),
        "spacing": spacing,
        "normalization_schemes": schemes,
        "use_mask_for_norm": masks,
        "resampling_fn_data": old_cfg.get("resampling_fn_data", RESAMPLING_FN),
        "resampling_fn_data_kwargs": {**old_cfg.get("resampling_fn_data_kwargs", {"is_seg": False}), "order": order,
                                      **separate},
        "resampling_fn_seg": old_cfg.get("resampling_fn_seg", RESAMPLING_FN),
        "resampling_fn_seg_kwargs": {**old_cfg.get("resampling_fn_seg_kwargs", {"is_seg": True, "order": 1}),
                                     **separate},
        "resampling_fn_probabilities": old_cfg.get("resampling_fn_probabilities", RESAMPLING_FN),
        "resampling_fn_probabilities_kwargs": {**old_cfg.get("resampling_fn_probabilities_kwargs", {
            "is_seg": False, "order": 1}), **separate},
        "architecture": architecture,
        "batch_dice": bool(old_cfg.get("batch_dice", False)),
    }
    same_axes = base.get("transpose_forward") == forward
    plans: dict[str, Any] = {
        "dataset_name": str(base.get("dataset_name") or plan.get("dataset") or "focusseg"),
        "plans_name": str(base.get("plans_name") or provenance.get("plans_name") or PLANS_NAME),
        "original_median_spacing_after_transp": (base["original_median_spacing_after_transp"] if same_axes and
                                                 "original_median_spacing_after_transp" in base else spacing),
        "original_median_shape_after_transp": (base["original_median_shape_after_transp"] if same_axes and
                                               "original_median_shape_after_transp" in base
                                               else cfg["median_image_size_in_voxels"]),
        "image_reader_writer": str(base.get("image_reader_writer") or "SimpleITKIO"),
        "transpose_forward": forward,
        "transpose_backward": backward,
        "configurations": {configuration: cfg},
        "experiment_planner_used": str(base.get("experiment_planner_used") or "ExperimentPlanner"),
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": props,
    }
    return plans, configuration, axes


def mirror_axes(plan: Mapping[str, Any], axes: Sequence[int]) -> tuple[int, ...]:
    """The plan's test-time mirror axes (focusseg axes) as nnU-Net's network axes, a sorted tuple of ints."""
    mirrored = {int(a) for a in (plan.get("inference") or {}).get("mirror_axes", range(len(axes)))}
    return tuple(n for n, a in enumerate(axes) if a in mirrored)


def checkpoint_payload(weights: Mapping[str, torch.Tensor], plans: Mapping[str, Any], configuration: str,
                       fold: int | str, dataset: Mapping[str, Any], mirror: Sequence[int],
                       epoch: int = 0) -> dict[str, Any]:
    """What nnU-Net's predictor reads from ``fold_K/checkpoint_final.pth``: the network weights (contiguous CPU
    tensors, nnU-Net's names), ``init_args`` (plans, configuration, fold, dataset.json), the trainer's name and
    the mirroring axes; no optimizer or grad-scaler state, empty logging. Only plain types and tensors."""
    state = {str(k): v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
    return {
        "network_weights": state,
        "optimizer_state": None,
        "grad_scaler_state": None,
        "logging": {},
        "_best_ema": None,
        "current_epoch": int(epoch),
        "init_args": {"plans": copy.deepcopy(dict(plans)), "configuration": str(configuration),
                      "fold": fold if fold == "all" else int(fold), "dataset_json": copy.deepcopy(dict(dataset))},
        "trainer_name": TRAINER,
        "inference_allowed_mirroring_axes": tuple(int(a) for a in mirror),
    }


__all__ = ["FILE_ENDING", "PLANS_NAME", "RESAMPLING_FN", "TRAINER", "checkpoint_payload", "dataset_json",
           "mirror_axes", "network_architecture", "nnunet_plans", "normalization"]
