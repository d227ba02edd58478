"""The plan's ``network`` spec as a typed, frozen, validated object (:func:`network_settings`): the network's
registry name and its builder's keyword arguments (any keys; each network validates its own), with the widths,
stage counts and dropout a plan commonly sets checked against the cost bounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from focusseg.settings.checks import (
    EMPTY,
    MAX_STAGES,
    MAX_WIDTH,
    check_bool,
    check_float,
    check_int,
    fail,
    thaw,
)
from focusseg.settings.spec import Spec, parse_spec


@dataclass(frozen=True)
class NetworkSettings:
    """The plan's ``network`` spec: the network's registry name and its builder's keyword arguments (any keys:
    each network validates its own). The widths, stage counts and dropout a plan commonly sets are checked here
    against the cost bounds.

    Attributes:
        name: the network's registry name.
        kwargs: the builder's keyword arguments, read-only (:meth:`split` gives a mutable copy).
    """

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=lambda: EMPTY)

    @property
    def spec(self) -> Spec:
        """The network as a registry :class:`~focusseg.settings.spec.Spec`."""
        return Spec(self.name, self.kwargs)

    @property
    def deep_supervision(self) -> bool:
        """Whether the network is built with deep-supervision heads (its ``deep_supervision`` kwarg)."""
        return bool(self.kwargs.get("deep_supervision"))

    def get(self, key: str, default: Any = None) -> Any:
        """One keyword argument as a plain value (``default`` when absent)."""
        return thaw(self.kwargs[key]) if key in self.kwargs else default

    def split(self) -> tuple[str, dict[str, Any]]:
        """``(name, kwargs)`` as :func:`focusseg.registry.split_spec` returns them (a fresh, mutable copy)."""
        return self.name, thaw(self.kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a plan holds it (``{"name": ..., **kwargs}``); parsing it gives an equal object."""
        return {"name": self.name, **thaw(self.kwargs)}


def _widths(v: Any, path: str, src: str | Path | None) -> None:
    if not isinstance(v, (list, tuple)) or not 0 < len(v) <= MAX_STAGES + 2:
        fail(src, path, v, f"must be a list of 1 to {MAX_STAGES + 2} widths")
    for i, w in enumerate(v):
        check_int(w, f"{path}[{i}]", src, 1, MAX_WIDTH)


def network_settings(plan: Mapping[str, Any], source: str | Path | None = None) -> NetworkSettings | None:
    """The plan's ``network`` spec, validated (None when the plan has none).

    Args:
        plan: the plan (only its ``network`` is read).
        source: the plan's file, named in the error message.

    Returns:
        the frozen :class:`NetworkSettings`, or None.

    Raises:
        PlanError: not a spec; NaN/inf in its arguments; widths above :data:`MAX_WIDTH`, more than
            :data:`MAX_STAGES` stages, a non-boolean ``deep_supervision`` or a dropout outside ``[0, 1)``.
    """
    raw = plan.get("network") if isinstance(plan, Mapping) else None
    if raw is None:
        return None
    spec = parse_spec(raw, "network", source)
    kw, s = spec.kwargs, source
    for key in ("channels", "features"):
        if key in kw:
            _widths(kw[key], f"network.{key}", s)
    for key in ("base_features", "max_features"):
        if key in kw:
            check_int(kw[key], f"network.{key}", s, 1, MAX_WIDTH)
    if "n_stages" in kw:
        check_int(kw["n_stages"], "network.n_stages", s, 1, MAX_STAGES)
    for key in ("strides", "kernel_sizes"):
        if key in kw and (not isinstance(kw[key], (list, tuple)) or len(kw[key]) > MAX_STAGES):
            fail(s, f"network.{key}", kw[key], f"must be a list of at most {MAX_STAGES} entries")
    if "deep_supervision" in kw:
        check_bool(kw["deep_supervision"], "network.deep_supervision", s)
    if kw.get("dropout") is not None:
        check_float(kw["dropout"], "network.dropout", s, 0.0, 1.0, hi_open=True)
    return NetworkSettings(str(spec.name), kw)
