"""The plan's cost bounds and the value checks every settings section uses.

Each check returns the value it accepts (as the section stores it) or raises one
:class:`~focusseg.errors.PlanError` whose message names the plan file, the field path and the bound
(``training.grad_clip = -1: must be a finite number in (0, inf)``). :func:`freeze` and :func:`thaw` turn
JSON-like values into read-only ones and back. Standard library and :mod:`focusseg.errors` only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from focusseg.errors import PlanError

# ----------------------------------------------------------------------------------------------- cost bounds
#: Output classes: one logit map per class per window; 1000 covers every anatomy atlas (TotalSegmentator: 117).
MAX_CLASSES = 1000
#: Input channels (modalities): multi-parametric MR has 4-6; 64 leaves room without allowing absurd first layers.
MAX_CHANNELS = 64
#: One patch axis: 4096 voxels covers a whole 2D slice of any scanner and any 3D axis a patch could sensibly span.
MAX_PATCH_AXIS = 4096
#: Voxels of one patch: 512^3 (0.5 GiB per fp32 channel); the planner's largest CUDA patches are ~2.5e7 voxels.
MAX_PATCH_VOXELS = 512**3
#: Training samples per step (the planner's 2D CUDA cap is 512).
MAX_BATCH = 4096
#: Windows predicted at once (the planner writes at most 64).
MAX_INFERENCE_BATCH = 4096
#: Logit elements of one inference batch (batch x patch voxels x outputs): 2^34 fp32 values = 64 GiB.
MAX_WINDOW_BATCH_ELEMENTS = 2**34
#: Extra Gaussian-noise TTA passes (the VALDO recipe uses 2).
MAX_NOISE_PASSES = 64
#: Network passes per window: 2^(mirror axes) x (1 + noise passes); 8 x 65 = 520 is the most the two bounds allow.
MAX_TTA_PASSES = 520
#: Sliding-window overlap below 1: the number of windows grows as 1 / (1 - overlap)^dims (0.95: 8000x in 3D).
MAX_OVERLAP = 0.95
#: Epochs and iterations per epoch: far beyond any schedule (nnU-Net: 1000 x 250), but finite.
MAX_EPOCHS = 1_000_000
MAX_ITERATIONS_PER_EPOCH = 1_000_000
#: Iterations of one run (max_epochs x iterations_per_epoch): 10^9 steps would take years; the bound keeps
#: schedule arithmetic (LR horizons, time budgets) in range.
MAX_TOTAL_ITERATIONS = 10**9
#: Validation patches per validation (the default is 32).
MAX_VAL_PATCHES = 1_000_000
#: Feature widths of a network stage (nnU-Net caps at 320-512).
MAX_WIDTH = 4096
#: Network stages (resolution levels): 12 halvings of a 4096 axis leave one voxel.
MAX_STAGES = 12
#: Seeds: torch and numpy take 64-bit seeds; the loop adds small offsets to the plan's seed.
MAX_SEED = 2**62

#: The empty read-only mapping (a spec without keyword arguments).
EMPTY: Mapping[str, Any] = MappingProxyType({})


# ----------------------------------------------------------------------------------------------- checks

def show_value(value: Any, limit: int = 60) -> str:
    """``value`` as short one-line text for a message (its ``repr``, whitespace collapsed, cut at ``limit``)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fail(source: str | Path | None, path: str, value: Any, bound: str) -> NoReturn:
    """Raise the one-line :class:`PlanError` ``"{path} = {value}: {bound}"`` naming ``source``.

    Raises:
        PlanError: always.
    """
    raise PlanError(f"{path} = {show_value(value)}: {bound}", source)


def is_int(v: Any) -> bool:
    """Whether ``v`` is an integer (a bool is not: JSON ``true`` must not pass as 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def check_int(v: Any, path: str, src: str | Path | None, lo: int, hi: int | None = None) -> int:
    """``v`` as an int in ``[lo, hi]`` (bools and floats refused).

    Raises:
        PlanError: not an integer, or out of the range.
    """
    if not is_int(v) or v < lo or (hi is not None and v > hi):
        fail(src, path, v, f"must be an integer in [{lo}, {hi}]" if hi is not None else f"must be an integer >= {lo}")
    return int(v)


def check_float(v: Any, path: str, src: str | Path | None, lo: float, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> float:
    """``v`` as a finite float in the range (NaN and inf refused: ``json.loads`` accepts them).

    Raises:
        PlanError: not a finite number, or out of the range (open at an end when ``lo_open`` / ``hi_open``).
    """
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok:
        ok = (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
    if not ok:
        low = f"{'(' if lo_open else '['}{lo:g}"
        high = f"{hi:g}{')' if hi_open else ']'}" if hi is not None else "inf)"
        fail(src, path, v, f"must be a finite number in {low}, {high}")
    return float(v)


def check_bool(v: Any, path: str, src: str | Path | None) -> bool:
    """``v`` when it is true or false (no truthy stand-ins). Raises :class:`PlanError` otherwise."""
    if not isinstance(v, bool):
        fail(src, path, v, "must be true or false")
    return v


def check_mapping(v: Any, path: str, src: str | Path | None) -> Mapping[str, Any]:
    """``v`` when it is a mapping with string keys (a JSON object). Raises :class:`PlanError` otherwise."""
    if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
        fail(src, path, v, "must be an object")
    return v


def check_known(section: Mapping[str, Any], known: Sequence[str], path: str, src: str | Path | None) -> None:
    """Refuse (:class:`PlanError`) a key of ``section`` not in ``known``, naming the known keys: a typo must not
    silently keep a default."""
    unknown = sorted(set(section) - set(known), key=str)
    if unknown:
        raise PlanError(f"{path}.{unknown[0]} is not a known setting"
                        + (f" (nor {', '.join(map(str, unknown[1:]))})" if len(unknown) > 1 else "")
                        + f"; known: {', '.join(known)}", src)


def check_finite_json(v: Any, path: str, src: str | Path | None, depth: int = 0) -> None:
    """Refuse (:class:`PlanError`) NaN/inf anywhere inside a free-form value (spec kwargs), non-string keys, and
    nesting deeper than 32 levels."""
    if depth > 32:
        fail(src, path, v, "is nested more than 32 levels deep")
    if isinstance(v, float) and not math.isfinite(v):
        fail(src, path, v, "must be finite (NaN and inf are refused)")
    if isinstance(v, Mapping):
        for k, x in v.items():
            if not isinstance(k, str):
                fail(src, path, k, "keys must be strings")
            check_finite_json(x, f"{path}.{k}", src, depth + 1)
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            check_finite_json(x, f"{path}[{i}]", src, depth + 1)


def freeze(value: Any) -> Any:
    """A read-only deep copy of a JSON-like value: mappings become read-only mappings, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The plain JSON-like deep copy of a :func:`freeze` d value (dicts and lists, as a plan holds them)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


def read_section(plan: Mapping[str, Any], name: str, known: Sequence[str],
                 src: str | Path | None) -> Mapping[str, Any] | None:
    """The plan's section ``name`` checked to be an object of known keys (:func:`check_mapping`,
    :func:`check_known`); None when the plan leaves it out or sets it to null (all defaults)."""
    raw = plan.get(name) if isinstance(plan, Mapping) else None
    if raw is None:
        return None
    section = check_mapping(raw, name, src)
    check_known(section, known, name, src)
    return section
