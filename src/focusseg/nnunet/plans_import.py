"""Train focusseg on nnU-Net's own plans: ``--nnunet-plans nnUNetPlans.json --configuration 3d_fullres``.

:func:`plan_from_plans` reads an nnU-Net plans file and the dataset's ``dataset.json`` (both bounded, no NaN, every
field checked as a model folder's are: :func:`focusseg.nnunet.model_folder.read_plans`) and writes the complete
focusseg plan the same converter gives a model folder (:func:`focusseg.nnunet.convert.plan_from_nnunet`): target
spacing, patch, batch size, normalisation, the network ``"nnunet"`` with the configuration's architecture, nnU-Net's
training recipe. The plan keeps where it came from under ``"nnunet"`` -- the plans file's name, the configuration,
the dataset's file ending and the plans fields nnU-Net's predictor reads (:data:`KEPT_PLANS_KEYS`,
:data:`KEPT_CONFIGURATION_KEYS`) -- so that ``focusseg export --format nnunet`` can write those plans back.

Single-stage 3D configurations only: ``3d_fullres`` and ``3d_lowres`` (trained as a plain configuration, without
the cascade); a cascade stage and a 2D configuration are refused in one line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from focusseg.errors import PlanError, UsageError
from focusseg.io.jsonfile import read_json
from focusseg.nnunet.convert import plan_from_nnunet
from focusseg.nnunet.model_folder import MAX_JSON_BYTES, read_plans, resolve_configuration
from focusseg.settings.checks import check_bool, check_float, check_int, check_mapping, fail

#: The trainer whose recipe the imported plan trains with (and whose name an export writes).
TRAINER = "nnUNetTrainer"
#: Plans-level fields kept in the focusseg plan's provenance (what nnU-Net's PlansManager reads).
KEPT_PLANS_KEYS = ("dataset_name", "plans_name", "original_median_spacing_after_transp",
                   "original_median_shape_after_transp", "image_reader_writer", "transpose_forward",
                   "transpose_backward", "experiment_planner_used", "label_manager",
                   "foreground_intensity_properties_per_channel")
#: Configuration fields kept (what nnU-Net's ConfigurationManager reads).
KEPT_CONFIGURATION_KEYS = ("data_identifier", "preprocessor_name", "batch_size", "patch_size",
                           "median_image_size_in_voxels", "spacing", "normalization_schemes", "use_mask_for_norm",
                           "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_seg",
                           "resampling_fn_seg_kwargs", "resampling_fn_probabilities",
                           "resampling_fn_probabilities_kwargs", "architecture", "batch_dice")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")
_CONFIGURATION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}")


def _numbers(v: Any, path: str, src: Path) -> list[float]:
    if not isinstance(v, list) or not 1 <= len(v) <= 3:
        fail(src, path, v, "must be a list of 1 to 3 numbers")
    return [check_float(x, f"{path}[{i}]", src, 0.0, 1e9) for i, x in enumerate(v)]


def kept_plans(plans: Mapping[str, Any], configuration: str, src: Path) -> dict[str, Any]:
    """The plans fields nnU-Net's predictor reads, for ``configuration`` only (its ``inherits_from`` chain
    resolved), each of a checked type: the provenance an export writes back.

    Raises:
        PlanError: a kept field of the wrong type (one line naming the file and the field).
    """
    out: dict[str, Any] = {}
    for key in KEPT_PLANS_KEYS:
        if key not in plans:
            continue
        v = plans[key]
        if key in ("dataset_name", "plans_name", "image_reader_writer", "experiment_planner_used", "label_manager"):
            if not isinstance(v, str) or not _NAME.fullmatch(v):
                fail(src, key, v, "must be a name (letters, digits, '_', '-', '.')")
            out[key] = v
        elif key in ("original_median_spacing_after_transp", "original_median_shape_after_transp"):
            out[key] = _numbers(v, key, src)
        elif key in ("transpose_forward", "transpose_backward"):
            out[key] = [check_int(a, f"{key}[{i}]", src, 0, 2) for i, a in enumerate(v)]  # read_plans: a list
        else:
            props = check_mapping(v, key, src)
            out[key] = {str(ch): {k: check_float(x, f"{key}.{ch}.{k}", src, -1e12, 1e12)
                                  for k, x in check_mapping(stats, f"{key}.{ch}", src).items()}
                        for ch, stats in props.items()}
    cfg = resolve_configuration(check_mapping(plans.get("configurations"), "configurations", src), configuration, src)
    where = f"configurations.{configuration}"
    kept: dict[str, Any] = {}
    for key in KEPT_CONFIGURATION_KEYS:
        if key not in cfg:
            continue
        v = cfg[key]
        if key in ("data_identifier", "preprocessor_name", "resampling_fn_data", "resampling_fn_seg",
                   "resampling_fn_probabilities"):
            if not isinstance(v, str) or not _NAME.fullmatch(v):
                fail(src, f"{where}.{key}", v, "must be a name (letters, digits, '_', '-', '.')")
        elif key == "median_image_size_in_voxels":
            v = _numbers(v, f"{where}.{key}", src)
        elif key == "batch_dice":
            v = check_bool(v, f"{where}.{key}", src)
        # the rest was checked by read_plans (patch, spacing, schemes, masks, batch, resampling, architecture)
        kept[key] = v
    out["configurations"] = {configuration: kept}
    return out


def plan_from_plans(plans_file: str | Path, dataset_file: str | Path, configuration: str = "3d_fullres",
                    dataset_name: str | None = None) -> dict[str, Any]:
    """A complete focusseg plan from an nnU-Net plans file and the dataset.json of the data to train on.

    Args:
        plans_file: nnU-Net's plans (``nnUNetPlans.json``, ``nnUNetResEncUNetMPlans.json``...).
        dataset_file: the dataset.json (labels, channels, file ending).
        configuration: ``3d_fullres`` or ``3d_lowres`` (or another single-stage 3D configuration of the file).
        dataset_name: the plan's ``dataset`` (default: the dataset.json's folder name).

    Returns:
        the plan (passes :func:`focusseg.settings.parse_plan_settings`), its provenance under ``"nnunet"``.

    Raises:
        UsageError: a configuration that is not a name.
        MissingFileError: either file missing.
        PlanError: a cascade or 2D configuration, or a field refused (one line naming the file).
    """
    plans_file, dataset_file = Path(plans_file), Path(dataset_file)
    if not isinstance(configuration, str) or not _CONFIGURATION.fullmatch(configuration):
        raise UsageError(f"--configuration {configuration!r} is not an nnU-Net configuration name (3d_fullres, "
                         "3d_lowres)")
    if "cascade" in configuration:
        raise PlanError(f"configurations.{configuration} is a cascade stage (its input includes the previous "
                        "stage's segmentation): train 3d_lowres or 3d_fullres as a plain configuration", plans_file)
    model = read_plans(plans_file, dataset_file, configuration)
    if model.configuration.dim != 3:
        raise PlanError(f"configurations.{configuration} is a 2D configuration: --nnunet-plans trains 3D "
                        "configurations (3d_fullres, 3d_lowres); for 2D use focusseg's own --configuration 2d",
                        plans_file)
    raw = check_mapping(read_json(plans_file, PlanError, allow_nan=False, max_bytes=MAX_JSON_BYTES), "plans.json",
                        plans_file)
    kept = kept_plans(raw, configuration, plans_file)
    plan = plan_from_nnunet(model, trainer=TRAINER)
    plan["dataset"] = dataset_name or dataset_file.parent.name or str(kept.get("dataset_name", "dataset"))
    plan["nnunet"] = {"plans_file": plans_file.name, "configuration": configuration, "trainer": TRAINER,
                      "plans_name": model.plans_name, "file_ending": model.dataset.file_ending, "plans": kept}
    return plan


__all__ = ["KEPT_CONFIGURATION_KEYS", "KEPT_PLANS_KEYS", "TRAINER", "kept_plans", "plan_from_plans"]
