"""The resampled grid is computed and bounded before preprocessing allocates it, and every JSON file others made
that the settings, preprocessing, data, metrics, recipes and reporting code reads is read bounded: deep nesting, a
5,000-digit number or NaN give one error line (or a reported problem), never RecursionError or ValueError."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from focusseg.errors import DatasetError, ImageError, PlanError, UsageError
from focusseg.io import Geometry
from focusseg.preprocessing import preprocess_array

DEEP = "[" * 100_000
DIGITS = '{"x": ' + "9" * 5000 + "}"


def test_a_resampled_grid_over_the_voxel_limit_is_refused_before_allocating(monkeypatch: pytest.MonkeyPatch):
    img = np.ones((1, 20, 30, 10), np.float32)
    geo = Geometry(np.diag([1.0, 1.0, 3.0, 1.0]), (20, 30, 10))
    plan = {"normalization": [{"scheme": "none"}], "target_spacing": [0.01, 0.01, 0.01]}
    tracemalloc.start()
    try:
        with pytest.raises(ImageError) as err:
            preprocess_array(img, geo, plan, source="case7_0000.nii.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    text = str(err.value)
    assert text.startswith("case7_0000.nii.gz: ") and "\n" not in text, text
    assert "2000x3000x3000" in text and "18,000,000,000 voxels" in text and "voxel limit 536,870,912" in text, text
    assert peak < 8 << 20, peak  # the 72 GB float32 grid was never allocated
    plan["target_spacing"] = [1.0, 1.0, 3.0]
    assert preprocess_array(img, geo, plan, max_voxels=6000)[0].shape == (1, 20, 30, 10)
    with pytest.raises(ImageError, match="6,000 voxels, over the voxel limit 5,999"):
        preprocess_array(img, geo, plan, max_voxels=5999)
    monkeypatch.setenv("FOCUSSEG_MAX_VOXELS", "5999")
    with pytest.raises(ImageError, match="over the voxel limit 5,999"):
        preprocess_array(img, geo, plan)


@pytest.mark.parametrize("target", [[1.0, 1.0], [1.0, 0.0, 1.0], [1.0, float("nan"), 1.0], "1.0", [1.0, True, 1.0]])
def test_a_target_spacing_that_does_not_fit_the_case_is_a_plan_error(target):
    img = np.ones((1, 4, 4, 4), np.float32)
    plan = {"normalization": [{"scheme": "none"}], "target_spacing": target}
    with pytest.raises(PlanError, match="target_spacing .* must be 3 finite positive spacings"):
        preprocess_array(img, Geometry(np.eye(4), (4, 4, 4)), plan, source="c_0000.nii.gz")


@pytest.mark.parametrize("text,fragment", [(DEEP, "nested more than"), (DIGITS, "5000 digits"),
                                           ('[{"train": [NaN], "val": []}]', "NaN")])
def test_splits_recipes_and_dataset_json_are_read_bounded(tmp_path: Path, text: str, fragment: str):
    from focusseg.data.splits import read_splits
    from focusseg.io.dataset import load_dataset_spec
    from focusseg.recipes import load_recipe

    splits = tmp_path / "splits_final.json"
    splits.write_text(text)
    with pytest.raises(DatasetError, match=fragment) as err:
        read_splits(splits)
    assert err.value.path == splits
    recipe = tmp_path / "recipe.json"
    recipe.write_text(text)
    with pytest.raises(UsageError, match=f"not a readable recipe JSON .*{fragment}") as err:
        load_recipe(recipe)
    assert err.value.path == recipe
    (tmp_path / "D").mkdir()
    (tmp_path / "D" / "dataset.json").write_text(text)
    with pytest.raises(DatasetError, match=fragment):
        load_dataset_spec(tmp_path / "D")


def test_dataset_json_that_is_not_utf8_keeps_its_message(tmp_path: Path):
    from focusseg.io.dataset import load_dataset_spec

    (tmp_path / "dataset.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DatasetError, match=r"not valid JSON \(not UTF-8 text"):
        load_dataset_spec(tmp_path)


def test_the_preprocessed_store_index_and_case_properties_read_bounded(tmp_path: Path):
    from focusseg.preprocessing import PreprocessedStore

    store = PreprocessedStore(tmp_path)
    (tmp_path / "store.json").write_text(DEEP)
    (tmp_path / "c1.json").write_text(DIGITS)
    assert store.read_key() is None and store.try_properties("c1") is None  # unreadable: the case is redone
    with pytest.raises(DatasetError, match="unreadable preprocessed case properties"):
        store.properties("c1")


def test_metrics_inputs_and_report_collection_read_bounded(tmp_path: Path):
    from focusseg.metrics.evaluate import read_regions
    from focusseg.reporting.collect import read_json, read_log_lines

    plan = tmp_path / "plan.json"
    plan.write_text(DEEP)
    with pytest.raises(UsageError, match="not a readable JSON file .*nested") as err:
        read_regions(plan)
    assert err.value.path == plan
    problems: list[str] = []
    assert read_json(plan, problems) is None and "nested" in problems[0]
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"epoch": 0, "loss": 1.0}) + "\n" + DEEP + "\n" + DIGITS + "\n")
    records, events = read_log_lines(log, problems)
    assert [r["epoch"] for r in records] == [0] and not events and "2 line(s)" in problems[-1]


def test_set_values_that_json_cannot_bound_stay_text():
    from focusseg.planning.planner import parse_set

    out = parse_set([f"training.max_epochs={'9' * 5000}", f"network.x={DEEP}", "training.grad_clip=NaN",
                     "patch_size=[32,32,32]"])
    assert out["training"]["max_epochs"] == "9" * 5000 and out["network"]["x"] == DEEP
    assert out["patch_size"] == [32, 32, 32] and out["training"]["grad_clip"] != out["training"]["grad_clip"]
