"""focusseg.settings: the plan's training / inference / network sections as typed, frozen, validated objects.

Defaults equal what the read sites applied before (spot-checked against the planner's plan and the builders),
every refusal is one PlanError line naming the field, the objects are frozen and survive a to_dict round trip."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest

from focusseg.errors import PlanError
from focusseg.planning.planner import deep_merge, make_plan
from focusseg.recipes import load_recipe, recipe_names, recipe_plan
from focusseg.settings import (
    MAX_CLASSES,
    MAX_NOISE_PASSES,
    MAX_PATCH_VOXELS,
    InferenceSettings,
    Spec,
    TrainingSettings,
    inference_settings,
    network_settings,
    parse_plan_settings,
    training_settings,
)


def _fp() -> dict:
    return {"dataset": "x", "n_cases": 100, "channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1},
            "median_spacing": [1.0, 1.0, 1.0], "spacing_percentile_10": [1.0, 1.0, 1.0],
            "median_shape_after_crop": [36, 50, 35], "median_crop_fraction": 1.0,
            "intensity": [{"channel": "CT", "mean": 40.0, "std": 100.0, "percentile_00_5": -900.0,
                           "percentile_99_5": 1200.0}]}


@pytest.fixture(scope="module")
def plan() -> dict:
    """The planner's Hippocampus-like CPU plan."""
    return make_plan(_fp(), device="cpu")


def test_empty_sections_take_the_defaults_the_code_used():
    tr, inf = training_settings({}), inference_settings({"inference": None})
    assert tr == TrainingSettings() and inf == InferenceSettings()
    # engine/task.py: grad_clip 12.0, task "supervised", channels_last/compile off
    assert tr.grad_clip == 12.0 and tr.task is None and tr.task_name == "supervised"
    assert tr.channels_last is False and tr.compile is False and tr.compile_spec() is False
    # engine/build.py: sampler "foreground" with p_foreground 0.33, augmentation "nnunet", lr 0.01
    assert tr.sampler == Spec("foreground") and tr.foreground_oversampling == 0.33
    assert tr.augmentation_options() == {"preset": "nnunet"} and tr.lr == 0.01
    # engine/loop.py + engine/validation.py: seed 0, 25 non-finite steps, patches every epoch, 32 patches,
    # whole volumes every 10 epochs, every validation case
    assert (tr.seed, tr.max_nonfinite_steps, tr.validation, tr.val_every) == (0, 25, "patches", 1)
    assert (tr.val_patches, tr.val_full_every, tr.val_max_cases) == (32, 10, None)
    # data/loader.py: no loader options, not in memory; no fine-tuning entry
    assert tr.loader is None and tr.in_memory is False and tr.init_from is None
    # keys without a single default: None (each reader keeps its own)
    assert tr.amp is None and tr.loss is None and tr.optimizer is None and tr.max_epochs is None
    # inference/predictor.py + export/graph.py: no mirrors, batch 2, no noise passes (sigma 0.1, seed 0), "auto"
    assert (inf.mirror_axes, inf.batch_size, inf.noise_passes, inf.noise_sigma, inf.noise_seed) == ((), 2, 0, 0.1, 0)
    assert inf.postprocessing == "auto" and inf.overlap is None and inf.tta_passes == 1


def test_null_and_falsy_values_mean_what_the_read_sites_made_of_them():
    tr = training_settings({"training": {"grad_clip": None, "sampler": None, "task": None, "val_patches": 0,
                                         "validation": None, "val_max_cases": 0, "class_weighter": {},
                                         "deep_supervision": False, "compile": None, "init_from": {},
                                         "amp": False}})
    assert tr.grad_clip is None  # null: no clipping (not the 12.0 default)
    assert tr.sampler == Spec("foreground") and tr.task_name == "supervised" and tr.val_patches == 32
    assert tr.validation == "patches" and tr.val_max_cases is None and tr.class_weighter is None
    assert tr.deep_supervision is None and tr.compile is False and tr.init_from is None
    assert tr.amp == "false"  # --set training.amp=false: no autocast, as str(False).lower() gave
    assert training_settings({"training": {"validation": "Volumes"}}).validation == "volumes"
    assert inference_settings({"inference": {"mirror_axes": None}}).mirror_axes == ()


def test_the_planner_plan_reads_as_written(plan):
    s = parse_plan_settings(plan, "run/plan.json")
    tr, inf = s.training, s.inference
    assert s.n_classes == 2 and s.in_channels == 1 and s.patch_size == tuple(plan["patch_size"])
    assert tr.loss == Spec(None, {"ce": 1.0, "soft_dice": 1.0}) and tr.loss.to_value() == plan["training"]["loss"]
    assert tr.optimizer.split() == ("sgd", {k: v for k, v in plan["training"]["optimizer"].items() if k != "name"})
    assert tr.lr == 0.01 and tr.grad_clip == 12.0 and tr.max_epochs == 1000 and tr.iterations_per_epoch == 100
    assert tr.amp == "auto" and tr.val_patches == 32 and tr.sampler.to_value() == "foreground"
    assert inf.overlap == 0.5 and inf.mirror_axes == (0, 1, 2) and inf.batch_size == 2 and inf.tta_passes == 8
    assert s.network.name == "unet" and s.network.get("channels") == plan["network"]["channels"]
    # every key the planner writes is known, and to_dict gives them back
    assert set(plan["training"]) <= set(tr.to_dict()) and set(plan["inference"]) <= set(inf.to_dict())
    d = tr.to_dict()
    for key, value in plan["training"].items():
        if key != "sampler":
            assert d[key] == value, key


@pytest.mark.parametrize("name", recipe_names())
@pytest.mark.parametrize("form", ["cpu", "gpu"])
def test_every_packaged_recipe_form_parses(plan, name, form):
    over, _ = recipe_plan(load_recipe(name), "cpu", form)
    merged = deep_merge(plan, over)
    if isinstance(merged["network"], dict):
        merged["network"].pop("topology", None)
    s = parse_plan_settings(merged)
    assert training_settings({"training": s.training.to_dict()}) == s.training


def test_round_trip_and_json(plan):
    p = copy.deepcopy(plan)
    p["training"].update(task={"name": "cycle", "keep": 0.75}, class_weighter={"name": "cbs", "window": 5},
                         loader={"workers": 2, "mode": "threads"}, compile={"mode": "max-autotune"},
                         deep_supervision={"weights": [0.7, 0.2, 0.1]}, val_max_cases=3,
                         init_from={"source": "/runs/a", "sha256": "ab", "freeze_encoder_epochs": 2,
                                    "warmup_epochs": 1, "reinitialised": ["head.weight"]})
    p["inference"].update(noise_passes=2, noise_sigma=0.2, postprocessing=[{"name": "keep_largest_component"}])
    s = parse_plan_settings(p)
    for section, parse in ((s.training, training_settings), (s.inference, inference_settings)):
        key = "training" if section is s.training else "inference"
        text = json.dumps(section.to_dict(), allow_nan=False)
        assert parse({key: json.loads(text)}) == section
    assert network_settings({"network": s.network.to_dict()}) == s.network
    assert s.training.deep_supervision_kwargs() == {"weights": [0.7, 0.2, 0.1]}
    assert s.inference.postprocessing_steps() == [{"name": "keep_largest_component"}]
    assert s.inference.tta_passes == 8 * 3


def test_settings_are_frozen(plan):
    s = parse_plan_settings(plan)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.training.grad_clip = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.inference.overlap = 0.9  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.network.name = "dynunet"  # type: ignore[misc]
    with pytest.raises(TypeError):  # nested values are read-only too
        s.training.optimizer.kwargs["lr"] = 1.0  # type: ignore[index]
    with pytest.raises(TypeError):
        s.network.kwargs["channels"] = [1]  # type: ignore[index]
    name, kwargs = s.training.optimizer.split()  # a fresh mutable copy for the registries
    kwargs["lr"] = 5.0
    assert s.training.lr == 0.01
    assert plan["training"]["optimizer"]["lr"] == 0.01  # the plan dict is never changed


def _one_line_error(plan: dict, *fragments: str, source: str | None = "bundle/plan.json") -> str:
    with pytest.raises(PlanError) as err:
        parse_plan_settings(plan, source)
    text = str(err.value)
    assert "\n" not in text, text
    for f in fragments:
        assert f in text, (f, text)
    if source:
        assert text.startswith(source + ": "), text
    return text


def _with(plan: dict, section: str, **values) -> dict:
    p = copy.deepcopy(plan)
    p[section] = {**(p.get(section) or {}), **values}
    return p


@pytest.mark.parametrize("section,key,value,bound", [
    ("training", "grad_clip", math.nan, "finite"),
    ("training", "grad_clip", math.inf, "finite"),
    ("training", "grad_clip", -1.0, "(0"),
    ("training", "grad_clip", "12", "finite number"),
    ("training", "max_epochs", 2.5, "integer"),
    ("training", "max_epochs", True, "integer"),
    ("training", "max_epochs", 0, "[1,"),
    ("training", "iterations_per_epoch", -3, "[1,"),
    ("training", "foreground_oversampling", 1.5, "[0, 1]"),
    ("training", "foreground_oversampling", math.nan, "finite"),
    ("training", "amp", "fp8", "auto, bf16"),
    ("training", "amp", True, "auto, bf16"),
    ("training", "validation", "slices", "patches, volumes"),
    ("training", "val_every", 0, "[1,"),
    ("training", "val_full_every", -1, "[0,"),
    ("training", "seed", -1, "[0,"),
    ("training", "channels_last", "yes", "true or false"),
    ("training", "in_memory", 1, "true or false"),
    ("training", "augmentation", 3, "preset name"),
    ("training", "optimizer", {"name": "sgd", "lr": math.nan}, "finite"),
    ("training", "optimizer", {"name": "sgd", "lr": 0}, "(0"),
    ("training", "optimizer", {"lr": 0.1}, "'name'"),
    ("training", "optimizer", {"name": 3}, "non-empty string"),
    ("training", "lr_schedule", {"name": "poly", "horizon_epochs": 0}, "[1,"),
    ("training", "sampler", ["foreground"], "registry name"),
    ("training", "loss", {"name": "dice", "smooth": math.inf}, "finite"),
    ("training", "deep_supervision", {"weights": [1.0, -0.5]}, "[0"),
    ("training", "deep_supervision", {"weights": "equal"}, "nnunet"),
    ("training", "deep_supervision", {"weigths": [1.0]}, "known:"),
    ("training", "init_from", {"source": "/a", "warmup_epochs": -1}, "[0,"),
    ("training", "init_from", {"path": "/a"}, "'source'"),
    ("training", "loader", {"mode": "fork"}, "threads, processes"),
    ("training", "loader", {"workers": 0}, "[1,"),
    ("inference", "overlap", math.nan, "finite"),
    ("inference", "overlap", 1.0, "0.95"),
    ("inference", "overlap", -0.1, "[0"),
    ("inference", "batch_size", 0, "[1,"),
    ("inference", "noise_passes", MAX_NOISE_PASSES + 1, f"{MAX_NOISE_PASSES}]"),
    ("inference", "noise_sigma", math.inf, "finite"),
    ("inference", "mirror_axes", [0, 0], "distinct"),
    ("inference", "mirror_axes", [3], "[0, 2]"),
    ("inference", "mirror_axes", "012", "distinct"),
    ("inference", "postprocessing", 5, "auto"),
    ("inference", "postprocessing", [{"min_size": 3}], "'name'"),
])
def test_each_bad_value_is_one_plan_error_naming_field_and_bound(plan, section, key, value, bound):
    bad = _with(plan, section, **{key: value})
    text = _one_line_error(bad, f"{section}.{key}", bound)
    assert "Traceback" not in text


def test_unknown_keys_are_refused_with_the_known_keys(plan):
    text = _one_line_error(_with(plan, "training", batch_size=4), "training.batch_size is not a known setting",
                           "known: loss, deep_supervision, optimizer")
    assert "max_nonfinite_steps" in text
    _one_line_error(_with(plan, "inference", overlap_ratio=0.5), "inference.overlap_ratio", "known: overlap")
    _one_line_error(_with(plan, "training", compile={"modes": "x"}), "training.compile", "unknown option")
    _one_line_error(_with(plan, "training", compile="yes"), "training.compile", "must be true, false")


def test_sections_of_the_wrong_type(plan):
    _one_line_error({**plan, "training": [1]}, "training", "must be an object")
    _one_line_error({**plan, "inference": "fast"}, "inference", "must be an object")
    _one_line_error({**plan, "network": 3}, "network", "registry name")
    _one_line_error({**plan, "network": {"name": "unet", "channels": [16, 10**6]}}, "network.channels[1]", "4096]")
    _one_line_error({**plan, "network": {"name": "unet", "dropout": math.nan}}, "network.dropout", "finite")
    _one_line_error({**plan, "network": {"name": "dynunet", "deep_supervision": "yes"}}, "network.deep_supervision")


def test_cost_bounds_refuse_huge_plans_before_allocation(plan):
    _one_line_error({**plan, "n_classes": MAX_CLASSES + 1}, "n_classes", f"{MAX_CLASSES}]")
    _one_line_error({**plan, "n_classes": 10**12}, "n_classes", f"{MAX_CLASSES}]")
    _one_line_error({**plan, "channel_names": {str(i): "MR" for i in range(65)}}, "channel_names", "64")
    _one_line_error({**plan, "patch_size": [4096, 4096, 4096]}, "patch_size", f"{MAX_PATCH_VOXELS:,}")
    _one_line_error({**plan, "patch_size": [10**9, 8, 8]}, "patch_size[0]", "4096]")
    _one_line_error({**plan, "patch_size": [32, 32.5, 32]}, "patch_size[1]", "integer")
    _one_line_error({**plan, "batch_size": 10**7}, "batch_size")
    big = {**plan, "n_classes": 1000, "patch_size": [256, 256, 256], "inference": {"batch_size": 64}}
    _one_line_error(big, "inference.batch_size", "logits")
    _one_line_error(_with(plan, "training", max_epochs=10**6, iterations_per_epoch=10**6), "training.max_epochs",
                    "iterations")


def test_error_without_a_source_names_the_field_only(plan):
    text = _one_line_error(_with(plan, "training", grad_clip=math.nan), "training.grad_clip", source=None)
    assert text.startswith("training.grad_clip")


def test_nan_from_json_text_is_refused(plan):
    text = json.dumps(plan).replace('"overlap": 0.5', '"overlap": NaN')
    _one_line_error(json.loads(text), "inference.overlap", "finite")


def test_specs_stay_unresolved():
    tr = training_settings({"training": {"task": "cycle", "loss": "dice", "sampler": {"name": "nonexistent",
                                                                                     "k": 1}}})
    assert tr.task == Spec("cycle") and tr.task.to_value() == "cycle" and tr.task_name == "cycle"
    assert tr.loss.split() == ("dice", {}) and tr.sampler.split() == ("nonexistent", {"k": 1})
    with pytest.raises(PlanError, match="compound"):
        Spec(None, {"ce": 1.0}).split()


def test_need_names_the_missing_field():
    with pytest.raises(PlanError, match=r"training\.optimizer is missing"):
        training_settings({}).need("optimizer")
    assert training_settings({"training": {"max_epochs": 3}}).need("max_epochs") == 3
    with pytest.raises(PlanError, match=r"inference\.overlap is missing"):
        inference_settings({"inference": {}}).need("overlap")
    assert inference_settings({"inference": {"overlap": 0.25}}).need("overlap") == 0.25
