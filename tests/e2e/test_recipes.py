"""Every packaged recipe runs end to end (plan -> preprocess -> train -> validate -> predict) on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from focusseg_testdata import write_tiny_dataset

from focusseg.recipes import load_recipe, recipe_names
from focusseg.workflows.train import run_training

SMOKE = {"patch_size": [16, 16, 16], "batch_size": 2,
         "training": {"max_epochs": 2, "iterations_per_epoch": 2, "augmentation": "light", "amp": "none"},
         "inference": {"mirror_axes": [0]}}


def test_recipes_listed():
    assert {"fp-pet", "blob-valdo", "flare21-fast", "runtime-freezing", "cycle-flare21", "default"} <= set(
        recipe_names())
    for name in recipe_names():
        r = load_recipe(name)
        assert r["description"] and "scaled_down" in r


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_smoke(tmp_path: Path, name: str):
    torch.manual_seed(0)
    data = write_tiny_dataset(tmp_path / "D", n_cases=4)
    recipe = load_recipe(name)
    summary = run_training(data, tmp_path / "run", fold=0, recipe=recipe, overrides=SMOKE, progress=False)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["recipe"] == name
    assert summary["iterations"] == 4 and summary["final_validation"]["mean_dice"] is not None
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["train_loss"] == r["train_loss"] for r in log)  # not NaN
    if plan["training"].get("class_weighter"):
        assert "class_weights" in log[-1]
    if plan["training"]["sampler"]["name"] == "focused_practice":
        assert "threshold" in log[-1]["sampler"]
