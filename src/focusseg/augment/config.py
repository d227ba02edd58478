"""Augmentation recipe: a frozen dataclass with nnU-Net v2's default probabilities and ranges.

The defaults follow nnU-Net v2 ``nnUNetTrainer.get_training_transforms`` (batchgenerators; Isensee et al.,
Nat. Methods 2021, Suppl. Note 4); the table of probabilities, ranges and granularities is in
``docs/augmentation.md``. Reading chosen where nnU-Net's 2D default differs: one ``rotation_deg`` range
(+-30 deg) for 2D and 3D, so a recipe means the same thing in both (nnU-Net rotates 2D patches by up to
+-180 deg; set it in the recipe).

Recipes are JSON: ``AugmentConfig.from_dict({"preset": "light", "p_noise": 0.2})`` starts from a preset and
overrides fields; ``to_dict()`` writes every field (tuples as lists) and round-trips.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Range = tuple[float, float]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (``p_*`` in [0, 1]), ranges (``lo <= hi``) and on/off flags of every transform.

    ``enabled=False`` switches all transforms off; each transform also has its own flag. ``mirror_axes`` are
    indices of the *spatial* axes (0 = X); ``None`` means all of them.
    """

    enabled: bool = True
    # spatial
    mirror: bool = True
    mirror_axes: tuple[int, ...] | None = None
    p_mirror: float = 0.5
    rotation: bool = True
    p_rotation: float = 0.2
    rotation_deg: Range = (-30.0, 30.0)
    scaling: bool = True
    p_scaling: float = 0.2
    scale_range: Range = (0.7, 1.4)
    # intensity
    noise: bool = True
    p_noise: float = 0.1
    noise_variance: Range = (0.0, 0.1)
    blur: bool = True
    p_blur: float = 0.2
    p_blur_per_channel: float = 0.5
    blur_sigma: Range = (0.5, 1.0)
    brightness: bool = True
    p_brightness: float = 0.15
    brightness_range: Range = (0.75, 1.25)
    contrast: bool = True
    p_contrast: float = 0.15
    contrast_range: Range = (0.75, 1.25)
    lowres: bool = True
    p_lowres: float = 0.25
    p_lowres_per_channel: float = 0.5
    lowres_zoom: Range = (0.5, 1.0)
    gamma: bool = True
    p_gamma: float = 0.3
    p_gamma_inverted: float = 0.1
    gamma_range: Range = (0.7, 1.5)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name.startswith("p_") and not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{f.name} must be in [0, 1], got {v}")
            if f.type == "Range":
                if len(v) != 2 or float(v[0]) > float(v[1]):
                    raise ValueError(f"{f.name} must be (lo, hi) with lo <= hi, got {v}")
                object.__setattr__(self, f.name, (float(v[0]), float(v[1])))
        if self.mirror_axes is not None:
            axes = tuple(int(a) for a in self.mirror_axes)
            if any(a < 0 or a > 2 for a in axes) or len(set(axes)) != len(axes):
                raise ValueError(f"mirror_axes must be distinct spatial axes in 0..2, got {self.mirror_axes}")
            object.__setattr__(self, "mirror_axes", axes)
        if self.scale_range[0] <= 0:
            raise ValueError("scale_range must be positive")
        if self.noise_variance[0] < 0 or self.blur_sigma[0] < 0:
            raise ValueError("noise_variance and blur_sigma must be >= 0")
        if not 0.0 < self.lowres_zoom[0] <= self.lowres_zoom[1] <= 1.0:
            raise ValueError("lowres_zoom must satisfy 0 < lo <= hi <= 1")
        if self.gamma_range[0] <= 0 or self.brightness_range[0] < 0:
            raise ValueError("gamma_range must be positive and brightness_range non-negative")

    # ---------------------------------------------------------------- recipes
    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready values (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> AugmentConfig:
        """Build from a JSON mapping; an optional ``"preset"`` key names the starting point (default "nnunet").

        Unknown keys raise ``ValueError`` (a typo in a recipe must not silently keep a default).
        """
        data = dict(data or {})
        base = preset(str(data.pop("preset", "nnunet")))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown augmentation options: {unknown}")
        conv = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return dataclasses.replace(base, **conv)

    def replace(self, **changes: Any) -> AugmentConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


_INTENSITY_ONLY = dict(rotation=False, scaling=False, lowres=False)
_PRESETS: dict[str, dict[str, Any]] = {
    "nnunet": {},
    # mirroring + cheap intensity transforms: no resampling (rotation, scaling, low-resolution), for tiny CPU runs
    "light": _INTENSITY_ONLY,
    "none": {"enabled": False},
}


def preset(name: str) -> AugmentConfig:
    """The named preset: ``"nnunet"`` (the defaults), ``"light"`` (mirroring, noise, blur, brightness,
    contrast and gamma; no resampling transforms) or ``"none"`` (identity)."""
    try:
        return AugmentConfig(**_PRESETS[name])
    except KeyError:
        raise KeyError(f"unknown augmentation preset {name!r}; known: {', '.join(sorted(_PRESETS))}") from None


def preset_names() -> list[str]:
    """Names accepted by :func:`preset` and by the ``"preset"`` key of :meth:`AugmentConfig.from_dict`."""
    return sorted(_PRESETS)
