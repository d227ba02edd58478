"""Registry specs in a plan (``training.loss``, ``optimizer``, ``sampler``, ``network``, ...), validated but not
resolved: the registries that build them live above the settings.

A spec is ``"dice"`` or ``{"name": "dice", **kwargs}`` (:func:`focusseg.registry.split_spec`); a compound loss may
also be a mapping of part names (``{"ce": 1.0, "soft_dice": 1.0}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from focusseg.errors import PlanError
from focusseg.settings.checks import EMPTY, check_finite_json, check_mapping, fail, freeze, thaw


@dataclass(frozen=True)
class Spec:
    """A registry spec, validated but not resolved: ``"dice"`` or ``{"name": "dice", **kwargs}``
    (:func:`focusseg.registry.split_spec`). ``name`` is None only for a compound loss written as a mapping of part
    names (``{"ce": 1.0, "soft_dice": 1.0}``), whose parts are then ``kwargs``.

    Attributes:
        name: the registry name (a string), or None for a compound loss mapping.
        kwargs: the keyword arguments, read-only (:meth:`split` gives a fresh mutable copy).
    """

    name: str | None
    kwargs: Mapping[str, Any] = field(default_factory=lambda: EMPTY)

    def split(self) -> tuple[str, dict[str, Any]]:
        """``(name, kwargs)`` as :func:`focusseg.registry.split_spec` returns them (a fresh, mutable deep copy)."""
        if self.name is None:
            raise PlanError("a compound loss mapping has no registry name")
        return self.name, thaw(self.kwargs)

    def to_value(self) -> str | dict[str, Any]:
        """The spec as a plan holds it: the bare name when there are no kwargs, else a fresh dict."""
        if self.name is None:
            return thaw(self.kwargs)
        return self.name if not self.kwargs else {"name": self.name, **thaw(self.kwargs)}

    def get(self, key: str, default: Any = None) -> Any:
        """One keyword argument (``default`` when absent), as a plain value."""
        return thaw(self.kwargs[key]) if key in self.kwargs else default


def parse_spec(value: Any, path: str, source: str | Path | None = None, compound: bool = False) -> Spec:
    """``value`` as a :class:`Spec`: a non-empty name, or a mapping whose ``"name"`` is a non-empty string;
    ``compound=True`` also accepts a mapping without a name (a compound loss). Raises :class:`PlanError`."""
    if isinstance(value, str):
        if not value:
            fail(source, path, value, "must be a non-empty registry name")
        return Spec(value)
    if isinstance(value, Mapping):
        check_mapping(value, path, source)
        check_finite_json(value, path, source)
        if "name" not in value:
            if compound and value:
                return Spec(None, freeze(value))
            fail(source, path, value, "must be a name or an object with a 'name'"
                 + (" (or a compound mapping of loss parts)" if compound else ""))
        name = value["name"]
        if not isinstance(name, str) or not name:
            fail(source, f"{path}.name", name, "must be a non-empty string")
        return Spec(name, freeze({k: v for k, v in value.items() if k != "name"}))
    fail(source, path, value, "must be a registry name or an object with a 'name'")


def parse_optional_spec(value: Any, path: str, src: str | Path | None, compound: bool = False) -> Spec | None:
    """A spec (:func:`parse_spec`), or None for null/false/empty (the code treats those as "not set")."""
    return None if value in (None, False, "", {}) else parse_spec(value, path, src, compound)
