"""Recipes: one human-readable JSON file per paper system, naming plan overrides, network, loss, sampling,
augmentation, strategies and inference settings. ``focusseg recipes`` lists them; copy one, edit it, and pass
its path to ``--recipe``."""

from __future__ import annotations

import json
from pathlib import Path

RECIPE_DIR = Path(__file__).parent


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def load_recipe(name_or_path: str | Path) -> dict:
    """A recipe by name (packaged) or by path to a JSON file."""
    p = Path(name_or_path)
    if not p.suffix == ".json":
        p = RECIPE_DIR / f"{name_or_path}.json"
    from focusseg.errors import UsageError

    if not p.is_file():
        raise UsageError(f"unknown recipe {str(name_or_path)!r}; known: {', '.join(recipe_names())} "
                         "(or give a path to a recipe .json)")
    try:
        recipe = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"not a readable recipe JSON ({' '.join(str(exc).split())})", p) from exc
    if not isinstance(recipe, dict) or not isinstance(recipe.get("plan", {}), dict):
        raise UsageError("a recipe is a JSON object whose 'plan' is an object of plan overrides", p)
    recipe.setdefault("name", p.stem)
    recipe.setdefault("plan", {})
    return recipe
