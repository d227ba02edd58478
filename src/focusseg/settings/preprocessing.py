"""The plan fields that say how a case is preprocessed and what its labels are: ``normalization``,
``target_spacing``, ``resample_order_image``, ``labels``, ``ignore_label``, ``regions`` and
``regions_class_order``, checked as :mod:`focusseg.preprocessing` and the predictor use them
(:func:`preprocessing_settings`).

A plan from someone else's file (a checkpoint, a bundle, ``--plan``) is refused here before an array is allocated
for it: a non-finite or non-positive CT standard deviation, an unknown scheme, one scheme too few for the channels, a
target spacing of 0.0001 mm. Each refusal is one :class:`~focusseg.errors.PlanError` naming the file, the field and
the bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from focusseg.settings.checks import (
    MAX_CLASSES,
    check_bool,
    check_float,
    check_int,
    check_known,
    check_mapping,
    fail,
    freeze,
    is_int,
)

#: The normalisation schemes (:func:`focusseg.preprocessing.transforms.normalize`) and the keys each takes.
NORMALIZATION_SCHEMES: Mapping[str, tuple[str, ...]] = {
    "ct": ("clip", "mean", "std"),
    "zscore": ("use_mask", "fill_holes"),
    "quantile": ("lower", "upper"),
    "none": (),
}
#: Keys a scheme cannot do without.
REQUIRED_SCHEME_KEYS: Mapping[str, tuple[str, ...]] = {"ct": ("clip", "mean", "std")}
#: Largest magnitude of a CT clip value or mean (HU span +-3000; PET SUV and MR intensities stay far below this);
#: beyond it float32 arithmetic on the normalised image loses every digit.
MAX_INTENSITY = 1e20
#: Target spacing per axis in mm: a micrometre to ten metres.
MIN_SPACING_MM = 1e-3
MAX_SPACING_MM = 1e4
#: Spline orders scipy's ``ndimage.zoom`` takes.
MAX_RESAMPLE_ORDER = 5
#: Largest ignore-label value (label maps are stored as int16).
MAX_LABEL_VALUE = 2**15 - 1


@dataclass(frozen=True)
class PreprocessingSettings:
    """The plan's preprocessing and label fields, checked.

    Attributes:
        normalization: one read-only scheme mapping per input channel (``{"scheme": "ct", ...}``).
        target_spacing: the spacing (mm) every case is resampled to, 2 or 3 axes.
        resample_order_image: the image's spline order, in ``[0, 5]`` (3).
        resample_separate_z: nnU-Net's separate-z resampling of anisotropic cases as ``(threshold, order)``
            (plan field ``{"threshold": 3, "order": 0}``), or None (every axis with the image's order).
        labels: label name -> value, each in ``[0, n_classes)``.
        ignore_label: nnU-Net's ignore label (no class), or None.
        regions: region plans: the label values of each region; None otherwise.
        regions_class_order: region plans: the value each region paints; None otherwise.
    """

    normalization: tuple[Mapping[str, Any], ...]
    target_spacing: tuple[float, ...]
    resample_order_image: int
    labels: Mapping[str, int]
    ignore_label: int | None = None
    regions: tuple[tuple[int, ...], ...] | None = None
    regions_class_order: tuple[int, ...] | None = None
    resample_separate_z: tuple[float, int] | None = None


def _separate_z(value: Any, src: str | Path | None) -> tuple[float, int] | None:
    """``resample_separate_z``: None, or ``{"threshold": t, "order": k}`` with ``t`` in ``[1, 1000]`` (largest over
    smallest spacing above which a case counts as anisotropic) and ``k`` in ``[0, 5]``."""
    if value is None:
        return None
    section = check_mapping(value, "resample_separate_z", src)
    unknown = set(section) - {"threshold", "order"}
    if unknown:
        fail(src, "resample_separate_z", sorted(unknown), "unknown key(s): known are threshold and order")
    return (check_float(section.get("threshold", 3.0), "resample_separate_z.threshold", src, 1.0, 1000.0),
            check_int(section.get("order", 0), "resample_separate_z.order", src, 0, MAX_RESAMPLE_ORDER))


def _scheme(value: Any, path: str, src: str | Path | None) -> Mapping[str, Any]:
    """One channel's normalisation scheme, checked as :func:`~focusseg.preprocessing.transforms.normalize` reads
    it."""
    section = check_mapping(value, path, src)
    kind = section.get("scheme")
    if kind not in NORMALIZATION_SCHEMES:
        fail(src, f"{path}.scheme", kind, f"must be one of {', '.join(NORMALIZATION_SCHEMES)}")
    check_known(section, ("scheme", *NORMALIZATION_SCHEMES[kind]), path, src)
    for key in REQUIRED_SCHEME_KEYS.get(kind, ()):
        if key not in section:
            fail(src, f"{path}.{key}", None, f"is missing: the {kind} scheme needs it")
    if kind == "ct":
        clip = section["clip"]
        if not isinstance(clip, (list, tuple)) or len(clip) != 2:
            fail(src, f"{path}.clip", clip, "must be two numbers [lower, upper]")
        lo = check_float(clip[0], f"{path}.clip[0]", src, -MAX_INTENSITY, MAX_INTENSITY)
        hi = check_float(clip[1], f"{path}.clip[1]", src, -MAX_INTENSITY, MAX_INTENSITY)
        if lo > hi:
            fail(src, f"{path}.clip", list(clip), "lower must not exceed upper")
        check_float(section["mean"], f"{path}.mean", src, -MAX_INTENSITY, MAX_INTENSITY)
        check_float(section["std"], f"{path}.std", src, 0.0, MAX_INTENSITY, lo_open=True)
    elif kind == "zscore":
        for key in ("use_mask", "fill_holes"):
            if section.get(key) is not None:
                check_bool(section[key], f"{path}.{key}", src)
    elif kind == "quantile":
        lower = check_float(section.get("lower", 0.01), f"{path}.lower", src, 0.0, 1.0)
        upper = check_float(section.get("upper", 0.99), f"{path}.upper", src, 0.0, 1.0)
        if lower >= upper:
            fail(src, f"{path}.lower", lower, f"must be below upper ({upper:g})")
    return freeze(section)


def _regions(plan: Mapping[str, Any], n_classes: int, src: str | Path | None
             ) -> tuple[tuple[tuple[int, ...], ...] | None, tuple[int, ...] | None]:
    """``(regions, regions_class_order)``, both None for a plan without regions."""
    regions, order = plan.get("regions"), plan.get("regions_class_order")
    if not regions:
        if order not in (None, [], ()):
            fail(src, "regions_class_order", order, "is set but the plan has no regions")
        return None, None
    if not isinstance(regions, (list, tuple)) or len(regions) > MAX_CLASSES:
        fail(src, "regions", regions, f"must be a list of at most {MAX_CLASSES} regions")
    out = []
    for i, region in enumerate(regions):
        if (not isinstance(region, (list, tuple)) or not region or len(set(map(repr, region))) != len(region)
                or not all(is_int(v) and 0 < v < n_classes for v in region)):
            fail(src, f"regions[{i}]", region, f"must be a non-empty list of distinct label values in "
                                               f"[1, n_classes = {n_classes})")
        out.append(tuple(int(v) for v in region))
    if not isinstance(order, (list, tuple)) or len(order) != len(out):
        fail(src, "regions_class_order", order, f"must list one label value per region ({len(out)})")
    values = tuple(check_int(v, f"regions_class_order[{i}]", src, 1, n_classes - 1) for i, v in enumerate(order))
    return tuple(out), values


def preprocessing_settings(plan: Mapping[str, Any], n_classes: int, in_channels: int,
                           source: str | Path | None = None) -> PreprocessingSettings:
    """The plan's preprocessing and label fields, checked against the counts the plan declares.

    Args:
        plan: the plan.
        n_classes: its ``n_classes`` (already checked).
        in_channels: its number of input channels (``len(channel_names)``, already checked).
        source: the plan's file, named in the error.

    Returns:
        the frozen :class:`PreprocessingSettings`.

    Raises:
        PlanError: ``normalization`` not one known, complete, finite scheme per channel (a CT ``std`` must be
            positive, ``clip`` ordered); ``target_spacing`` not 2 or 3 spacings in
            ``[MIN_SPACING_MM, MAX_SPACING_MM]``; ``resample_order_image`` outside ``[0, 5]``; a malformed
            ``resample_separate_z``; ``labels`` not a
            non-empty mapping of names to values in ``[0, n_classes)``; an ``ignore_label`` that is a class or out of
            range; ``regions`` / ``regions_class_order`` malformed.
    """
    s = source
    norm = plan.get("normalization")
    if not isinstance(norm, (list, tuple)) or len(norm) != in_channels:
        fail(s, "normalization", norm, f"must be a list of one scheme per input channel ({in_channels})")
    schemes = tuple(_scheme(v, f"normalization[{i}]", s) for i, v in enumerate(norm))
    spacing = plan.get("target_spacing")
    if not isinstance(spacing, (list, tuple)) or len(spacing) not in (2, 3):
        fail(s, "target_spacing", spacing, "must be 2 or 3 spacings (mm)")
    target = tuple(check_float(v, f"target_spacing[{i}]", s, MIN_SPACING_MM, MAX_SPACING_MM)
                   for i, v in enumerate(spacing))
    order = check_int(plan.get("resample_order_image", 3), "resample_order_image", s, 0, MAX_RESAMPLE_ORDER)
    labels = plan.get("labels")
    if not isinstance(labels, Mapping) or not labels or len(labels) > MAX_CLASSES:
        fail(s, "labels", labels, f"must map 1 to {MAX_CLASSES} label names to values")
    for name, value in labels.items():
        if not isinstance(name, str) or not name:
            fail(s, "labels", name, "names must be non-empty strings")
        check_int(value, f"labels.{name}", s, 0, n_classes - 1)
    ignore = plan.get("ignore_label")
    if ignore is not None:
        check_int(ignore, "ignore_label", s, 0, MAX_LABEL_VALUE)
        if ignore in labels.values():
            fail(s, "ignore_label", ignore, "must not be a class's label value")
    regions, class_order = _regions(plan, n_classes, s)
    return PreprocessingSettings(normalization=schemes, target_spacing=target, resample_order_image=order,
                                 labels=freeze(dict(labels)), ignore_label=ignore, regions=regions,
                                 regions_class_order=class_order,
                                 resample_separate_z=_separate_z(plan.get("resample_separate_z"), s))


__all__ = ["MAX_INTENSITY", "MAX_SPACING_MM", "MIN_SPACING_MM", "NORMALIZATION_SCHEMES", "PreprocessingSettings",
           "preprocessing_settings"]
