"""Name -> builder registries: recipes name networks, losses, strategies and samplers; registries build them.

A *spec* is either a name (``"dice"``) or a mapping ``{"name": "dice", **kwargs}``.

Every registry remembers, per name, where the builder came from: built into focusseg (no source) or registered by
a plugin (:class:`PluginSource`: the installed distribution and its version, or the module a user named), so a
plan can record the plugin parts it uses (:mod:`focusseg.plugins`). :data:`REGISTRIES` lists every registry
made, in the order their modules were imported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class PluginSource:
    """Where a plugin came from.

    Args:
        name: the distribution's name (an installed package), or the module's name (``--plugin MODULE``).
        version: the distribution's version (None for a module that declares no ``__version__``).
        module: the module (``module`` or ``module:function``) that registers the plugin's parts.
        via: ``"entry point"`` (an installed package's ``focusseg.plugins`` entry point) or ``"module"``.
    """

    name: str
    version: str | None
    module: str
    via: str

    def describe(self) -> str:
        """``name version`` (or just the name), as messages and tables show it."""
        return f"{self.name} {self.version}" if self.version else self.name


#: Every registry made (each registers itself when created).
REGISTRIES: list[Registry] = []
_ACTIVE: list[PluginSource] = []


@contextlib.contextmanager
def registering_as(source: PluginSource) -> Iterator[None]:
    """Attribute what is registered inside the block to ``source`` (a plugin being loaded).

    Builders defined in focusseg's own modules (the built-ins, registered when a plugin imports a focusseg module
    for the first time) stay built-in.

    Args:
        source: the plugin being loaded.

    Returns:
        A context manager.
    """
    _ACTIVE.append(source)
    try:
        yield
    finally:
        _ACTIVE.pop()


def active_source() -> PluginSource | None:
    """The plugin being loaded (:func:`registering_as`), or None."""
    return _ACTIVE[-1] if _ACTIVE else None


def _is_builtin(fn: Any) -> bool:
    module = getattr(fn, "__module__", None) or ""
    return module == "focusseg" or module.startswith("focusseg.")


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
        self._sources: dict[str, PluginSource] = {}
        REGISTRIES.append(self)

    def register(self, name: str, source: PluginSource | None = None
                 ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a builder under ``name``.

        Args:
            name: the name specs use to refer to the builder.
            source: the plugin registering it; default: the plugin being loaded (:func:`registering_as`) unless
                the builder is defined in focusseg itself.

        Returns:
            A decorator that records the function and returns it unchanged.

        Raises:
            KeyError: when the decorated function is registered while ``name`` is already taken.
        """

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = fn
            owner = source if source is not None else (None if _is_builtin(fn) else active_source())
            if owner is not None:
                self._sources[name] = owner
            return fn

        return deco

    def source(self, name: str) -> PluginSource | None:
        """The plugin that registered ``name``; None for a built-in (or an unknown name).

        Args:
            name: a registered name.

        Returns:
            The :class:`PluginSource`, or None.
        """
        return self._sources.get(name)

    def plugin_names(self) -> dict[str, PluginSource]:
        """Every name a plugin registered here, with its plugin.

        Returns:
            ``{name: PluginSource}``, sorted by name.
        """
        return dict(sorted(self._sources.items()))

    def register_source(self, name: str, source: PluginSource) -> None:
        """Attribute the registered ``name`` to ``source`` (a plugin whose version is known only once loaded).

        Args:
            name: a registered name.
            source: its plugin.

        Raises:
            KeyError: for an unknown name.
        """
        self.get(name)
        self._sources[name] = source

    def adopt(self, module: str, source: PluginSource) -> list[str]:
        """Attribute to ``source`` the names registered without a plugin whose builders are defined in ``module``
        or its submodules (a plugin module imported before it was loaded as a plugin).

        Args:
            module: a top-level module name.
            source: the plugin.

        Returns:
            The names now attributed to ``source``.
        """
        adopted = []
        for name, fn in self._builders.items():
            mod = getattr(fn, "__module__", None) or ""
            if name not in self._sources and (mod == module or mod.startswith(module + ".")):
                self._sources[name] = source
                adopted.append(name)
        return adopted

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
        """Every registered name, sorted."""
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
