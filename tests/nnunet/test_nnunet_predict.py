"""nnU-Net v2 model folders predicted and fine-tuned through focusseg: the converted plan passes the gate, the
"nnunet" network computes nnU-Net's logits, focusseg's preprocessing equals nnU-Net's normalisation, the folder
predicts through the API and the CLI, ``--init-from`` loads its weights, and hostile folders give one error line
without running code."""

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

from nnunet_fixtures import (  # noqa: E402
    PLAIN,
    RESENC,
    dataset_json,
    edit_plans,
    plans,
    write_model_folder,
)

import focusseg  # noqa: E402
from focusseg.errors import CheckpointError, PlanError  # noqa: E402
from focusseg.io import Geometry  # noqa: E402
from focusseg.nets.base import network_divisors  # noqa: E402
from focusseg.nets.from_plan import build_network_from_plan  # noqa: E402
from focusseg.nnunet import read_model_folder  # noqa: E402
from focusseg.nnunet.convert import plan_from_nnunet, postprocessing_steps  # noqa: E402
from focusseg.nnunet.preprocess import crop_to_nonzero, normalize  # noqa: E402
from focusseg.preprocessing.preprocess import preprocess_array  # noqa: E402
from focusseg.settings import parse_plan_settings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from focusseg_testdata import write_tiny_dataset  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Payload:
    """Unpickling this runs ``open(marker, 'w')``: the stand-in for a checkpoint that executes code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_cases(folder: Path, n: int = 2, shape=(22, 20, 18), spacing=(1.0, 1.0, 2.0)) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        img = rng.normal(100, 60, shape).astype(np.float32)
        nib.save(nib.Nifti1Image(img, np.diag([*spacing, 1.0])), folder / f"case{i}_0000.nii.gz")
    return folder


# ----------------------------------------------------------------------------------------------- the plan

def test_converted_plan_passes_the_gate_in_focussegs_axis_order(tmp_path: Path):
    folder, _ = write_model_folder(tmp_path)
    plan = plan_from_nnunet(folder)
    settings = parse_plan_settings(plan, folder / "plans.json")
    assert settings.n_classes == 3 and settings.in_channels == 1
    assert plan["labels"] == {"background": 0, "liver": 1, "tumour": 2}
    # nnU-Net's (z, y, x) spacing [2, 1, 1] is focusseg's (x, y, z) [1, 1, 2]; the network reads axes reversed
    assert plan["target_spacing"] == [1.0, 1.0, 2.0] and plan["patch_size"] == [16, 16, 16]
    assert plan["network"]["input_axes"] == [2, 1, 0]
    assert plan["inference"] == {"overlap": 0.5, "mirror_axes": [0, 1, 2], "batch_size": 2}
    assert plan["normalization"] == [{"scheme": "ct", "clip": [-80.0, 310.0], "mean": 95.5, "std": 61.25}]
    assert network_divisors("nnunet", 3, **{k: v for k, v in plan["network"].items() if k != "name"}) == (4, 4, 4)


def test_transpose_forward_moves_spacing_patch_mirror_axes_and_divisor(tmp_path: Path):
    p = plans()
    p["transpose_forward"], p["transpose_backward"] = [2, 0, 1], [1, 2, 0]
    cfg = p["configurations"]["3d_fullres"]
    cfg["patch_size"], cfg["spacing"] = [8, 16, 32], [3.0, 1.0, 0.5]
    cfg["architecture"]["arch_kwargs"]["strides"] = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    folder, _ = write_model_folder(tmp_path, plans_dict=p)
    plan = plan_from_nnunet(folder, mirror_axes=(1, 2))
    parse_plan_settings(plan)
    # network axis n reads nnU-Net axis tf[n], i.e. focusseg axis 2 - tf[n]
    assert plan["network"]["input_axes"] == [0, 2, 1]
    assert plan["target_spacing"] == [3.0, 0.5, 1.0] and plan["patch_size"] == [8, 32, 16]
    assert plan["inference"]["mirror_axes"] == [1, 2]
    assert network_divisors("nnunet", 3, **{k: v for k, v in plan["network"].items() if k != "name"}) == (2, 4, 4)


def test_regions_and_postprocessing_map_onto_focusseg():
    assert postprocessing_steps([("remove_all_but_largest_component_from_segmentation", (1, 2)),
                                 ("remove_all_but_largest_component_from_segmentation", 2)]) == [
        {"name": "keep_largest_component", "regions": [[1, 2]], "connectivity": 26},
        {"name": "keep_largest_component", "regions": [[2]], "connectivity": 26}]


def test_region_dataset_converts(tmp_path: Path):
    ds = {**dataset_json(), "labels": {"background": 0, "whole": [1, 2], "core": [2]}, "regions_class_order": [1, 2]}
    folder, _ = write_model_folder(tmp_path, ds=ds)
    plan = plan_from_nnunet(folder)
    parse_plan_settings(plan)
    assert plan["regions"] == [[1, 2], [2]] and plan["regions_class_order"] == [1, 2] and plan["n_classes"] == 3


def test_2d_configuration_and_reorienting_reader_are_refused_in_one_line(tmp_path: Path):
    folder, _ = write_model_folder(tmp_path, configuration="2d")
    with pytest.raises(PlanError, match="2D configuration") as exc:
        plan_from_nnunet(folder)
    assert "\n" not in str(exc.value) and "plans.json" in str(exc.value)
    other, _ = write_model_folder(tmp_path / "b")
    edit_plans(other, lambda d: d.update(image_reader_writer="NibabelIOWithReorient"))
    with pytest.raises(PlanError, match="image_reader_writer"):
        plan_from_nnunet(other)


# ----------------------------------------------------------------------------------------------- the network

@pytest.mark.parametrize("cls", [PLAIN, RESENC])
def test_focusseg_network_computes_nnunets_logits(tmp_path: Path, cls: str):
    folder, nets = write_model_folder(tmp_path, cls)
    reference = nets[0].eval()
    reference.decoder.deep_supervision = False
    plan = plan_from_nnunet(folder)
    net = build_network_from_plan(plan)
    net.load_state_dict(reference.state_dict(), strict=True)  # the names are nnU-Net's
    net.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        ours = net(x)
        theirs = reference(x.permute(0, 1, 4, 3, 2)).permute(0, 1, 4, 3, 2)  # nnU-Net's axes are reversed
    assert isinstance(ours, torch.Tensor) and torch.allclose(ours, theirs, atol=1e-5)
    # without the permutation, the same logits as nnU-Net's network on the same input
    same = build_network_from_plan({**plan, "network": {**plan["network"], "input_axes": [0, 1, 2]}})
    same.load_state_dict(reference.state_dict())
    with torch.no_grad():
        assert torch.allclose(same.eval()(x), reference(x), atol=1e-5)


def test_deep_supervision_follows_focussegs_contract(tmp_path: Path):
    folder, nets = write_model_folder(tmp_path)
    plan = plan_from_nnunet(folder)
    net = build_network_from_plan(plan)
    net.load_state_dict(nets[0].state_dict())
    x = torch.randn(2, 1, 16, 16, 16)
    outs = net.train()(x)
    assert isinstance(outs, list) and [tuple(o.shape[2:]) for o in outs] == [(16, 16, 16), (8, 8, 8)]
    assert isinstance(net.eval()(x), torch.Tensor)
    no_ds = build_network_from_plan({**plan, "network": {**plan["network"], "deep_supervision": False}})
    assert isinstance(no_ds.train()(x), torch.Tensor)


def test_a_hostile_network_spec_is_refused_without_importing(tmp_path: Path):
    folder, _ = write_model_folder(tmp_path)
    plan = plan_from_nnunet(folder)
    plan["network"]["arch_kwargs"]["nonlin"] = "os.system"
    with pytest.raises(PlanError, match="nothing is imported by name"):
        build_network_from_plan(plan)


# ----------------------------------------------------------------------------------------------- preprocessing

@pytest.mark.parametrize("scheme, use_mask", [("CTNormalization", False), ("ZScoreNormalization", False),
                                              ("ZScoreNormalization", True), ("RescaleTo01Normalization", False),
                                              ("NoNormalization", False)])
def test_focusseg_preprocessing_equals_nnunets_normalisation(tmp_path: Path, scheme: str, use_mask: bool):
    p = plans()
    p["configurations"]["3d_fullres"]["normalization_schemes"] = [scheme]
    p["configurations"]["3d_fullres"]["use_mask_for_norm"] = [use_mask]
    folder, _ = write_model_folder(tmp_path, plans_dict=p)
    plan = plan_from_nnunet(folder)
    model = read_model_folder(folder)
    rng = np.random.default_rng(3)
    image = np.zeros((1, 20, 22, 18), np.float32)
    image[0, 2:18, 3:20, 2:16] = rng.normal(120, 80, (16, 17, 14))
    image[0, 8:11, 9:12, 7:9] = 0  # a hole inside the non-zero region: nnU-Net's mask fills it
    spacing = plan["target_spacing"]  # no resampling: compare the normalisation alone
    geometry = Geometry(np.diag([*spacing, 1.0]), image.shape[1:])
    ours, _, _ = preprocess_array(image, geometry, plan)
    cropped, seg, _ = crop_to_nonzero(image)
    theirs = normalize(cropped, model.configuration.normalization_schemes, model.configuration.use_mask_for_norm,
                       model.intensity_properties, seg)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- prediction

def test_predict_folder_through_the_api_and_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture):
    folder, _ = write_model_folder(tmp_path / "model", folds=(0, 1))
    images = _write_cases(tmp_path / "imagesTs")
    predictor = focusseg.Predictor.load(folder, checkpoint="final", device="cpu")
    assert predictor.kind == "nnunet" and len(predictor.ensemble.members) == 2
    assert predictor.ensemble.weights == [0.5, 0.5]
    assert [f.parent.name for f, _ in predictor.digests] == ["fold_0", "fold_1"]
    written = predictor.predict_folder(images, tmp_path / "api")
    assert len(written) == 2
    seg = np.asarray(nib.load(written[0]).dataobj)
    assert seg.shape == (22, 20, 18) and set(np.unique(seg)) <= {0, 1, 2}

    one = focusseg.Predictor.load(folder, device="cpu", folds=[1])  # best falls back to final
    assert [f.parent.name for f, _ in one.digests] == ["fold_1"]

    from focusseg.cli import main

    capsys.readouterr()
    code = main(["predict", str(folder), str(images), str(tmp_path / "cli"), "--device", "cpu",
                 "--save-probabilities"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "sha256" in out.out and (tmp_path / "cli" / "case0.nii.gz").is_file()
    assert (tmp_path / "cli" / "case0_probabilities.npz").is_file()
    assert np.array_equal(np.asarray(nib.load(tmp_path / "cli" / "case1.nii.gz").dataobj),
                          np.asarray(nib.load(tmp_path / "api" / "case1.nii.gz").dataobj))


def test_an_nnunet_folder_exports_as_a_bundle_that_predicts_the_same(tmp_path: Path):
    from focusseg.errors import UsageError
    from focusseg.export import write_bundle
    from focusseg.export.nnunet import export_nnunet

    folder, _ = write_model_folder(tmp_path / "model", folds=(0, 1))
    images = _write_cases(tmp_path / "imagesTs")
    bundle = write_bundle(folder, tmp_path / "model.zip", checkpoint="final")
    direct = focusseg.Predictor.load(folder, checkpoint="final", device="cpu")
    packed = focusseg.Predictor.load(bundle, device="cpu")
    assert packed.kind == "bundle" and packed.ensemble.weights == [0.5, 0.5]
    image = sorted(images.glob("*.nii.gz"))[0]
    assert np.array_equal(direct.predict(image), packed.predict(image))
    with pytest.raises(UsageError, match="already an nnU-Net model folder"):
        export_nnunet(folder, tmp_path / "again", checkpoint="final")


def test_postprocessing_of_the_folder_is_applied(tmp_path: Path):
    folder, _ = write_model_folder(tmp_path)
    (folder / "postprocessing.json").write_text(json.dumps({
        "postprocessing_fns": ["remove_all_but_largest_component_from_segmentation"],
        "postprocessing_kwargs": [{"labels_or_regions": [1, 2]}]}))
    predictor = focusseg.Predictor.load(folder, device="cpu")
    assert predictor.ensemble.postprocessing == [
        {"name": "keep_largest_component", "regions": [[1, 2]], "connectivity": 26}]
    assert focusseg.Predictor.load(folder, device="cpu", postprocess=False).ensemble.postprocessing == []


def test_a_payload_checkpoint_never_runs(tmp_path: Path):
    folder, _ = write_model_folder(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"network_weights": {"w": torch.zeros(1)}, "trainer_name": "nnUNetTrainer", "x": Payload(marker)},
               folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(CheckpointError, match="refused") as exc:
        focusseg.Predictor.load(folder, device="cpu")
    assert "\n" not in str(exc.value) and "checkpoint_final.pth" in str(exc.value)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["payload", "os_system_nonlin", "cascade", "nan_spacing", "latest"])
def test_hostile_folders_give_one_error_line_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                             case: str):
    folder, _ = write_model_folder(tmp_path / "model")
    images = _write_cases(tmp_path / "imagesTs", n=1)
    marker = tmp_path / "pwned"
    extra: list[str] = []
    culprit = "plans.json"
    if case == "payload":
        torch.save({"network_weights": {}, "trainer_name": Payload(marker)}, folder / "fold_0" / "checkpoint_final.pth")
        culprit = "checkpoint_final.pth"
    elif case == "os_system_nonlin":
        edit_plans(folder, lambda d: d["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(
            nonlin="os.system"))
    elif case == "cascade":
        edit_plans(folder, lambda d: d["configurations"]["3d_fullres"].update(previous_stage="3d_lowres"))
    elif case == "nan_spacing":
        text = (folder / "plans.json").read_text().replace('"spacing": [\n        2.0', '"spacing": [\n        NaN')
        assert "NaN" in text
        (folder / "plans.json").write_text(text)
    else:
        extra, culprit = ["--checkpoint", "latest"], str(folder.name)

    from focusseg.cli import main

    capsys.readouterr()
    code = main(["predict", str(folder), str(images), str(tmp_path / "out"), "--device", "cpu", *extra])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code not in (0, 3), err
    assert 1 <= len(errors) <= 2 and any(culprit in e for e in errors), err
    assert "Traceback" not in err and not marker.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ----------------------------------------------------------------------------------------------- fine-tuning

def test_init_from_an_nnunet_folder_trains_the_converted_plan(tmp_path: Path):
    from focusseg.workflows.train import run_training

    folder, nets = write_model_folder(tmp_path / "model")
    data = write_tiny_dataset(tmp_path / "data", n_cases=4)
    ds = json.loads((data / "dataset.json").read_text())
    ds["channel_names"] = {"0": "CT"}
    (data / "dataset.json").write_text(json.dumps(ds))
    plan = plan_from_nnunet(folder)
    plan["labels"] = {"background": 0, "sphere": 1, "cube": 2}
    plan["training"].update(max_epochs=1, iterations_per_epoch=1, augmentation="light", amp="none", val_patches=2,
                            val_full_every=0)
    plan["inference"]["mirror_axes"] = []
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    run = tmp_path / "run"
    run_training(data, run, fold=0, plan_path=plan_file, init_from=folder, progress=False, check=False,
                 final_validation=False)
    stored = json.loads((run / "plan.json").read_text())
    entry = stored["training"]["init_from"]
    assert entry["source"].endswith("checkpoint_final.pth") and entry["reinitialised"] == []
    assert (run / "checkpoint_final.pt").is_file()


def test_init_from_an_nnunet_checkpoint_into_dynunet_matches_nothing(tmp_path: Path):
    from focusseg.engine.finetune.source import match_shapes, read_source

    folder, _ = write_model_folder(tmp_path / "model")
    source = read_source(folder / "fold_0" / "checkpoint_final.pth")
    assert source.weights and source.path.name == "checkpoint_final.pth"
    from focusseg.nets import build_network

    net = build_network("dynunet", 1, 3, 3, n_stages=3, base_features=4)
    report = match_shapes({k: v.shape for k, v in net.state_dict().items()}, source.weights)
    assert report.loaded == [] and len(report.unused) == len(source.weights)

