"""Name -> builder registries: recipes name networks, losses, strategies and samplers; registries build them.

A *spec* is either a name (``"dice"``) or a mapping ``{"name": "dice", **kwargs}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of builders.

    >>> r = Registry("toys")
    >>> @r.register("box")
    ... def box(size=1):
    ...     return ("box", size)
    >>> r.build({"name": "box", "size": 3})
    ('box', 3)
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a builder under ``name``.

        Args:
            name: the name specs use to refer to the builder.

        Returns:
            A decorator that records the function and returns it unchanged.

        Raises:
            KeyError: when the decorated function is registered while ``name`` is already taken.
        """

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        """The builder registered as ``name``.

        Raises:
            KeyError: for an unknown name; the message lists the known ones.
        """
        try:
            return self._builders[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._builders))}") from None

    def build(self, spec: str | Mapping[str, Any], **extra: Any) -> T:
        """Build from a spec.

        Args:
            spec: a name (``"dice"``) or a mapping ``{"name": "dice", **kwargs}``.
            extra: keyword arguments passed to the builder; they win over the spec's own.

        Returns:
            What the builder returns.

        Raises:
            ValueError: when ``spec`` is neither a name nor a mapping with a ``"name"`` key.
            KeyError: for an unknown name.
        """
        name, kwargs = split_spec(spec)
        kwargs = {**kwargs, **extra}
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders


def split_spec(spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Split a spec into its name and keyword arguments.

    ``"x"`` -> ("x", {}); ``{"name": "x", "a": 1}`` -> ("x", {"a": 1}).

    Args:
        spec: a name or a mapping with a ``"name"`` key.

    Returns:
        ``(name, kwargs)``; ``kwargs`` is a new dict.

    Raises:
        ValueError: when ``spec`` is neither a string nor a mapping with a ``"name"`` key.
    """
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(f"a spec is a name or a mapping with a 'name' key, got {spec!r}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return str(spec["name"]), kwargs
