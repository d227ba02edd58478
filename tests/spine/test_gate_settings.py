"""The plan gate for preprocessing and label fields (focusseg.settings.preprocessing) and for post-processing steps
in a plan (focusseg.settings.postprocessing): every malformed value is one PlanError line naming the file, the field
and the bound, and the planner's own plans pass unchanged."""

from __future__ import annotations

import copy
import math

import pytest

from focusseg.errors import PlanError
from focusseg.planning.planner import make_plan
from focusseg.settings import PreprocessingSettings, check_postprocessing_steps, parse_plan_settings


def _fp(channel: str = "CT") -> dict:
    return {"dataset": "x", "n_cases": 100, "channel_names": {"0": channel}, "labels": {"background": 0, "a": 1},
            "median_spacing": [1.0, 1.0, 1.0], "spacing_percentile_10": [1.0, 1.0, 1.0],
            "median_shape_after_crop": [36, 50, 35], "median_crop_fraction": 1.0,
            "intensity": [{"channel": channel, "mean": 40.0, "std": 100.0, "percentile_00_5": -900.0,
                           "percentile_99_5": 1200.0}]}


@pytest.fixture(scope="module")
def plan() -> dict:
    return make_plan(_fp(), device="cpu")


def test_the_planner_plans_pass_and_read_as_written(plan):
    s = parse_plan_settings(plan, "run/plan.json").preprocessing
    assert isinstance(s, PreprocessingSettings)
    assert s.target_spacing == tuple(plan["target_spacing"]) and s.resample_order_image == 3
    assert dict(s.normalization[0]) == {"scheme": "ct", "clip": (-900.0, 1200.0), "mean": 40.0, "std": 100.0}
    assert dict(s.labels) == {"background": 0, "a": 1} and s.regions is None and s.ignore_label is None
    mr = parse_plan_settings(make_plan(_fp("MR"), device="cpu")).preprocessing
    assert dict(mr.normalization[0]) == {"scheme": "zscore", "use_mask": False}
    quantile = copy.deepcopy(plan)
    quantile["normalization"] = [{"scheme": "quantile"}]
    assert parse_plan_settings(quantile).preprocessing.normalization[0]["scheme"] == "quantile"


def _refused(plan: dict, *fragments: str) -> str:
    with pytest.raises(PlanError) as err:
        parse_plan_settings(plan, "bundle/plan.json")
    text = str(err.value)
    assert "\n" not in text and text.startswith("bundle/plan.json: "), text
    for f in fragments:
        assert f in text, (f, text)
    return text


def _ct(**scheme) -> list[dict]:
    return [{"scheme": "ct", "clip": [-900.0, 1200.0], "mean": 40.0, "std": 100.0, **scheme}]


@pytest.mark.parametrize("field,value,fragments", [
    ("normalization", _ct(std=math.nan), ("normalization[0].std = nan", "finite")),
    ("normalization", _ct(std=math.inf), ("normalization[0].std", "finite")),
    ("normalization", _ct(std=0.0), ("normalization[0].std = 0.0", "(0,")),
    ("normalization", _ct(std=-1.0), ("normalization[0].std", "(0,")),
    ("normalization", _ct(std="1"), ("normalization[0].std", "finite number")),
    ("normalization", _ct(mean=math.nan), ("normalization[0].mean", "finite")),
    ("normalization", _ct(mean=1e300), ("normalization[0].mean", "1e+20")),
    ("normalization", _ct(clip=[math.nan, 1.0]), ("normalization[0].clip[0]", "finite")),
    ("normalization", _ct(clip=[5.0, 1.0]), ("normalization[0].clip", "lower must not exceed upper")),
    ("normalization", _ct(clip=[1.0]), ("normalization[0].clip", "two numbers")),
    ("normalization", [{"scheme": "ct"}], ("normalization[0].clip", "is missing")),
    ("normalization", [{"scheme": "histogram"}], ("normalization[0].scheme", "ct, zscore, quantile, none")),
    ("normalization", [{"scheme": "zscore", "use_mask": "yes"}], ("normalization[0].use_mask", "true or false")),
    ("normalization", [{"scheme": "zscore", "sigma": 2}], ("normalization[0].sigma", "not a known setting")),
    ("normalization", [{"scheme": "quantile", "lower": 0.9, "upper": 0.1}], ("normalization[0].lower", "below")),
    ("normalization", [{"scheme": "quantile", "upper": 2.0}], ("normalization[0].upper", "[0, 1]")),
    ("normalization", [{"scheme": "none"}, {"scheme": "none"}], ("normalization", "one scheme per input channel (1)")),
    ("normalization", [], ("normalization", "per input channel")),
    ("normalization", {"scheme": "none"}, ("normalization", "per input channel")),
    ("normalization", ["ct"], ("normalization[0]", "must be an object")),
    ("target_spacing", [1e-4, 1.0, 1.0], ("target_spacing[0]", "[0.001, 10000]")),
    ("target_spacing", [1.0, 1.0, 1e5], ("target_spacing[2]", "[0.001, 10000]")),
    ("target_spacing", [1.0, math.nan, 1.0], ("target_spacing[1] = nan", "finite")),
    ("target_spacing", [1.0], ("target_spacing", "2 or 3 spacings")),
    ("target_spacing", [1.0] * 4, ("target_spacing", "2 or 3 spacings")),
    ("target_spacing", "1mm", ("target_spacing", "2 or 3 spacings")),
    ("resample_order_image", 6, ("resample_order_image = 6", "[0, 5]")),
    ("resample_order_image", -1, ("resample_order_image", "[0, 5]")),
    ("resample_order_image", 1.5, ("resample_order_image", "integer")),
    ("resample_separate_z", {"threshold": 0.5}, ("resample_separate_z.threshold = 0.5",)),
    ("resample_separate_z", {"threshold": "3"}, ("resample_separate_z.threshold",)),
    ("resample_separate_z", {"threshold": math.nan}, ("resample_separate_z.threshold", "finite")),
    ("resample_separate_z", {"order": 7}, ("resample_separate_z.order = 7", "[0, 5]")),
    ("resample_separate_z", {"axis": 2}, ("resample_separate_z", "unknown key")),
    ("resample_separate_z", [3, 0], ("resample_separate_z",)),
    ("labels", ["background", "a"], ("labels", "map 1 to 1000")),
    ("labels", {}, ("labels", "map 1 to 1000")),
    ("labels", {"background": 0, "a": 2}, ("labels.a = 2", "[0, 1]")),
    ("labels", {"background": 0, "a": -1}, ("labels.a", "[0, 1]")),
    ("labels", {"background": 0, "a": True}, ("labels.a", "integer")),
    ("labels", {"background": 0, "a": 1.0}, ("labels.a", "integer")),
    ("ignore_label", 1, ("ignore_label = 1", "class's label value")),
    ("ignore_label", -3, ("ignore_label", "[0, 32767]")),
    ("regions", [[1], []], ("regions[1]", "non-empty list")),
    ("regions", [[0]], ("regions[0]", "[1, n_classes = 2)")),
    ("regions", [[1, 1]], ("regions[0]", "distinct")),
    ("regions", [[5]], ("regions[0]", "[1, n_classes = 2)")),
    ("regions", "wt", ("regions", "at most 1000 regions")),
    ("regions_class_order", [1], ("regions_class_order", "no regions")),
])
def test_each_malformed_field_is_one_plan_error(plan, field, value, fragments):
    p = copy.deepcopy(plan)
    p[field] = value
    _refused(p, *fragments)


def test_regions_need_one_class_order_value_each(plan):
    p = copy.deepcopy(plan)
    p["regions"] = [[1]]
    _refused(p, "regions_class_order = None", "one label value per region (1)")
    p["regions_class_order"] = [1, 1]
    _refused(p, "regions_class_order", "one label value per region")
    p["regions_class_order"] = [3]
    _refused(p, "regions_class_order[0] = 3", "[1, 1]")
    p["regions_class_order"] = [1]
    s = parse_plan_settings(p)
    assert s.preprocessing.regions == ((1,),) and s.preprocessing.regions_class_order == (1,) and s.n_outputs == 1


@pytest.mark.parametrize("steps,fragments", [
    ([{"name": "remove_small_components", "min_size": 1e300}], ("inference.postprocessing[0].min_size = 1e+300",)),
    ([{"name": "remove_small_components", "min_size": "10"}], ("min_size = '10'", "finite number")),
    ([{"name": "remove_small_components"}], ("inference.postprocessing[0].min_size is missing",)),
    ([{"name": "remove_small_components", "min_size": 3, "unit": "cm"}], ("unit = 'cm'", "voxels, ml")),
    (["keep_largest_component", {"name": "keep_largest_component", "labels": [1], "shell": "rm"}],
     ("inference.postprocessing[1].shell", "takes no argument 'shell'")),
    ([{"name": "keep_largest_component", "labels": [5]}], ("labels = [5]", "not one of the plan's labels [0, 1]")),
    ([{"name": "keep_largest_component", "labels": 1}], ("labels = 1", "list of label values")),
    ([{"name": "keep_largest_component", "labels": [1], "regions": [[1]]}], ("labels or regions, not both",)),
    ([{"name": "keep_largest_component", "connectivity": 7}], ("connectivity = 7", "4, 6, 8, 18, 26")),
    ([{"name": "erode", "iterations": 0}], ("iterations = 0", "[1, 256]")),
    ([{"name": "dilate", "iterations": 10**9}], ("iterations", "[1, 256]")),
    ([{"name": "erode", "regions": [[1]]}], ("takes no argument 'regions'",)),
    ([{"name": "os.system"}], ("unknown post-processing step 'os.system'",)),
    ([{"min_size": 3}], ("'name'",)),
])
def test_plan_postprocessing_steps_are_checked_with_their_arguments(plan, steps, fragments):
    p = copy.deepcopy(plan)
    p["inference"]["postprocessing"] = steps
    _refused(p, *fragments)


def test_good_plan_postprocessing_passes_unchanged(plan):
    p = copy.deepcopy(plan)
    steps = ["keep_largest_component",
             {"name": "remove_small_components", "min_size": 0.5, "unit": "ml", "labels": [1], "connectivity": 6},
             {"name": "erode", "labels": [1], "iterations": 2, "connectivity": None}]
    p["inference"]["postprocessing"] = steps
    assert parse_plan_settings(p).inference.postprocessing_steps() == steps


def test_the_step_checker_takes_the_error_class_and_the_size_bound():
    from focusseg.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"^f\.json: steps\[0\]\.min_size = 101: must be a finite number in "
                                              r"\[0, 100\]$"):
        check_postprocessing_steps([{"name": "remove_small_components", "min_size": 101}], "steps", "f.json",
                                   max_size=100, error=CheckpointError)
    assert check_postprocessing_steps([{"name": "remove_small_components", "min_size": 100}], "steps",
                                      max_size=100) == [{"name": "remove_small_components", "min_size": 100}]
    with pytest.raises(PlanError, match="at most"):
        check_postprocessing_steps(["erode"] * 5000, "steps")
