"""Layers import downwards only (README "Design"): the roles depend on torch alone; the data layer and the
strategies never import the engine; ``engine/build.py`` (parts from registries) never imports ``engine/task.py``
(tasks built from those parts). Checked on the source (every import, lazy ones inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

import focusseg

SRC = Path(focusseg.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions (``from x import y`` gives ``x`` and
    ``x.y``: ``from focusseg.engine import task`` names the task module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _sources(*parts: str) -> list[Path]:
    out: list[Path] = []
    for part in parts:
        p = SRC / part
        out.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    assert out and all(p.is_file() for p in out), parts
    return out


def test_the_roles_depend_on_torch_alone():
    focusseg_imports = {m for m in _imports(SRC / "roles.py") if m.startswith("focusseg")}
    assert focusseg_imports == set()


def test_data_and_strategies_never_import_the_engine():
    offenders = {str(p.relative_to(SRC)): sorted(m for m in _imports(p) if m.startswith("focusseg.engine"))
                 for p in _sources("data", "strategies")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_build_never_imports_task():
    assert not {m for m in _imports(SRC / "engine" / "build.py") if m.startswith("focusseg.engine.task")}


def test_the_checker_sees_lazy_imports(tmp_path: Path):
    """The checks above would pass vacuously if lazy imports inside functions were missed."""
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from focusseg.engine import task\n    import focusseg.engine.loop\n")
    assert {"focusseg.engine.task", "focusseg.engine.loop"} <= _imports(f)


# ---- the whole package against the declared layer order (docs/ARCHITECTURE.md) ----

#: Bottom to top. A module may import from its own layer (no cycles) or any layer below, never above.
LAYERS: list[set[str]] = [
    {"focusseg", "errors", "registry", "plugins", "roles", "regions", "devices", "settings"},
    {"io", "augment", "losses", "synth"},
    {"preprocessing", "metrics", "runfolder"},
    {"nets"},
    {"nnunet"},
    {"planning"},
    {"data"},
    {"inference"},
    {"strategies", "recipes"},
    {"engine"},
    {"export", "reporting"},
    {"workflows"},
    {"cli", "__main__", "api"},
]

#: focusseg's own modules are imported at the top of a module, except (1) in the CLI, where each command imports its
#: workflow when it runs (start-up cost: ``focusseg evaluate`` never imports torch), and (2) these imports, kept inside
#: functions so that a light command does not pay for a heavy dependency it does not use. Third-party packages that are
#: optional extras (SimpleITK, pydicom, highdicom, onnx, onnxruntime, safetensors, tensorboard) or heavy at start-up
#: (torch and matplotlib on the evaluate path) are imported inside the functions that need them.
LAZY_INTERNAL: dict[tuple[str, str], str] = {
    ("focusseg.metrics.evaluate", "focusseg.metrics.plots"): "matplotlib: plots are drawn only when written",
    ("focusseg.reporting.sections", "focusseg.metrics.plots"): "matplotlib: figures are drawn only when written",
    ("focusseg.workflows.evaluate", "focusseg.engine.distributed"): "torch: only under torchrun; scoring label "
                                                                     "maps needs none",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _edges(path: Path, name: str, mods: dict[str, Path]) -> list[tuple[str, bool, int]]:
    """``(imported focusseg module, inside a function, line)`` for every import in ``path``. ``from pkg import sub``
    names the submodule ``pkg.sub`` (not the package) when ``sub`` is a module; relative imports are resolved."""
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, bool, int]] = []

    def resolve(mod: str) -> str | None:
        while mod and mod not in mods:
            mod = mod.rpartition(".")[0]
        return mod or None

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (child.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in child.names if f"{base}.{a.name}" in mods]
                targets = subs if len(subs) == len(child.names) else [base, *subs]
            for t in targets:
                if t.split(".")[0] == "focusseg":
                    r = resolve(t)
                    if r and r != name:
                        out.append((r, inner, child.lineno))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return out


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "focusseg"


def _layer(module: str) -> int:
    unit = _unit(module)
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"{module}: its package {unit!r} is in no declared layer (add it to LAYERS)")


def test_every_module_imports_downward_only():
    mods = _modules()
    upward = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)}), line {line}"
              for m, p in mods.items() for t, _, line in _edges(p, m, mods) if _layer(t) > _layer(m)]
    assert upward == []


def test_no_import_cycles():
    mods = _modules()
    graph = {m: {t for t, _, _ in _edges(p, m, mods)} for m, p in mods.items()}
    # a package's __init__ that re-exports its own submodules is not a cycle with them
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and t in mods and mods[t].name == "__init__.py")}
             for m, ts in graph.items()}
    cycles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()

    def strong(v: str) -> None:  # Tarjan, iterative enough for this depth
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    assert cycles == []


def test_the_layer_checker_sees_upward_and_relative_imports(tmp_path: Path):
    """The checks above would pass vacuously if relative or lazy imports were missed."""
    f = tmp_path / "m.py"
    f.write_text("from . import task\ndef g():\n    from ..workflows import train\n")
    mods = {"focusseg.engine.m": f, "focusseg.engine.task": f, "focusseg.workflows.train": f}
    edges = {(t, lazy) for t, lazy, _ in _edges(f, "focusseg.engine.m", mods)}
    assert edges == {("focusseg.engine.task", False), ("focusseg.workflows.train", True)}
    assert _layer("focusseg.workflows.train") > _layer("focusseg.engine.m")


def test_focussegs_own_modules_are_imported_at_the_top():
    """In-function imports of focusseg modules only in the CLI and where :data:`LAZY_INTERNAL` gives the reason."""
    mods = _modules()
    lazy = [f"{m} -> {t} (line {line})" for m, p in mods.items() if not m.startswith("focusseg.cli")
            for t, inner, line in _edges(p, m, mods) if inner and (m, t) not in LAZY_INTERNAL]
    assert lazy == []
