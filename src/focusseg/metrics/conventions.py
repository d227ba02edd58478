"""Challenge conventions for empty masks and metric rules, selected by name (``convention=...``).

What every metric returns when a mask is empty is a *choice*; challenges made different ones. A
:class:`Convention` states them all in one place; ``evaluate_case``/``evaluate_folders`` apply it.
``default``: a ratio whose denominator is 0 is undefined (NaN, an empty CSV cell). ``flare21``: FLARE21
``DSC_NSD_eval.py``, both empty -> 1, one empty -> 0. ``flare22``: ``flare21`` plus FLARE22's per-organ NSD
tolerances and NSD = 0 where DSC < 0.2 (the reading chosen for FLARE22; the official z-range restriction of
aorta/IVC/oesophagus is not applied). ``flare23``: ``flare22`` with ``FLARE23_DSC_NSD_Eval.py``'s threshold 0.1.
``autopet``: autoPET III ``val_script.py``, Dice and FNV undefined on an empty GT, FPV still counted.

Every value of every convention: ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from focusseg.registry import Registry

NAN = math.nan

FLARE22_TOLERANCE_MM: Mapping[int, float] = {
    1: 5.0,
    2: 3.0,
    3: 3.0,
    4: 5.0,
    5: 2.0,
    6: 2.0,
    7: 2.0,
    8: 2.0,
    9: 2.0,
    10: 3.0,
    11: 5.0,
    12: 7.0,
    13: 3.0,
}
"""FLARE22/23 label id -> NSD tolerance (mm): liver, RK, spleen, pancreas, aorta, IVC, RAG, LAG,
gallbladder, oesophagus, stomach, duodenum, LK (FLARE22_DSC_NSD_Eval.py)."""


@dataclass(frozen=True)
class Convention:
    """Values for undefined cases and challenge-specific rules.

    Args:
        name: registry name.
        both_empty: value of Dice, IoU, precision, recall, NSD and lesion-wise Dice when GT and
            prediction are both empty (NaN or 1.0).
        dice_on_empty_gt: Dice/IoU/NSD when the GT is empty and the prediction is not (0.0, or NaN for
            autoPET's "undefined on a negative case").
        fnv_on_empty_gt: FNV (ml) when the GT is empty (0.0, or NaN for autoPET III).
        nsd_zero_below_dice: if set, NSD is forced to 0 where Dice < this value (FLARE22: 0.2).
        nsd_tolerance: per-label NSD tolerances (mm) that override the caller's ``nsd_tolerance``.
    """

    name: str
    both_empty: float = NAN
    dice_on_empty_gt: float = 0.0
    fnv_on_empty_gt: float = 0.0
    nsd_zero_below_dice: float | None = None
    nsd_tolerance: Mapping[int, float] = field(default_factory=dict)

    def tolerance(self, label: int, default: float) -> float:
        """NSD tolerance in mm for ``label``: the convention's own value, else ``default``."""
        return float(self.nsd_tolerance.get(int(label), default))


CONVENTIONS: Registry[Convention] = Registry("convention")


@CONVENTIONS.register("default")
def _default() -> Convention:
    return Convention("default")


@CONVENTIONS.register("flare21")
def _flare21() -> Convention:
    return Convention("flare21", both_empty=1.0)


@CONVENTIONS.register("flare22")
def _flare22() -> Convention:
    return Convention("flare22", both_empty=1.0, nsd_zero_below_dice=0.2, nsd_tolerance=FLARE22_TOLERANCE_MM)


@CONVENTIONS.register("flare23")
def _flare23() -> Convention:
    return Convention("flare23", both_empty=1.0, nsd_zero_below_dice=0.1, nsd_tolerance=FLARE22_TOLERANCE_MM)


@CONVENTIONS.register("autopet")
def _autopet() -> Convention:
    return Convention("autopet", dice_on_empty_gt=NAN, fnv_on_empty_gt=NAN)


def get_convention(convention: str | Convention) -> Convention:
    """A :class:`Convention` from its registry name (``CONVENTIONS.names()``) or itself."""
    if isinstance(convention, Convention):
        return convention
    return CONVENTIONS.build(convention)
