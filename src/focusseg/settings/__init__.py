"""A plan's ``training``, ``inference`` and ``network`` sections, parsed once into typed, frozen, validated objects.

Code that reads a section takes it from here instead of ``plan["training"].get(...)`` with a default at each read
site: every key has one type, one range and one default, and a plan from a file someone else made (a bundle, a
checkpoint) is refused before anything is allocated for it (:func:`parse_plan_settings`: the three sections plus the
top-level fields that size the work, checked against the cost bounds of :mod:`focusseg.settings.checks`, and the
preprocessing and label fields, :mod:`focusseg.settings.preprocessing`). Post-processing steps read from any file
pass one checker with their arguments (:mod:`focusseg.settings.postprocessing`). Every refusal is one
:class:`~focusseg.errors.PlanError` naming the plan file, the field path and the bound.
``docs/settings.md`` describes the rules. A floor-layer package: the standard library and :mod:`focusseg.errors` only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from focusseg.errors import PlanError
from focusseg.settings.checks import (
    MAX_BATCH,
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_EPOCHS,
    MAX_INFERENCE_BATCH,
    MAX_ITERATIONS_PER_EPOCH,
    MAX_NOISE_PASSES,
    MAX_OVERLAP,
    MAX_PATCH_AXIS,
    MAX_PATCH_VOXELS,
    MAX_SEED,
    MAX_STAGES,
    MAX_TOTAL_ITERATIONS,
    MAX_TTA_PASSES,
    MAX_VAL_PATCHES,
    MAX_WIDTH,
    MAX_WINDOW_BATCH_ELEMENTS,
    check_int,
    fail,
    freeze,
    thaw,
)
from focusseg.settings.inference import INFERENCE_KEYS, InferenceSettings, inference_settings
from focusseg.settings.network import NetworkSettings, network_settings
from focusseg.settings.postprocessing import POSTPROCESSING_STEPS, check_postprocessing_steps, check_step
from focusseg.settings.preprocessing import NORMALIZATION_SCHEMES, PreprocessingSettings, preprocessing_settings
from focusseg.settings.spec import Spec, parse_spec
from focusseg.settings.training import (
    AMP_VALUES,
    COMPILE_OPTIONS,
    DEEP_SUPERVISION_OPTIONS,
    DEFAULT_FULL_EVERY,
    DEFAULT_VAL_PATCHES,
    INIT_FROM_OPTIONS,
    LOADER_MODES,
    TRAINING_KEYS,
    VALIDATION_MODES,
    TrainingSettings,
    training_settings,
)


@dataclass(frozen=True)
class PlanSettings:
    """What a plan asks of the machine, checked against the cost bounds, plus its three typed sections.

    Attributes:
        n_classes: output classes (``n_classes``), in ``[1, MAX_CLASSES]``.
        n_outputs: output channels: one per region for a region plan, else ``n_classes``.
        in_channels: input channels (``len(channel_names)``), in ``[1, MAX_CHANNELS]``.
        patch_size: the patch (2 or 3 axes, each in ``[1, MAX_PATCH_AXIS]``, at most ``MAX_PATCH_VOXELS``).
        batch_size: training samples per step (``batch_size``, default 2), in ``[1, MAX_BATCH]``.
        training / inference / network: the sections (:func:`training_settings`, :func:`inference_settings`,
            :func:`network_settings`).
        preprocessing: normalisation, target spacing, resampling order, labels and regions
            (:func:`preprocessing_settings`).
    """

    n_classes: int
    n_outputs: int
    in_channels: int
    patch_size: tuple[int, ...]
    batch_size: int
    training: TrainingSettings
    inference: InferenceSettings
    network: NetworkSettings | None
    preprocessing: PreprocessingSettings

    @property
    def patch_voxels(self) -> int:
        """Voxels of one patch (the product of ``patch_size``)."""
        return math.prod(self.patch_size)


def parse_plan_settings(plan: Mapping[str, Any], source: str | Path | None = None) -> PlanSettings:
    """Parse and bound a whole plan before anything is allocated for it: the gate for plans from files others
    made (checkpoints, model bundles).

    Args:
        plan: the plan (a JSON object).
        source: the plan's file, named in the error message.

    Returns:
        the frozen :class:`PlanSettings`.

    Raises:
        PlanError: a section as :func:`training_settings` / :func:`inference_settings` /
            :func:`network_settings` says, or a top-level field out of its bound (``n_classes``, channels,
            ``patch_size``, ``batch_size``, ``regions``, the inference batch's logit elements), or a
            preprocessing or label field as :func:`preprocessing_settings` says (normalisation per channel, target
            spacing, resampling order, labels, ignore label, regions).
    """
    if not isinstance(plan, Mapping):
        raise PlanError(f"a plan must be a JSON object, not {type(plan).__name__}", source)
    s = source
    n_classes = check_int(plan.get("n_classes"), "n_classes", s, 1, MAX_CLASSES)
    names = plan.get("channel_names")
    if not isinstance(names, (Mapping, list, tuple)) or not 0 < len(names) <= MAX_CHANNELS:
        fail(s, "channel_names", names, f"must name 1 to {MAX_CHANNELS} input channels")
    patch = plan.get("patch_size")
    if not isinstance(patch, (list, tuple)) or len(patch) not in (2, 3):
        fail(s, "patch_size", patch, "must be 2 or 3 integers")
    patch_size = tuple(check_int(p, f"patch_size[{i}]", s, 1, MAX_PATCH_AXIS) for i, p in enumerate(patch))
    if math.prod(patch_size) > MAX_PATCH_VOXELS:
        fail(s, "patch_size", list(patch_size),
             f"has {math.prod(patch_size):,} voxels (at most {MAX_PATCH_VOXELS:,})")
    batch = check_int(plan.get("batch_size", 2), "batch_size", s, 1, MAX_BATCH)
    preprocessing = preprocessing_settings(plan, n_classes, len(names), s)
    n_outputs = len(preprocessing.regions) if preprocessing.regions else n_classes
    inference = inference_settings(plan, s)
    elements = inference.batch_size * math.prod(patch_size) * n_outputs
    if elements > MAX_WINDOW_BATCH_ELEMENTS:
        fail(s, "inference.batch_size", inference.batch_size,
             f"x patch {math.prod(patch_size):,} voxels x {n_outputs} outputs = {elements:,} logits (at most "
             f"{MAX_WINDOW_BATCH_ELEMENTS:,})")
    return PlanSettings(n_classes=n_classes, n_outputs=n_outputs, in_channels=len(names), patch_size=patch_size,
                        batch_size=batch, training=training_settings(plan, s), inference=inference,
                        network=network_settings(plan, s), preprocessing=preprocessing)


__all__ = [
    "AMP_VALUES",
    "COMPILE_OPTIONS",
    "DEEP_SUPERVISION_OPTIONS",
    "DEFAULT_FULL_EVERY",
    "DEFAULT_VAL_PATCHES",
    "INFERENCE_KEYS",
    "INIT_FROM_OPTIONS",
    "LOADER_MODES",
    "MAX_BATCH",
    "MAX_CHANNELS",
    "MAX_CLASSES",
    "MAX_EPOCHS",
    "MAX_INFERENCE_BATCH",
    "MAX_ITERATIONS_PER_EPOCH",
    "MAX_NOISE_PASSES",
    "MAX_OVERLAP",
    "MAX_PATCH_AXIS",
    "MAX_PATCH_VOXELS",
    "MAX_SEED",
    "MAX_STAGES",
    "MAX_TOTAL_ITERATIONS",
    "MAX_TTA_PASSES",
    "MAX_VAL_PATCHES",
    "MAX_WIDTH",
    "MAX_WINDOW_BATCH_ELEMENTS",
    "NORMALIZATION_SCHEMES",
    "POSTPROCESSING_STEPS",
    "TRAINING_KEYS",
    "VALIDATION_MODES",
    "InferenceSettings",
    "NetworkSettings",
    "PlanSettings",
    "PreprocessingSettings",
    "Spec",
    "TrainingSettings",
    "check_postprocessing_steps",
    "check_step",
    "freeze",
    "inference_settings",
    "network_settings",
    "parse_plan_settings",
    "parse_spec",
    "preprocessing_settings",
    "thaw",
    "training_settings",
]
