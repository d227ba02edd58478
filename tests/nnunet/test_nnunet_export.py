"""``focusseg export --format nnunet``: a run (or a cross-validation) trained on nnU-Net's plans written back as an
nnU-Net v2 model folder whose checkpoints hold only plain types and tensors, that focusseg reloads and predicts
exactly as the run did; runs without nnU-Net's network, or with a normalisation nnU-Net lacks, are refused in one
line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("dynamic_network_architectures",
                    reason="dynamic-network-architectures is not installed (pip install 'focusseg[nnunet]')")

from nnunet_fixtures import plans  # noqa: E402

import focusseg.api as api  # noqa: E402
from focusseg.errors import UsageError  # noqa: E402
from focusseg.export import FORMATS  # noqa: E402
from focusseg.export.nnunet import export_nnunet, nnunet_postprocessing  # noqa: E402
from focusseg.nnunet.export import nnunet_plans  # noqa: E402
from focusseg.nnunet.plans_import import plan_from_plans  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from focusseg_testdata import write_tiny_dataset  # noqa: E402

TINY = {"training": {"max_epochs": 2, "iterations_per_epoch": 2, "val_patches": 2}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A tiny dataset, nnU-Net plans (transposed axes: the export must write them back), one run and a
    two-fold cross-validation trained on them."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("nnunet_export")
    data = write_tiny_dataset(root / "Dataset001_Tiny", n_cases=5, with_test=True)
    p = plans()
    cfg = p["configurations"]["3d_fullres"]
    cfg["normalization_schemes"] = ["ZScoreNormalization"]
    cfg["use_mask_for_norm"] = [True]
    p["transpose_forward"], p["transpose_backward"] = [1, 0, 2], [1, 0, 2]
    (root / "nnUNetPlans.json").write_text(json.dumps(p))
    run = api.train(data, root / "run", nnunet_plans=root / "nnUNetPlans.json", overrides=TINY, device="cpu").path
    cv = api.crossval(data, root / "cv", folds="0,1", nnunet_plans=root / "nnUNetPlans.json", overrides=TINY,
                      device="cpu").path
    torch.set_num_threads(n)
    return {"root": root, "data": data, "run": run, "cv": cv, "plans": root / "nnUNetPlans.json"}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _same_predictions(a: api.Predictor, b: api.Predictor, data: Path) -> None:
    for image in sorted((data / "imagesTs").glob("*.nii.gz")):
        seg_a, prob_a = a.predict(image, probabilities=True)
        seg_b, prob_b = b.predict(image, probabilities=True)
        assert np.array_equal(seg_a, seg_b)
        assert np.abs(prob_a - prob_b).max() <= 1e-5


def test_a_run_exports_as_a_model_folder_that_predicts_the_same(trained, tmp_path: Path):
    assert "nnunet" in FORMATS
    out = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    done = export_nnunet(trained["run"], out)
    assert done["folds"] == [0] and done["configuration"] == "3d_fullres"
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "fold_0", "plans.json"]
    plans_json = json.loads((out / "plans.json").read_text())
    original = json.loads(trained["plans"].read_text())
    cfg = plans_json["configurations"]["3d_fullres"]
    for key in ("data_identifier", "preprocessor_name", "patch_size", "spacing", "normalization_schemes",
                "use_mask_for_norm", "median_image_size_in_voxels", "batch_size", "batch_dice"):
        assert cfg[key] == original["configurations"]["3d_fullres"][key], key
    for key in ("transpose_forward", "transpose_backward", "dataset_name", "plans_name", "image_reader_writer",
                "original_median_spacing_after_transp", "label_manager"):
        assert plans_json[key] == original[key], key
    assert cfg["architecture"]["network_class_name"].endswith("PlainConvUNet")
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "sphere": 1, "cube": 2} and dataset["file_ending"] == ".nii.gz"
    # nnU-Net's loader (weights_only=False) and a strict weights-only load both read it: plain types and tensors
    ckpt = torch.load(out / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["trainer_name"] == "nnUNetTrainer" and ckpt["init_args"]["configuration"] == "3d_fullres"
    assert ckpt["init_args"]["fold"] == 0 and ckpt["init_args"]["dataset_json"] == dataset
    assert ckpt["inference_allowed_mirroring_axes"] == (0, 1, 2) and isinstance(ckpt["current_epoch"], int)
    assert ckpt["optimizer_state"] is None and ckpt["grad_scaler_state"] is None and ckpt["_best_ema"] is None
    assert all(type(v) is torch.Tensor for v in ckpt["network_weights"].values())
    run = api.Predictor.load(trained["run"], device="cpu")
    _same_predictions(run, api.Predictor.load(out, device="cpu"), trained["data"])
    # any folder name: the plans' one configuration is used
    other = tmp_path / "exported"
    export_nnunet(trained["run"], other, "final")
    assert api.Predictor.load(other, device="cpu", folds=[0]).kind == "nnunet"


def test_a_crossvalidation_exports_one_fold_per_fold(trained, tmp_path: Path, capsys: pytest.CaptureFixture):
    from focusseg.cli import main

    out = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert main(["export", str(trained["cv"]), "--format", "nnunet", "--out", str(out)]) == 0
    assert "nnUNetv2_predict_from_modelfolder" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("fold_*")) == ["fold_0", "fold_1"]
    folds = [torch.load(out / f"fold_{k}" / "checkpoint_final.pth", weights_only=True)["init_args"]["fold"]
             for k in (0, 1)]
    assert folds == [0, 1]
    _same_predictions(api.Predictor.load(trained["cv"], device="cpu"), api.Predictor.load(out, device="cpu"),
                      trained["data"])
    # predict through the CLI with one fold, as the run's fold 0 does
    pred = tmp_path / "pred"
    assert main(["predict", str(out), str(trained["data"] / "imagesTs"), str(pred), "--folds", "0",
                 "--checkpoint", "final", "--device", "cpu"]) == 0
    fold0 = api.Predictor.load(trained["cv"] / "fold_0", device="cpu")
    image = sorted((trained["data"] / "imagesTs").glob("*.nii.gz"))[0]
    written = np.asarray(nib.load(pred / image.name.replace("_0000", "")).dataobj)
    assert np.array_equal(written, fold0.predict(image))


def test_refusals_are_one_line(trained, tmp_path: Path, capsys: pytest.CaptureFixture):
    from focusseg.cli import main

    images = str(trained["data"] / "imagesTs")
    out = tmp_path / "exists"
    out.mkdir()
    cases = [
        (["export", str(trained["run"]), "--format", "nnunet", "--out", str(out)], "already exists"),
        (["predict", str(trained["run"]), images, str(tmp_path / "p1"), "--folds", "0"], "nnU-Net model folder"),
        (["predict", str(trained["run"]), images, str(tmp_path / "p2"), "--folds", "zero"], "--folds"),
    ]
    folder = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    export_nnunet(trained["run"], folder)
    cases.append((["predict", str(folder), images, str(tmp_path / "p3"), "--ensemble", str(trained["run"]),
                   "--weights", "1"], "one weight per model"))
    for argv, message in cases:
        capsys.readouterr()
        assert main([*argv, *(["--device", "cpu"] if argv[0] == "predict" else [])]) not in (0, 3), argv
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and message in err[0], (argv, err)
    assert not any(out.iterdir())


def test_an_nnunet_folder_ensembles_with_a_run(trained, tmp_path: Path):
    """The exported folder and the run it came from, averaged: the same model twice, so the ensemble predicts what
    the run predicts (no post-processing: an ensemble gets none unless a file is given); both files' digests are
    reported."""
    folder = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    export_nnunet(trained["run"], folder)
    both = api.Predictor.load(folder, checkpoint="final", device="cpu", ensemble=[trained["run"]],
                              weights=[1.0, 3.0])
    alone = api.Predictor.load(trained["run"], checkpoint="final", device="cpu", postprocess=False)
    assert both.ensemble.weights == [1.0, 3.0] and len(both.digests) == 2
    image = sorted((trained["data"] / "imagesTs").glob("*.nii.gz"))[0]
    a, b = both.predict(image), alone.predict(image)
    assert a.shape == b.shape and (a == b).mean() > 0.999


def test_plans_nnunet_cannot_express_are_refused(trained):
    plan = plan_from_plans(trained["plans"], trained["data"] / "dataset.json")
    for network in ({"name": "dynunet"}, "unet"):
        with pytest.raises(UsageError, match="only runs whose network is \"nnunet\""):
            nnunet_plans({**plan, "network": network}, "runs/x")
    with pytest.raises(UsageError, match="no nnU-Net equivalent"):
        nnunet_plans({**plan, "normalization": [{"scheme": "quantile", "lower": 0.01, "upper": 0.99}]}, "runs/x")
    with pytest.raises(UsageError, match="holes filled"):
        nnunet_plans({**plan, "normalization": [{"scheme": "zscore", "use_mask": True}]}, "runs/x")
    # a plan made without nnU-Net's plans (a resenc preset): reconstructed, CT statistics from the plan
    bare = {k: v for k, v in plan.items() if k != "nnunet"}
    bare["normalization"] = [{"scheme": "ct", "clip": [-5.0, 9.0], "mean": 1.5, "std": 2.0}]
    rebuilt, configuration, _ = nnunet_plans(bare, "runs/x")
    assert configuration == "3d_fullres" and rebuilt["transpose_forward"] == [1, 0, 2]  # the network's axes
    bare["network"] = {k: v for k, v in plan["network"].items() if k != "input_axes"}  # focusseg's own order
    assert nnunet_plans(bare, "runs/x")[0]["transpose_forward"] == [2, 1, 0]
    assert rebuilt["configurations"]["3d_fullres"]["normalization_schemes"] == ["CTNormalization"]
    assert rebuilt["foreground_intensity_properties_per_channel"]["0"] == {
        "mean": 1.5, "std": 2.0, "percentile_00_5": -5.0, "percentile_99_5": 9.0}
    # post-processing: nnU-Net's largest-component step only
    assert nnunet_postprocessing([{"name": "keep_largest_component", "labels": [1]}], [0, 1, 2]) == {
        "postprocessing_fns": ["remove_all_but_largest_component_from_segmentation"],
        "postprocessing_kwargs": [{"labels_or_regions": 1}]}
    assert nnunet_postprocessing([{"name": "remove_small_components", "min_size": 3}], [0, 1]) is None
