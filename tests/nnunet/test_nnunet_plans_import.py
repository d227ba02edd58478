"""Training on nnU-Net's own plans (``--nnunet-plans PLANS.json --configuration 3d_fullres``): the plans file and
the dataset's dataset.json make the plan through the model-folder converter, recipes apply on top without replacing
the network, a cascade or 2D configuration is refused in one line, and a run trained this way predicts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import pytest
import torch

pytest.importorskip("dynamic_network_architectures",
                    reason="dynamic-network-architectures is not installed (pip install 'focusseg[nnunet]')")

from nnunet_fixtures import plans  # noqa: E402

import focusseg.api as api  # noqa: E402
from focusseg.errors import PlanError, UsageError  # noqa: E402
from focusseg.nnunet.plans_import import plan_from_plans  # noqa: E402
from focusseg.settings import parse_plan_settings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from focusseg_testdata import write_tiny_dataset  # noqa: E402

#: Two epochs of two iterations: enough to write every checkpoint and validate.
TINY = {"training": {"max_epochs": 2, "iterations_per_epoch": 2, "val_patches": 2}}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _setup(root: Path, edit=None) -> tuple[Path, Path]:
    data = write_tiny_dataset(root / "Dataset001_Tiny", n_cases=4, with_test=True)
    p = plans()
    p["configurations"]["3d_fullres"]["normalization_schemes"] = ["ZScoreNormalization"]
    p["configurations"]["3d_lowres"] = {"inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres",
                                        "spacing": [4.0, 2.0, 2.0]}
    p["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    if edit is not None:
        edit(p)
    (root / "nnUNetPlans.json").write_text(json.dumps(p))
    return data, root / "nnUNetPlans.json"


def test_plans_and_dataset_json_make_the_plan(tmp_path: Path):
    data, plans_file = _setup(tmp_path)
    plan = plan_from_plans(plans_file, data / "dataset.json", "3d_fullres")
    parse_plan_settings(plan, plans_file)
    assert plan["labels"] == {"background": 0, "sphere": 1, "cube": 2}  # the dataset's labels, not the plans'
    assert plan["channel_names"] == {"0": "MR"} and plan["dataset"] == "Dataset001_Tiny"
    assert plan["target_spacing"] == [1.0, 1.0, 2.0] and plan["patch_size"] == [16, 16, 16]
    assert plan["network"]["name"] == "nnunet" and plan["normalization"] == [{"scheme": "zscore", "use_mask": False}]
    kept = plan["nnunet"]
    assert kept["configuration"] == "3d_fullres" and kept["file_ending"] == ".nii.gz"
    assert list(kept["plans"]["configurations"]) == ["3d_fullres"]
    assert kept["plans"]["configurations"]["3d_fullres"]["data_identifier"] == "nnUNetPlans_3d_fullres"
    # 3d_lowres: a plain configuration, its inheritance resolved
    low = plan_from_plans(plans_file, data / "dataset.json", "3d_lowres")
    assert low["target_spacing"] == [2.0, 2.0, 4.0]
    assert low["nnunet"]["plans"]["configurations"]["3d_lowres"]["data_identifier"] == "nnUNetPlans_3d_lowres"


@pytest.mark.parametrize("configuration, message", [
    ("3d_cascade_fullres", "cascade"), ("2d", "2D configuration"), ("3d_nope", "has no '3d_nope'")])
def test_configurations_focusseg_cannot_train_are_refused_in_one_line(tmp_path: Path, configuration, message):
    data, plans_file = _setup(tmp_path)
    with pytest.raises(PlanError) as err:
        plan_from_plans(plans_file, data / "dataset.json", configuration)
    assert message in str(err.value) and "nnUNetPlans.json" in str(err.value) and "\n" not in str(err.value)


def test_hostile_plans_are_refused_naming_the_file(tmp_path: Path):
    data, plans_file = _setup(tmp_path)
    plans_file.write_text(plans_file.read_text().replace('"batch_size": 2', '"batch_size": NaN'))
    with pytest.raises(PlanError, match="nnUNetPlans.json"):
        plan_from_plans(plans_file, data / "dataset.json")
    data, plans_file = _setup(tmp_path / "b", lambda p: p["configurations"]["3d_fullres"].update(
        patch_size=[4096, 4096, 4096]))
    with pytest.raises(PlanError, match="patch_size"):
        plan_from_plans(plans_file, data / "dataset.json")


def test_recipes_apply_on_top_but_not_their_network(tmp_path: Path, capsys: pytest.CaptureFixture):
    data, plans_file = _setup(tmp_path)
    recipe = {"name": "mine", "plan": {"network": {"name": "dynunet"}, "training": {"max_epochs": 7}}}
    plan = api.plan(data, nnunet_plans=plans_file, recipe=recipe, device="cpu",
                    overrides={"training": {"iterations_per_epoch": 3}})
    assert plan["network"]["name"] == "nnunet"
    assert plan["training"]["max_epochs"] == 7 and plan["training"]["iterations_per_epoch"] == 3
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "network is ignored" in err
    with pytest.raises(UsageError, match="--preset"):
        api.plan(data, nnunet_plans=plans_file, preset="m", device="cpu")
    with pytest.raises(UsageError, match="--nnunet-plans"):
        api.plan(data, configuration="3d_fullres", device="cpu")
    with pytest.raises(UsageError, match="--plan and --nnunet-plans"):
        api.train(data, tmp_path / "run", nnunet_plans=plans_file, plan=tmp_path / "plan.json", device="cpu")


def test_cli_plan_train_and_predict_on_nnunet_plans(tmp_path: Path, capsys: pytest.CaptureFixture):
    from focusseg.cli import main

    data, plans_file = _setup(tmp_path)
    assert main(["plan", str(data), "--nnunet-plans", str(plans_file), "--configuration", "3d_fullres",
                 "--device", "cpu", "--out", str(tmp_path / "plan.json")]) == 0
    assert json.loads((tmp_path / "plan.json").read_text())["nnunet"]["plans_file"] == "nnUNetPlans.json"
    run = tmp_path / "run"
    code = main(["train", str(data), "--out", str(run), "--nnunet-plans", str(plans_file), "--configuration",
                 "3d_fullres", "--device", "cpu", "--no-progress", "--set", "training.max_epochs=2",
                 "--set", "training.iterations_per_epoch=2", "--set", "training.val_patches=2"])
    assert code == 0
    stored = json.loads((run / "plan.json").read_text())
    assert stored["network"]["name"] == "nnunet" and stored["nnunet"]["configuration"] == "3d_fullres"
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(data / "imagesTs"), str(out), "--device", "cpu", "--no-tta"]) == 0
    seg = nib.load(sorted(out.glob("*.nii.gz"))[0])
    assert seg.shape == (20, 24, 16)
    capsys.readouterr()
    assert main(["train", str(data), "--out", str(tmp_path / "bad"), "--nnunet-plans", str(plans_file),
                 "--configuration", "3d_cascade_fullres", "--device", "cpu"]) not in (0, 3)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "cascade" in err[0] and "nnUNetPlans.json" in err[0]
