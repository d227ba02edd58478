"""dataset.json region-based labels (nnU-Net's format): parsing, the plan's region fields, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from region_data import write_json, write_region_dataset

from focusseg.errors import DatasetError, PlanError
from focusseg.io.dataset import load_dataset_spec

BRATS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3}


def test_nnunet_brats_regions_parse(tmp_path: Path):
    spec = load_dataset_spec(write_json(tmp_path, BRATS, [1, 2, 3]))
    assert spec.regions == {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3), "enhancing_tumor": (3,)}
    assert spec.region_list == [[1, 2, 3], [2, 3], [3]]
    assert spec.regions_class_order == (1, 2, 3)
    # labels are the label values the files hold: n_classes stays max value + 1 (the loader's range)
    assert spec.label_values == [0, 1, 2, 3] and spec.n_classes == 4 and spec.foreground_labels == [1, 2, 3]


def test_plain_labels_have_no_regions(tmp_path: Path):
    spec = load_dataset_spec(write_json(tmp_path, {"background": 0, "a": 1}))
    assert spec.regions is None and spec.region_list is None and spec.regions_class_order is None


@pytest.mark.parametrize("labels, order, fragment", [
    (BRATS, None, "'regions_class_order' is missing"),
    (BRATS, [1, 2], "2 value(s) for 3 region(s)"),
    (BRATS, [1, 2, 7], "value 7 is in no region"),
    (BRATS, "1,2,3", "must be a list of integers"),
    ({"background": 0, "a": 1}, [1], "no label is a region"),
    ({"background": 0, "wt": [0, 1]}, [1], "contains the background value 0"),
    ({"background": 0, "wt": []}, [], "is an empty list"),
    ({"background": 0, "wt": [1, 1]}, [1], "lists a value twice"),
    ({"background": 0, "wt": [1, 2], "tc": [2, 1]}, [1, 2], "hold the same values"),
    ({"background": 0, "wt": [1, "x"]}, [1], "must list integer label values"),
    ({"background": 0, "wt": [1, 40000]}, [1], "outside 0..32767"),
    ({"wt": [1, 2], "tc": 2}, [1, 2], "must declare background as 0"),
    ({"background": 0, "wt": [1, 2], "ignore": 3}, [1], "ignore label 'ignore' cannot be combined"),
])
def test_bad_regions_give_one_line_errors(tmp_path: Path, labels, order, fragment):
    with pytest.raises(DatasetError) as info:
        load_dataset_spec(write_json(tmp_path, labels, order))
    text = str(info.value)
    assert fragment in text and "dataset.json" in text and "\n" not in text.split(" hint")[0]


def test_msd_layout_refuses_regions(tmp_path: Path):
    (tmp_path / "dataset.json").write_text('{"modality": {"0": "MR"}, "labels": {"0": "bg", "1": "a"}, '
                                           '"regions_class_order": [1]}')
    with pytest.raises(DatasetError, match="nnU-Net v2 layout"):
        load_dataset_spec(tmp_path)


def test_plan_records_regions_and_refuses_class_tools(tmp_path: Path):
    from focusseg.planning.planner import validate_plan
    from focusseg.workflows.plan import plan_dataset

    data = write_region_dataset(tmp_path / "Dataset900_Regions", n_cases=2)
    spec = load_dataset_spec(data)
    plan = plan_dataset(data, progress=False)
    assert plan["regions"] == [[1, 2], [2]] and plan["regions_class_order"] == [1, 2]
    assert plan["region_names"] == ["object", "cube"] and plan["n_classes"] == 3
    assert plan["training"]["loss"]["name"] == "region_dice_bce"
    validate_plan(plan, spec)
    from focusseg.nets.from_plan import build_network_from_plan

    net = build_network_from_plan({**plan, "network": {"name": "unet", "channels": [4, 8], "strides": [2],
                                                       "num_res_units": 1}})
    import torch

    assert net(torch.zeros(1, 1, 16, 16, 16)).shape[1] == 2  # one output per region, no background
    bad = [({"loss": {"ce": 1, "dice": 1}}, "is not a region loss"),
           ({"class_weighter": {"name": "tcf"}}, "class_weighter"),
           ({"task": "cycle"}, "cycle task")]
    for training, fragment in bad:
        with pytest.raises(PlanError, match=fragment):
            validate_plan({**plan, "training": {**plan["training"], **training}}, spec)
    with pytest.raises(PlanError, match="regions_class_order"):
        validate_plan({**plan, "regions_class_order": [2, 1]}, spec)
    plain = {k: v for k, v in plan.items() if k not in ("regions", "regions_class_order", "region_names")}
    with pytest.raises(PlanError, match="plan regions null differs"):
        validate_plan(plain, spec)
