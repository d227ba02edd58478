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
