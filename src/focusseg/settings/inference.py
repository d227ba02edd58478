"""The plan's ``inference`` section as a typed, frozen, validated object (:func:`inference_settings`): the
sliding-window overlap, the mirror and noise test-time augmentation, the window batch and the post-processing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from focusseg.errors import PlanError
from focusseg.settings.checks import (
    MAX_INFERENCE_BATCH,
    MAX_NOISE_PASSES,
    MAX_OVERLAP,
    MAX_SEED,
    MAX_TTA_PASSES,
    check_finite_json,
    check_float,
    check_int,
    fail,
    freeze,
    is_int,
    read_section,
    thaw,
)
from focusseg.settings.postprocessing import check_postprocessing_steps


@dataclass(frozen=True)
class InferenceSettings:
    """The plan's ``inference`` section.

    Attributes:
        overlap: the sliding-window overlap in ``[0, MAX_OVERLAP]``; None when absent: prediction and
            validation need it (the planner writes 0.5), the exported graph spec and the final-validation time
            estimate read it as 0.5.
        mirror_axes: mirror TTA axes (spatial, from 0) (``()``; null too).
        batch_size: windows predicted at once (2).
        noise_passes: extra TTA passes with Gaussian input noise (0).
        noise_sigma: their noise's standard deviation (0.1).
        noise_seed: their generator's seed (0).
        accelerate: how a predictor prepares its network's forward: ``"none"``, ``"thin"`` (its convolutions
            with few output channels on faster CPU kernels, :mod:`focusseg.nets.layout`) or ``"compile"``
            (inductor) (:mod:`focusseg.inference.acceleration`).
        postprocessing: ``"auto"`` (the steps chosen on validation), a tuple of fixed steps (read-only, each
            checked with its arguments: :func:`~focusseg.settings.postprocessing.check_postprocessing_steps`), or
            any other value (no post-processing: null, false, ``"none"``) (``"auto"``).
    """

    overlap: float | None = None
    mirror_axes: tuple[int, ...] = ()
    batch_size: int = 2
    noise_passes: int = 0
    noise_sigma: float = 0.1
    noise_seed: int = 0
    postprocessing: str | tuple[Any, ...] | bool | None = "auto"
    accelerate: str = "none"

    @property
    def tta_passes(self) -> int:
        """Network passes per window: ``2^len(mirror_axes) * (1 + noise_passes)``."""
        return 2 ** len(self.mirror_axes) * (1 + self.noise_passes)

    def need(self, name: str, source: str | Path | None = None) -> Any:
        """The field ``name``, refused (:class:`PlanError`) when the plan leaves it out (``overlap``, where
        prediction and validation need it)."""
        value = getattr(self, name)
        if value is None:
            raise PlanError(f"inference.{name} is missing: the plan must set it to predict", source)
        return value

    def postprocessing_steps(self) -> list[Any] | None:
        """The fixed post-processing steps as plain values, or None when the plan fixes none."""
        return thaw(self.postprocessing) if isinstance(self.postprocessing, tuple) else None

    def to_dict(self) -> dict[str, Any]:
        """The section as plain JSON values; parsing it gives an equal object."""
        return {f.name: thaw(getattr(self, f.name)) for f in dataclasses.fields(self)}


#: The ways a predictor prepares its network's forward (:mod:`focusseg.inference.acceleration`).
ACCELERATIONS = ("none", "thin", "compile")

INFERENCE_KEYS = tuple(f.name for f in dataclasses.fields(InferenceSettings))


def _label_values(plan: Mapping[str, Any]) -> set[int] | None:
    """The plan's label values, which its post-processing steps may name; None when ``labels`` is not a mapping
    of integers (checked elsewhere): the steps' labels are then only range-checked."""
    labels = plan.get("labels") if isinstance(plan, Mapping) else None
    if not isinstance(labels, Mapping) or not all(is_int(v) for v in labels.values()):
        return None
    return {int(v) for v in labels.values()}


def inference_settings(plan: Mapping[str, Any], source: str | Path | None = None) -> InferenceSettings:
    """The plan's ``inference`` section (absent or null: all defaults), validated. Mirror axes are checked
    against 3 spatial axes, not the patch's: the sliding window refuses a 2D plan's third axis when it predicts
    (a recipe's 3D mirror axes merged onto a 2D plan still plans and trains).

    Args and errors as :func:`~focusseg.settings.training.training_settings` (for the ``inference`` section, giving
    the frozen :class:`InferenceSettings`); also refused: more TTA passes than
    :data:`~focusseg.settings.checks.MAX_TTA_PASSES`.
    """
    inf = read_section(plan, "inference", INFERENCE_KEYS, source)
    if inf is None:
        return InferenceSettings()
    s = source
    kw: dict[str, Any] = {}
    if inf.get("overlap") is not None:
        kw["overlap"] = check_float(inf["overlap"], "inference.overlap", s, 0.0, MAX_OVERLAP)
    if inf.get("mirror_axes") is not None:
        axes = inf["mirror_axes"]
        if not isinstance(axes, (list, tuple)) or len(set(map(repr, axes))) != len(axes) or not all(
                is_int(a) and 0 <= a < 3 for a in axes):
            fail(s, "inference.mirror_axes", axes, "must be distinct spatial axes in [0, 2]")
        kw["mirror_axes"] = tuple(int(a) for a in axes)
    if "batch_size" in inf:
        kw["batch_size"] = check_int(inf["batch_size"], "inference.batch_size", s, 1, MAX_INFERENCE_BATCH)
    if "noise_passes" in inf:
        kw["noise_passes"] = check_int(inf["noise_passes"], "inference.noise_passes", s, 0, MAX_NOISE_PASSES)
    if "noise_sigma" in inf:
        kw["noise_sigma"] = check_float(inf["noise_sigma"], "inference.noise_sigma", s, 0.0, 1e3)
    if "accelerate" in inf:
        if inf["accelerate"] not in ACCELERATIONS:
            fail(s, "inference.accelerate", inf["accelerate"], f"must be one of {', '.join(ACCELERATIONS)}")
        kw["accelerate"] = inf["accelerate"]
    if "noise_seed" in inf:
        kw["noise_seed"] = check_int(inf["noise_seed"], "inference.noise_seed", s, 0, MAX_SEED)
    if "postprocessing" in inf:
        post = inf["postprocessing"]
        if isinstance(post, (list, tuple)):
            check_finite_json(post, "inference.postprocessing", s)
            check_postprocessing_steps(post, "inference.postprocessing", s, labels=_label_values(plan))
            post = freeze(post)
        elif not (post is None or isinstance(post, (str, bool))):
            fail(s, "inference.postprocessing", post, "must be \"auto\", a list of steps, or null")
        kw["postprocessing"] = post
    out = InferenceSettings(**kw)
    if out.tta_passes > MAX_TTA_PASSES:
        fail(s, "inference.noise_passes", out.noise_passes,
             f"gives {out.tta_passes} TTA passes with {len(out.mirror_axes)} mirror axes (at most {MAX_TTA_PASSES})")
    return out
