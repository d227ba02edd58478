"""Plugins: code a user installed or named that registers networks, losses, samplers, class weighters, LR
controllers, augmentations and recipes in the registries the built-ins use.

Where plugin code comes from, and only from there:

* an installed distribution's entry point in the group :data:`ENTRY_POINT_GROUP` (``focusseg.plugins``); its
  value is a module (imported) or ``module:function`` (imported, then the function is called);
* a module the user names (``focusseg --plugin MODULE`` or ``focusseg.load_plugins(["MODULE"])``): imported, and
  its ``register()`` called when it has one.

Nothing is ever imported because a run folder, a model bundle or a plan names it: a plan records the plugin parts
it uses (:func:`plan_plugins`: ``plan["plugins"] = [{"name", "version", "parts": ["network:tiny_resunet", ...]}]``)
and a run whose plugin is absent is refused in one line naming the plugin to install (:func:`require_plugins`).

The augmentations and recipes a plugin offers live here (:data:`AUGMENTATIONS`, :data:`RECIPES`); a plan stores an
augmentation's options and a recipe's overrides themselves, so training and predicting do not need them again.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from focusseg.errors import FocussegError, PlanError, UsageError, one_line
from focusseg.registry import REGISTRIES, PluginSource, Registry, registering_as

#: The entry-point group an installed plugin declares (``[project.entry-points."focusseg.plugins"]``).
ENTRY_POINT_GROUP = "focusseg.plugins"

#: Augmentations by name: a builder returning augmentation options (``AugmentConfig.from_dict`` input).
AUGMENTATIONS: Registry[Mapping[str, Any]] = Registry("augmentation")
#: Recipes by name: a builder returning a recipe (a dict) or the path of a recipe JSON file.
RECIPES: Registry[Any] = Registry("recipe")

#: Kinds whose part a plan stores itself (the augmentation's options, the recipe's overrides): recorded in the
#: plan, not needed to train or predict it again.
STORED_KINDS = ("augmentation", "recipe")
#: Bounds on a plan's ``plugins`` record (read from files others made).
MAX_PLUGINS = 64
MAX_PARTS = 256
MAX_TEXT = 200
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*)?$")

_loaded: dict[str, PluginSource] = {}
_entry_points_loaded = False


class PluginError(FocussegError, RuntimeError):
    """A plugin that cannot be loaded (its import or its registration failed)."""


class MissingPluginError(PlanError):
    """A run or plan that needs a plugin part this environment lacks; the message names the plugin to install."""


def _import(target: str) -> Any:
    """``module`` or ``module:attribute``: the module, or the attribute of it."""
    module, _, attr = target.partition(":")
    mod = importlib.import_module(module)
    return getattr(mod, attr) if attr else mod


def _run(target: str, source: PluginSource) -> None:
    """Import ``target`` (and call it, or its module's ``register()``) with registrations attributed to ``source``."""
    before = {id(r): len(r.names()) for r in REGISTRIES}
    with registering_as(source):
        obj = _import(target)
        registered = any(len(r.names()) != before.get(id(r), 0) for r in REGISTRIES)
        if callable(obj) and not isinstance(obj, type(sys)):
            obj()
        elif not registered and callable(getattr(obj, "register", None)):
            obj.register()
    top = target.partition(":")[0].split(".")[0]
    for r in REGISTRIES:  # a plugin module imported earlier registered without a plugin context
        r.adopt(top, source)


def load_entry_points() -> list[PluginSource]:
    """Load every installed plugin (entry-point group :data:`ENTRY_POINT_GROUP`), once per process.

    Returns:
        The plugins loaded by this call (empty when they were loaded before).

    Raises:
        PluginError: a plugin whose import or registration failed (naming the distribution).
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    out = []
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        key = f"entry point {ep.value}"
        if key in _loaded:
            continue
        dist = getattr(ep, "dist", None)
        name = dist.name if dist is not None else ep.name
        version = dist.version if dist is not None else None
        source = PluginSource(name=name, version=version, module=ep.value, via="entry point")
        try:
            _run(ep.value, source)
        except Exception as exc:  # a plugin's own code raises anything
            raise PluginError(f"plugin {source.describe()} (entry point {ep.value}) failed to load "
                              f"({one_line(exc, typed=True)[:300]})",
                              hint=f"fix or uninstall it: pip uninstall {name}") from exc
        _loaded[key] = source
        out.append(source)
    return out


def load_module(target: str) -> PluginSource:
    """Load the plugin module a user named: ``MODULE`` (imported; its ``register()`` called when importing
    registered nothing) or ``MODULE:FUNCTION`` (imported, then the function is called). Once per process.

    Args:
        target: an importable module name, optionally with ``:function``.

    Returns:
        The plugin's :class:`PluginSource`.

    Raises:
        UsageError: a name that is not a module name, or a module that cannot be found.
        PluginError: the module's import or registration failed.
    """
    target = str(target).strip()
    if not _MODULE.match(target):
        raise UsageError(f"--plugin {target!r} is not a module name (MODULE or MODULE:FUNCTION)")
    key = f"module {target}"
    if key in _loaded:
        return _loaded[key]
    module = target.partition(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise UsageError(f"--plugin {target}: no importable module {module!r}",
                         hint="install the plugin, or put its folder on PYTHONPATH")
    top = sys.modules.get(module)
    version = getattr(top, "__version__", None) if top is not None else None
    source = PluginSource(name=module.split(".")[0], version=version, module=target, via="module")
    try:
        _run(target, source)
    except Exception as exc:  # a plugin's own code raises anything
        raise PluginError(f"plugin module {target} failed to load ({one_line(exc, typed=True)[:300]})") from exc
    loaded = sys.modules.get(module)
    declared = getattr(loaded, "__version__", None)
    if isinstance(declared, str) and declared != version:  # known only after the import
        source = PluginSource(source.name, declared, source.module, source.via)
        for r in REGISTRIES:
            for name, s in r.plugin_names().items():
                if s.module == target:
                    r.register_source(name, source)
    _loaded[key] = source
    return source


def load_plugins(modules: Iterable[str] = (), entry_points: bool = True) -> list[PluginSource]:
    """Load the installed plugins (entry points) and the modules a user named.

    Args:
        modules: module names (``MODULE`` or ``MODULE:FUNCTION``) to load as plugins.
        entry_points: also load every installed plugin (once per process).

    Returns:
        Every plugin loaded so far in this process.

    Raises:
        UsageError: a module name that cannot be found.
        PluginError: a plugin whose import or registration failed.
    """
    for m in modules:
        load_module(m)
    if entry_points:
        load_entry_points()
    return loaded_plugins()


def loaded_plugins() -> list[PluginSource]:
    """The plugins loaded in this process, in loading order.

    Returns:
        Their :class:`PluginSource` records.
    """
    return list(_loaded.values())


def plugin_parts() -> list[tuple[PluginSource, str, str]]:
    """Every registry entry a plugin registered.

    Returns:
        ``(plugin, kind, name)`` rows, by plugin then kind then name.
    """
    rows = [(src, r.kind, name) for r in REGISTRIES for name, src in r.plugin_names().items()]
    return sorted(rows, key=lambda t: (t[0].name, t[1], t[2]))


def _registry(kind: str) -> Registry | None:
    for r in REGISTRIES:
        if r.kind == kind:
            return r
    return None


def _spec_name(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        return value["name"]
    return None


def _strings(value: Any, depth: int = 0) -> Iterable[str]:
    """Every string of a nested spec (names and mapping keys): a loss names its parts either way."""
    if depth > 16:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v, depth + 1)


def used_names(plan: Mapping[str, Any]) -> dict[str, set[str]]:
    """The registry names a plan uses, by registry kind.

    Args:
        plan: a plan.

    Returns:
        ``{kind: {names}}`` for network, loss, sampler, class weighter, lr controller, optimizer, augmentation
        and postprocessor.
    """
    tr = plan.get("training") if isinstance(plan.get("training"), Mapping) else {}
    inf = plan.get("inference") if isinstance(plan.get("inference"), Mapping) else {}
    out: dict[str, set[str]] = {}

    def add(kind: str, name: str | None) -> None:
        if name:
            out.setdefault(kind, set()).add(name)

    add("network", _spec_name(plan.get("network")))
    for name in _strings(tr.get("loss")):
        add("loss", name)
    add("sampler", _spec_name(tr.get("sampler")))
    add("class weighter", _spec_name(tr.get("class_weighter")))
    add("lr controller", _spec_name(tr.get("lr_schedule")))
    add("optimizer", _spec_name(tr.get("optimizer")))
    aug = tr.get("augmentation")
    add("augmentation", aug if isinstance(aug, str) else (aug or {}).get("preset") if isinstance(aug, Mapping)
        else None)
    for name in _strings(inf.get("postprocessing")):
        add("postprocessor", name)
    return out


def plan_plugins(plan: Mapping[str, Any], also: Mapping[str, str | None] | None = None,
                 keep: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """The plugin record of a plan: one entry per plugin whose registered names the plan uses.

    Args:
        plan: a finished plan.
        also: names the plan no longer shows, by kind: the recipe applied, an augmentation whose options the
            plan stores.
        keep: an earlier record's entries; their :data:`STORED_KINDS` parts are kept (the plan stores those).

    Returns:
        ``[{"name", "version", "parts": ["kind:name", ...]}]`` sorted by plugin name; empty when the plan uses
        built-ins only.
    """
    found: dict[tuple[str, str | None], set[str]] = {}
    used = used_names(plan)
    for kind, name in (also or {}).items():
        if name:
            used.setdefault(kind, set()).add(name)
    for kind, names in used.items():
        registry = _registry(kind)
        for name in names:
            src = registry.source(name) if registry is not None else None
            if src is not None:
                found.setdefault((src.name, src.version), set()).add(f"{kind}:{name}")
    for entry in keep:
        for part in entry.get("parts", []):
            if part.partition(":")[0] in STORED_KINDS:
                found.setdefault((entry["name"], entry.get("version")), set()).add(part)
    return [{"name": n, "version": v, "parts": sorted(parts)} for (n, v), parts in sorted(found.items(),
                                                                                             key=lambda t: t[0][0])]


def expand_augmentation(plan: dict[str, Any], path: str | Path | None = None) -> str | None:
    """Replace a plugin augmentation named by ``training.augmentation`` (a name, or ``{"preset": name, ...}``)
    with its options (the named options first, the plan's own on top), so the plan stores what trains.

    Args:
        plan: the plan, changed in place.
        path: the plan's file, named in an error.

    Returns:
        The plugin augmentation's name, or None when the plan names none.

    Raises:
        PlanError: a plugin augmentation whose builder does not return an object of options.
    """
    tr = plan.get("training")
    aug = tr.get("augmentation") if isinstance(tr, dict) else None
    name = aug if isinstance(aug, str) else aug.get("preset") if isinstance(aug, Mapping) else None
    if not isinstance(name, str) or name not in AUGMENTATIONS or AUGMENTATIONS.source(name) is None:
        return None
    options = AUGMENTATIONS.build(name)
    if not isinstance(options, Mapping):
        raise PlanError(f"plugin augmentation {name!r} gives {type(options).__name__}, not an object of "
                        "augmentation options", path)
    own = {k: v for k, v in aug.items() if k != "preset"} if isinstance(aug, Mapping) else {}
    tr["augmentation"] = {**dict(options), **own}
    return name


def read_record(plan: Mapping[str, Any], path: str | Path | None = None) -> list[dict[str, Any]]:
    """A plan's plugin record, checked (it may come from someone else's file): a list of at most
    :data:`MAX_PLUGINS` objects with a string ``name``, a string or null ``version`` and a list of ``kind:name``
    strings ``parts``. Nothing in it is ever imported.

    Args:
        plan: the plan.
        path: its file, named in an error.

    Returns:
        The record (empty when the plan has none).

    Raises:
        PlanError: a record of another shape.
    """
    record = plan.get("plugins", [])
    if record is None:
        return []

    def text(v: Any) -> bool:
        return isinstance(v, str) and 0 < len(v) <= MAX_TEXT and v.isprintable()

    if not isinstance(record, list) or len(record) > MAX_PLUGINS:
        raise PlanError(f"plugins must be a list of at most {MAX_PLUGINS} plugin records", path)
    for entry in record:
        ok = (isinstance(entry, Mapping) and text(entry.get("name"))
              and (entry.get("version") is None or text(entry.get("version")))
              and isinstance(entry.get("parts"), list) and len(entry["parts"]) <= MAX_PARTS
              and all(text(p) and ":" in p for p in entry["parts"]))
        if not ok:
            raise PlanError('each plugins entry must be {"name": text, "version": text or null, "parts": '
                            '["kind:name", ...]}', path)
    return [dict(e) for e in record]


def install_hint(entry: Mapping[str, Any]) -> str:
    """How to get a plugin back: ``pip install NAME==VERSION`` (or ``--plugin MODULE`` for a module)."""
    name, version = entry["name"], entry.get("version")
    pin = f"=={version}" if version else ""
    return f"install it (pip install {name}{pin}), or name its module with focusseg --plugin MODULE"


def require_plugins(plan: Mapping[str, Any], path: str | Path | None = None,
                    kinds: Sequence[str] | None = None, builtin: Mapping[str, Iterable[str]] | None = None) -> None:
    """Refuse a plan that uses a registry name this environment lacks while its plugin record says a plugin
    provided it, naming the plugin to install. Installed plugins (entry points) are loaded first; nothing the
    plan names is imported. An unknown name the record does not explain is left to the caller's own message.

    Args:
        plan: the plan (the names it uses, its ``plugins`` record).
        path: the plan's file, named in an error.
        kinds: check only names of these registry kinds (default: every kind :func:`used_names` reports).
        builtin: names of a kind that exist without a registry entry (the augmentation presets).

    Raises:
        MissingPluginError: a name a recorded plugin provided that is not registered.
        PlanError: a malformed record.
        PluginError: an installed plugin that fails to load.
    """
    for kind, names in sorted(used_names(plan).items()):
        registry = _registry(kind)
        if registry is None or (kinds is not None and kind not in kinds):
            continue  # a registry not in use here (a loss while predicting) is not this caller's business
        for name in sorted(names):
            if name in registry or name in set((builtin or {}).get(kind, ())):
                continue
            if missing_name_error(kind, name, plan, path) is None:
                continue  # not a recorded plugin part: the caller's own unknown-name message applies
            load_entry_points()
            error = None if name in registry else missing_name_error(kind, name, plan, path)
            if error is not None:
                raise error


def missing_name_error(kind: str, name: str, plan: Mapping[str, Any],
                       path: str | Path | None = None) -> FocussegError | None:
    """The error for a plan naming an unknown ``kind`` ``name``: a :class:`MissingPluginError` when the plan's
    record says a plugin provided it, else None (the caller's own unknown-name message applies).

    Args:
        kind: the registry kind (``network``).
        name: the unknown name.
        plan: the plan (its ``plugins`` record).
        path: the plan's file, named in the error.

    Returns:
        The error to raise, or None.
    """
    try:
        record = read_record(plan, path)
    except PlanError as exc:
        return exc
    for entry in record:
        if f"{kind}:{name}" in entry["parts"]:
            version = f" {entry['version']}" if entry.get("version") else ""
            return MissingPluginError(f"needs plugin {entry['name']}{version} for its {kind} {name!r}, which is "
                                      f"not installed; {install_hint(entry)}", path)
    return None


__all__ = ["AUGMENTATIONS", "ENTRY_POINT_GROUP", "MissingPluginError", "PluginError", "PluginSource", "RECIPES",
           "STORED_KINDS", "expand_augmentation", "install_hint", "load_entry_points", "load_module", "load_plugins",
           "loaded_plugins", "missing_name_error", "plan_plugins", "plugin_parts", "read_record", "require_plugins",
           "used_names"]
