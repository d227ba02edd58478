"""Mechanical rules over every ``.py`` under ``src/focusseg``, read as source (nothing is imported).

1. The source reads as documentation for a user: no "issue N" / "issue #N" references to a tracker the user
   cannot see, no path into ``../shared`` and no mention of ``REFERENCE_FACTS`` (files a user does not have).
2. No private name crosses a module boundary: a ``from focusseg... import _x`` (other than ``__version__``), or an
   import of a module whose dotted path has a component starting with ``_`` (``focusseg.losses._common``) from a
   file outside that private module's package (``losses/`` may use ``_common``, ``data/`` may not).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import focusseg

SRC = Path(focusseg.__file__).resolve().parent
ISSUE_REF = re.compile(r"\bissue\s*#?\s*\d+", re.IGNORECASE)
FORBIDDEN_TEXT = ("../shared", "REFERENCE_FACTS")
ALLOWED_PRIVATE_NAMES = {"__version__", "__future__"}


def _sources() -> list[Path]:
    files = sorted(SRC.rglob("*.py"))
    assert files
    return files


def _module_name(path: Path) -> str:
    """``src/focusseg/losses/blob.py`` -> ``focusseg.losses.blob``; a package's ``__init__.py`` -> the package."""
    parts = ("focusseg",) + path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    """Whether ``dotted`` (``focusseg.x.y``) names a module or package in the source tree."""
    rel = Path(*dotted.split(".")[1:])
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str | None:
    """The absolute module an ``ImportFrom`` reads from (relative imports resolved), or None outside focusseg."""
    if node.level == 0:
        module = node.module or ""
    else:
        base = importer.split(".") if is_package else importer.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    return module if module == "focusseg" or module.startswith("focusseg.") else None


def _private_module_violation(module: str, importer: str) -> str | None:
    """The reason ``importer`` may not import ``module``, if a component of ``module`` is private and
    ``importer`` lies outside the package that holds that private component."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and part not in ALLOWED_PRIVATE_NAMES:
            package = ".".join(parts[:i])
            if importer != package and not importer.startswith(package + "."):
                return f"imports private module {module} from outside {package}"
            return None
    return None


def _private_import_violations(path: Path) -> list[str]:
    return _violations_in(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py",
                          str(path.relative_to(SRC.parent)))


def _violations_in(source: str, importer: str, is_package: bool, label: str) -> list[str]:
    """Every private import in ``source``, the code of module ``importer``; each line names ``label:lineno``."""
    out: list[str] = []
    for node in ast.walk(ast.parse(source)):
        where = f"{label}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("focusseg."):
                    reason = _private_module_violation(alias.name, importer)
                    if reason:
                        out.append(f"{where}: {reason}")
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node, importer, is_package)
            if module is None:
                continue
            reason = _private_module_violation(module, importer)
            if reason:
                out.append(f"{where}: {reason}")
                continue
            for alias in node.names:
                name = alias.name
                if not name.startswith("_") or name in ALLOWED_PRIVATE_NAMES:
                    continue
                if _is_module(f"{module}.{name}"):
                    reason = _private_module_violation(f"{module}.{name}", importer)
                    if reason:
                        out.append(f"{where}: {reason}")
                else:
                    out.append(f"{where}: imports private name {name} from {module}")
    return out


def test_no_tracker_references_or_private_paths_in_the_source():
    found: list[str] = []
    for path in _sources():
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.relative_to(SRC.parent)}:{lineno}"
            match = ISSUE_REF.search(line)
            if match:
                found.append(f"{where}: {match.group(0)!r}")
            found.extend(f"{where}: {text!r}" for text in FORBIDDEN_TEXT if text in line)
    assert not found, "references a user cannot follow:\n" + "\n".join(found)


def test_no_private_name_is_imported_from_another_module():
    found = [v for path in _sources() for v in _private_import_violations(path)]
    assert not found, "private names crossing a module boundary:\n" + "\n".join(found)


def test_the_private_import_rule_itself():
    """The rule on made-up modules: a private module is free inside its package, refused outside it."""
    assert _private_module_violation("focusseg.losses._common", "focusseg.losses.blob") is None
    assert _private_module_violation("focusseg.losses._common", "focusseg.losses") is None
    assert _private_module_violation("focusseg.losses._common", "focusseg.data.loader") is not None
    assert _private_module_violation("focusseg.losses.dice", "focusseg.data.loader") is None
    code = "\n".join([
        "from focusseg.reporting.report import _stamp",  # a private name: refused
        "from focusseg.losses._common import flat",  # a private module from outside losses/: refused
        "from focusseg.losses import _common",  # the same, spelled as a name
        "from ..losses._build import LOSSES",  # the same, relative
        "from focusseg import __version__",  # allowed
        "from focusseg.losses.dice import DiceLoss",  # public: allowed
        "from focusseg.nets import dynunet as _dynunet",  # a private alias of a public module: allowed
    ])
    found = _violations_in(code, "focusseg.data.loader", False, "loader.py")
    assert [v.split(":")[1] for v in found] == ["1", "2", "3", "4"], found
    assert _violations_in("from focusseg.losses._common import flat", "focusseg.losses.dice", False, "x") == []
    assert _violations_in("from ._common import flat", "focusseg.losses", True, "x") == []
