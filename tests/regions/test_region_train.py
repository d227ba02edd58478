"""Region targets, the region loss, label map <-> regions conversion, counts, and a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.losses import DiceLoss as MonaiDice
from region_data import write_region_dataset

from focusseg.losses import DeepSupervisionLoss, RegionDiceBCELoss, build_loss
from focusseg.regions import region_counts, region_masks, region_masks_np, regions_to_labels

BRATS15 = [[1, 2, 3, 4], [1, 3, 4], [4]]  # whole tumour, tumour core, enhancing (BraTS 2015 label values)
ORDER15 = [2, 1, 4]


def test_region_masks_match_membership():
    lab = torch.tensor([[0, 1, 2, 3, 4, 5]])
    m = region_masks(lab, BRATS15)
    assert m.shape == (1, 3, 6)
    assert m[0].int().tolist() == [[0, 1, 1, 1, 1, 0], [0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 1, 0]]
    assert np.array_equal(region_masks_np(lab.numpy()[0], BRATS15), m[0].numpy())


def test_round_trip_label_map_regions_label_map():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 5, (7, 6, 5))
    back = regions_to_labels(region_masks_np(lab, BRATS15), ORDER15)
    # the painted map has the same regions (3 -> 1: both are "core, not enhancing"), values of regions_class_order
    assert np.array_equal(region_masks_np(back, BRATS15), region_masks_np(lab, BRATS15))
    assert set(np.unique(back)) <= {0, 1, 2, 4} and back.dtype == np.uint8
    exact = rng.integers(0, 3, (5, 5, 5))  # nested {1,2} ⊇ {2} painted [1, 2]: exact round trip
    t = regions_to_labels(region_masks(torch.from_numpy(exact)[None], [[1, 2], [2]])[0], [1, 2])
    assert torch.equal(t.long(), torch.from_numpy(exact))


def test_later_regions_overwrite_earlier():
    masks = np.array([[1, 1, 0], [0, 1, 1]], dtype=bool)
    assert regions_to_labels(masks, [5, 3]).tolist() == [5, 3, 3]


def test_region_loss_matches_monai_dice_plus_bce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, 5, 4, generator=g)
    labels = torch.randint(0, 5, (2, 1, 6, 5, 4), generator=g)
    target = region_masks(labels, BRATS15).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    for batch in (True, False):
        ref = MonaiDice(sigmoid=True, batch=batch)(logits, target) + bce
        torch.testing.assert_close(RegionDiceBCELoss(BRATS15, batch=batch)(logits, labels), ref, atol=1e-6, rtol=0)
    per = build_loss({"name": "region_dice_bce", "regions": BRATS15, "reduction": "none"})(logits, labels)
    ref = MonaiDice(sigmoid=True, reduction="none")(logits, target).flatten(1).mean(1)
    bce_per = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    ref = ref + bce_per.flatten(1).mean(1)
    torch.testing.assert_close(per, ref, atol=1e-6, rtol=0)


def test_region_loss_gradient_and_deep_supervision():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 2, 4, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g)
    loss = RegionDiceBCELoss([[1, 2], [2]])
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (logits,))
    # deep supervision: the label map is resized (nearest) and the region targets built at each resolution
    ds = DeepSupervisionLoss(loss, weights=[0.5, 0.5])
    low = torch.randn(2, 2, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    total = ds([logits, low], labels)
    total.backward()
    assert low.grad is not None and torch.isfinite(low.grad).all() and low.grad.abs().sum() > 0
    down = labels[:, :, 1::2, 1::2, 1::2]  # nearest-exact halving picks voxel 2i + 1 (centre of each pair)
    torch.testing.assert_close(total, 0.5 * loss(logits, labels) + 0.5 * loss(low, down))


def test_region_loss_refuses_bad_use():
    default = build_loss("region_dice_bce")  # without regions: channel c is the region {c + 1}
    lab = torch.randint(0, 3, (1, 1, 4, 4, 4))
    x = torch.randn(1, 2, 4, 4, 4)
    torch.testing.assert_close(default(x, lab), RegionDiceBCELoss([[1], [2]])(x, lab))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        RegionDiceBCELoss([[1, 2], [2]], validate_labels=True)(x, lab + 1)
    with pytest.raises(ValueError, match="channels for 3 regions"):
        RegionDiceBCELoss(BRATS15)(torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4, dtype=torch.long))


def test_region_counts():
    logits = torch.tensor([[[[1.0, 1.0, -1.0, -1.0]], [[-1.0, 1.0, 1.0, -1.0]]]])  # (1, 2, 1, 4)
    labels = torch.tensor([[[1, 2, 2, 0]]])
    c = region_counts(logits, labels, [[1, 2], [2]])
    assert c.tolist() == [[2, 2], [0, 0], [1, 0]]  # TP, FP, FN of region {1,2} and region {2}


def _nii_values(path: Path) -> set[int]:
    import nibabel as nib

    return {int(v) for v in np.unique(np.asarray(nib.load(path).dataobj))}


TINY = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 2, "iterations_per_epoch": 3, "augmentation": "light", "amp": "none",
                     "val_patches": 4, "deep_supervision": None},
        "inference": {"mirror_axes": [0]}}


def test_tiny_region_run_train_predict_evaluate(tmp_path: Path, monkeypatch):
    from typer.testing import CliRunner

    from focusseg.cli import app
    from focusseg.workflows.train import run_training

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = write_region_dataset(tmp_path / "Dataset901_Regions", n_cases=4, with_test=True)
    run = tmp_path / "run"
    summary = run_training(data, run, fold=0, overrides=TINY, progress=False, device="cpu")
    plan = json.loads((run / "plan.json").read_text())
    assert plan["regions"] == [[1, 2], [2]]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if "val_dice" in r]
    assert epochs and set(epochs[-1]["val_dice"]) == {"1", "2"}  # per-region pseudo-Dice
    final = summary["final_validation"]
    assert set(final["dice_per_label"]) == {"1", "2"}
    chosen = json.loads((run / "postprocessing.json").read_text())  # chosen per region, not per label
    assert chosen["regions"] == [[1, 2], [2]] and set(chosen["dice_before"]) == {"1", "2"}
    assert {t["label"] for t in chosen["trials"]} == {"foreground", 1, 2}
    assert all(s.get("regions") for s in chosen["steps"])
    val = json.loads(Path(final["summary_json"]).read_text())
    assert val["regions"] == [[1, 2], [2]] and val["region_names"] == ["object", "cube"]
    pred = tmp_path / "pred"
    res = CliRunner().invoke(app, ["predict", str(run), str(data / "imagesTs"), str(pred)])
    assert res.exit_code == 0, res.output
    files = sorted(pred.glob("*.nii.gz"))
    assert len(files) == 2 and all(_nii_values(f) <= {0, 1, 2} for f in files)
    ev = tmp_path / "eval"
    res = CliRunner().invoke(app, ["evaluate", str(pred), str(data / "labelsTs"), "--out", str(ev)])
    assert res.exit_code == 0, res.output
    out = json.loads((ev / "summary.json").read_text())
    assert out["regions"] == [[1, 2], [2]] and set(out["per_label"]) == {"1", "2"}
    # the region scores are those of the region masks, computed here independently
    import nibabel as nib

    p = np.asarray(nib.load(files[0]).dataobj)
    g = np.asarray(nib.load(data / "labelsTs" / files[0].name).dataobj)
    pm, gm = np.isin(p, [1, 2]), np.isin(g, [1, 2])
    dice = 2 * (pm & gm).sum() / (pm.sum() + gm.sum())
    rows = [r for r in (ev / "metrics.csv").read_text().splitlines()[1:] if r.startswith(files[0].name[:-7] + ",1,")]
    assert rows and abs(float(rows[0].split(",")[2]) - dice) < 1e-9
    res = CliRunner().invoke(app, ["evaluate", str(pred), str(data / "labelsTs"), "--out", str(ev), "--regions",
                                   "none"])
    assert res.exit_code == 0, res.output
    assert "regions" not in json.loads((ev / "summary.json").read_text())
    # saved probabilities of a region run are region sigmoids, marked so (and ensembled as such)
    from focusseg.inference.probabilities import SUFFIX, load_probabilities
    from focusseg.regions import regions_to_labels

    raw = tmp_path / "raw"
    res = CliRunner().invoke(app, ["predict", str(run), str(data / "imagesTs"), str(raw), "--save-probabilities",
                                   "--no-postprocess"])
    assert res.exit_code == 0, res.output
    for seg_file in sorted(raw.glob("*.nii.gz")):
        probs, _, labels, _, kind = load_probabilities(raw / f"{seg_file.name[:-7]}{SUFFIX}")
        assert kind == "regions" and labels == plan["regions_class_order"] and probs.shape[0] == 2
        seg = np.asarray(nib.load(seg_file).dataobj)
        # float16 rounds a sigmoid within 2^-11 of 0.5 (this barely trained network has many) onto 0.5 itself
        clear = (np.abs(probs - 0.5) > 2.0**-10).all(0)
        assert clear.mean() > 0.5
        np.testing.assert_array_equal(regions_to_labels(probs > 0.5, labels)[clear], seg[clear])
    res = CliRunner().invoke(app, ["ensemble", str(raw), str(raw), "--out", str(tmp_path / "ens")])
    assert res.exit_code == 0, res.output
    for seg_file in sorted(raw.glob("*.nii.gz")):
        got = np.asarray(nib.load(tmp_path / "ens" / seg_file.name).dataobj)
        probs = load_probabilities(raw / f"{seg_file.name[:-7]}{SUFFIX}")[0]
        np.testing.assert_array_equal(got, regions_to_labels(probs > 0.5, plan["regions_class_order"]))


def test_crossval_pools_region_dice_and_chooses_postprocessing_per_region(tmp_path: Path):
    """A region-based cross-validation scores its pooled validation per region (as each fold does), not per
    label, and chooses its post-processing per region on the pool."""
    from focusseg.workflows.crossval import run_crossval

    torch.set_num_threads(1)
    data = write_region_dataset(tmp_path / "Dataset902_Regions", n_cases=4)
    tiny = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
            "patch_size": [16, 16, 16], "batch_size": 2,
            "training": {"max_epochs": 1, "iterations_per_epoch": 2, "augmentation": "none", "amp": "none"},
            "inference": {"mirror_axes": []}}
    res = run_crossval(data, tmp_path / "cv", "0-1", overrides=tiny, progress=False, device="cpu")
    fold_regions = set(res["folds"]["0"]["dice_per_label"])
    assert set(res["pooled"]["dice_per_label"]) == fold_regions == {"1", "2"}  # regions 1..R
    summary = json.loads((tmp_path / "cv" / "validation" / "summary.json").read_text())
    assert summary["regions"] == [[1, 2], [2]]
    assert set(res["postprocessing"]["dice_before"]) == {1, 2}  # regions 1..R
    assert json.loads((tmp_path / "cv" / "postprocessing.json").read_text())["regions"] == [[1, 2], [2]]
