"""Post-processing steps read from a file (a run's ``postprocessing.json``, a bundle's, ``--postprocessing-file``,
a plan's ``inference.postprocessing``) checked with their arguments before any is applied.

A step is a name or ``{"name": ..., **kwargs}`` naming one of :data:`POSTPROCESSING_STEPS` (the functions of
:mod:`focusseg.inference.postprocess`, whose registry lives above this floor layer; a test keeps the two equal).
Every keyword argument is checked by type and range (an unknown one is refused), so a step from someone else's file
can neither crash mid-prediction nor silently empty a mask (``min_size: 1e300``). Each refusal is one line naming
the file, the step index and the field.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, NoReturn

from focusseg.errors import FocussegError, PlanError
from focusseg.settings.checks import MAX_CLASSES, is_int, show_value

#: The post-processing steps and the keyword arguments each takes (besides the label map).
POSTPROCESSING_STEPS: Mapping[str, tuple[str, ...]] = {
    "keep_largest_component": ("labels", "connectivity", "regions"),
    "remove_small_components": ("min_size", "labels", "unit", "spacing", "connectivity", "regions"),
    "erode": ("labels", "iterations", "connectivity"),
    "dilate": ("labels", "iterations", "connectivity"),
}
#: Arguments a step cannot do without.
REQUIRED_ARGUMENTS: Mapping[str, tuple[str, ...]] = {"remove_small_components": ("min_size",)}
#: Neighbourhoods cc3d and scipy know: 4/8 in 2D, 6/18/26 in 3D.
CONNECTIVITIES = (4, 6, 8, 18, 26)
#: Units of ``min_size``.
SIZE_UNITS = ("voxels", "ml")
#: Erosion/dilation steps of one step: each is a pass over the volume; more than a few dozen only wipes classes out.
MAX_MORPHOLOGY_ITERATIONS = 256
#: Steps in one list (a choice on validation has at most one per class or region, plus one).
MAX_STEPS = 4 * MAX_CLASSES
#: ``min_size`` when the caller gives no voxel limit: 2^53, the largest count a float holds exactly.
DEFAULT_MAX_SIZE = 2**53
#: Voxel spacing (mm) a step may carry: the plan's target-spacing range.
SPACING_RANGE = (1e-3, 1e4)


def _fail(error: type[FocussegError], source: str | Path | None, path: str, value: Any, bound: str) -> NoReturn:
    raise error(f"{path} = {show_value(value)}: {bound}", source)


def _label_list(value: Any, path: str, source: str | Path | None, error: type[FocussegError],
                labels: Collection[int] | None) -> list[int]:
    """A list of label values in ``[0, MAX_CLASSES)``, each in ``labels`` when given."""
    if not isinstance(value, (list, tuple)) or not all(is_int(v) and 0 <= v < MAX_CLASSES for v in value):
        _fail(error, source, path, value, f"must be a list of label values in [0, {MAX_CLASSES})")
    if labels is not None:
        unknown = [v for v in value if v not in labels]
        if unknown:
            _fail(error, source, path, value, f"label {unknown[0]} is not one of the plan's labels "
                                               f"{sorted(labels)}")
    return [int(v) for v in value]


def _regions(value: Any, path: str, source: str | Path | None, error: type[FocussegError],
             labels: Collection[int] | None) -> None:
    """A list of regions, each a foreground label value or a non-empty list of them."""
    if not isinstance(value, (list, tuple)) or not value or len(value) > MAX_CLASSES:
        _fail(error, source, path, value, f"must be a list of 1 to {MAX_CLASSES} regions")
    for i, region in enumerate(value):
        items = region if isinstance(region, (list, tuple)) else [region]
        if not items or not all(is_int(v) and 0 < v < MAX_CLASSES for v in items):
            _fail(error, source, f"{path}[{i}]", region,
                  f"must be a non-empty list of foreground label values in [1, {MAX_CLASSES})")
        _label_list(list(items), f"{path}[{i}]", source, error, labels)


def check_step(step: Any, path: str, source: str | Path | None = None, *, labels: Collection[int] | None = None,
               max_size: int = DEFAULT_MAX_SIZE, error: type[FocussegError] = PlanError) -> dict[str, Any]:
    """One post-processing step checked with its arguments.

    Args:
        step: a step name, or ``{"name": ..., **kwargs}``.
        path: how the message names the step (``"postprocessing.json steps[2]"``).
        source: the file it was read from, named in the message.
        labels: the label values the step may name (the plan's); None: any in ``[0, MAX_CLASSES)``.
        max_size: the largest ``min_size`` (the voxel limit in force).
        error: the error class raised.

    Returns:
        the step as a fresh ``{"name": ..., **kwargs}`` dict.

    Raises:
        error: an unknown step or argument, a missing required argument, or an argument of the wrong type or out of
            its range (labels, regions, connectivity, ``min_size``, ``unit``, ``spacing``, ``iterations``).
    """
    if isinstance(step, str):
        step = {"name": step}
    if not isinstance(step, Mapping) or not all(isinstance(k, str) for k in step) or not isinstance(
            step.get("name"), str):
        _fail(error, source, path, step, "must be a step name or an object with a 'name'")
    name = step["name"]
    if name not in POSTPROCESSING_STEPS:
        raise error(f"{path} names an unknown post-processing step {show_value(name)} "
                    f"(known: {', '.join(sorted(POSTPROCESSING_STEPS))})", source)
    known = POSTPROCESSING_STEPS[name]
    unknown = sorted(k for k in step if k != "name" and k not in known)
    if unknown:
        raise error(f"{path}.{unknown[0]}: {name} takes no argument {unknown[0]!r} (it takes "
                    f"{', '.join(known)})", source)
    for arg in REQUIRED_ARGUMENTS.get(name, ()):
        if arg not in step:
            raise error(f"{path}.{arg} is missing: {name} needs it", source)
    out: dict[str, Any] = {"name": name}
    for key in known:
        if key not in step:
            continue
        value, where = step[key], f"{path}.{key}"
        if key == "labels":
            value = None if value is None else _label_list(value, where, source, error, labels)
        elif key == "regions":
            if value is not None:
                _regions(value, where, source, error, labels)
        elif key == "connectivity":
            if value is not None and not (is_int(value) and value in CONNECTIVITIES):
                _fail(error, source, where, value, f"must be one of {', '.join(map(str, CONNECTIVITIES))} or null")
        elif key == "min_size":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or not 0 <= value <= max_size:
                _fail(error, source, where, value, f"must be a finite number in [0, {max_size}]")
        elif key == "unit":
            if value not in SIZE_UNITS:
                _fail(error, source, where, value, f"must be one of {', '.join(SIZE_UNITS)}")
        elif key == "spacing":
            lo, hi = SPACING_RANGE
            if value is not None and not (isinstance(value, (list, tuple)) and len(value) in (2, 3) and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
                    for v in value)):
                _fail(error, source, where, value, f"must be 2 or 3 finite spacings (mm) in [{lo:g}, {hi:g}]")
        elif key == "iterations":
            if not (is_int(value) and 1 <= value <= MAX_MORPHOLOGY_ITERATIONS):
                _fail(error, source, where, value, f"must be an integer in [1, {MAX_MORPHOLOGY_ITERATIONS}]")
        out[key] = list(value) if isinstance(value, tuple) else value
    if step.get("labels") is not None and step.get("regions") is not None:
        raise error(f"{path}: give labels or regions, not both", source)
    return out


def check_postprocessing_steps(steps: Any, path: str, source: str | Path | None = None, *,
                               labels: Collection[int] | None = None, max_size: int = DEFAULT_MAX_SIZE,
                               error: type[FocussegError] = PlanError) -> list[dict[str, Any]]:
    """A list of post-processing steps, each checked by :func:`check_step` (its index in the message).

    Args:
        steps: the list.
        path: how the message names the list (``"inference.postprocessing"``, ``"postprocessing.json steps"``).
        source, labels, max_size, error: as :func:`check_step`.

    Returns:
        the steps as fresh dicts.

    Raises:
        error: not a list, more than :data:`MAX_STEPS` steps, or a step :func:`check_step` refuses.
    """
    if not isinstance(steps, (list, tuple)):
        _fail(error, source, path, steps, "must be a list of steps")
    if len(steps) > MAX_STEPS:
        _fail(error, source, path, f"{len(steps)} steps", f"at most {MAX_STEPS} steps")
    return [check_step(s, f"{path}[{i}]", source, labels=labels, max_size=max_size, error=error)
            for i, s in enumerate(steps)]


__all__ = ["CONNECTIVITIES", "MAX_MORPHOLOGY_ITERATIONS", "MAX_STEPS", "POSTPROCESSING_STEPS", "REQUIRED_ARGUMENTS",
           "SIZE_UNITS", "check_postprocessing_steps", "check_step"]
