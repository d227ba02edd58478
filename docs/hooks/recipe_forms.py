"""MkDocs hook: a recipe's two forms, read from its packaged JSON when the site is built.

A page line ``<!-- recipe-forms: NAME -->`` is replaced by the recipe's description, its CPU form (what the
scaled-down form changes from the paper, and the plan overrides), and its GPU form (the overrides applied on top,
and where focusseg still differs from the paper), all from ``src/focusseg/recipes/NAME.json``, so the tutorial
pages always show the recipe as shipped. An unknown name fails the build.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "src" / "focusseg" / "recipes"
MARKER = re.compile(r"^<!-- recipe-forms: ([a-z0-9-]+) -->$", flags=re.MULTILINE)


def _json_block(value: Any) -> str:
    return "```json\n" + json.dumps(value, indent=2) + "\n```"


def render(name: str) -> str:
    """The markdown for recipe ``name``'s two forms."""
    path = RECIPES / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"{path}: no such recipe (a page asks for recipe-forms: {name})")
    recipe = json.loads(path.read_text(encoding="utf-8"))
    gpu = recipe.get("gpu") or {}
    parts = [
        f"The packaged recipe `{name}` (`src/focusseg/recipes/{name}.json`, `focusseg recipes {name}`): "
        f"{recipe.get('description', '')}",
        "",
        '=== "CPU form"',
        "",
        f"    **Scaled down:** {recipe.get('scaled_down', '')}",
        "",
        *("    " + line for line in _json_block(recipe.get("plan", {})).split("\n")),
        "",
        '=== "GPU form"',
        "",
        f"    **Notes:** {gpu.get('notes', 'the same as the CPU form (this recipe has no GPU form of its own).')}",
        "",
        "    Applied on top of the CPU form:",
        "",
        *("    " + line for line in _json_block(gpu.get("plan", {})).split("\n")),
    ]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace every recipe-forms marker of a page."""
    return MARKER.sub(lambda m: render(m.group(1)), markdown)
