"""The documentation site builds with ``mkdocs build --strict`` and documents what the code has.

Strict mode fails the build on any warning: a broken link or anchor, a page left out of the navigation, a
docstring mkdocstrings cannot render. On top of that the CLI reference (generated from the commands by
``docs/hooks/cli_reference.py``) must list every command of ``focusseg.cli.app`` with every option, the API
reference must hold each public module's page, and the pages made from the repository's own files (benchmarks,
changelog, the README's guarantees) must be there.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEEDED = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
MISSING = [name for name in NEEDED if importlib.util.find_spec(name.split(".")[0]) is None
           or importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"the docs packages are not installed ({', '.join(MISSING)}): pip install -e '.[docs]'")

#: Public modules whose API page the site must have; api and plugins only once their source exists.
API_MODULES = ["errors", "registry", "settings"] + [m for m in ("api", "plugins")
                                                     if (ROOT / "src" / "focusseg" / f"{m}.py").is_file()]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built once for this module, strictly, from the repository root with this interpreter's mkdocs."""
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{output[-4000:]}"
    assert not re.search(r"^WARNING\b", output, flags=re.MULTILINE), output[-4000:]
    return out


def _cli_commands() -> dict:
    import typer

    from focusseg.cli import app

    group = typer.main.get_command(app)
    return {name: cmd for name, cmd in group.commands.items() if not getattr(cmd, "hidden", False)}


def test_strict_build_writes_the_home_page(site: Path) -> None:
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "focusseg" in home and "Two commands" in home and "getting-started/" in home


def test_cli_reference_lists_every_command_and_option(site: Path) -> None:
    page = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    commands = _cli_commands()
    assert len(commands) >= 15
    for name, cmd in commands.items():
        assert f'id="{name}"' in page, f"no section for `focusseg {name}` in the CLI reference"
        assert f"focusseg {name} [OPTIONS]" in page, f"no usage line for `focusseg {name}`"
        for param in cmd.params:
            if getattr(param, "hidden", False) or getattr(param, "param_type_name", "") == "argument":
                continue
            assert param.opts[0] in page, f"option {param.opts[0]} of `focusseg {name}` missing"
    # nothing documented that the CLI does not have
    documented = set(re.findall(r'<h2 id="([a-z0-9-]+)"', page))
    assert documented == set(commands), documented ^ set(commands)


@pytest.mark.parametrize("module", API_MODULES)
def test_api_reference_page_exists(site: Path, module: str) -> None:
    path = site / "reference" / "api" / module / "index.html"
    assert path.is_file(), f"no API page for focusseg.{module} (add docs/reference/api/{module}.md to the nav)"
    page = path.read_text(encoding="utf-8")
    assert f'id="focusseg.{module}"' in page, f"the page does not render focusseg.{module} (::: focusseg.{module})"


def test_pages_made_from_repository_files(site: Path) -> None:
    benchmarks = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert "focusseg benchmarks" in benchmarks
    assert (site / "changelog" / "index.html").is_file()
    guarantees = (site / "concepts" / "guarantees" / "index.html").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "## What focusseg guarantees" in readme
    assert "inputs are never modified" in guarantees and "NaN never passes silently" in guarantees
