"""Real label maps from ../shared/data: perturbed copies move every metric the expected way."""

import csv

import cc3d
import nibabel as nib
import numpy as np
import pytest
from metrics_shapes import DATA
from scipy import ndimage

from focusseg.metrics import evaluate_folders, surface_distances
from focusseg.metrics.surface import normalized_surface_dice, robust_hausdorff

MS = DATA / "Dataset101_MSLesionLjubljana" / "labelsTr"
SPLEEN = DATA / "LabelsOnly_SpleenPredictionPair"

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def perturb(gt: np.ndarray, kind: str) -> np.ndarray:
    m = gt > 0
    if kind == "dilated":
        return ndimage.binary_dilation(m)
    if kind == "eroded":
        return ndimage.binary_erosion(m)
    if kind == "removed":  # drop every other lesion (26-connected components)
        lab = cc3d.connected_components(m, connectivity=26)
        return m & np.isin(lab, np.arange(2, lab.max() + 1, 2), invert=True)
    return m


def rows_by_case(out):
    with open(out / "metrics.csv") as fh:
        return {r["case"]: {k: float(v) if v else float("nan") for k, v in r.items() if k != "case"}
                for r in csv.DictReader(fh)}  # fmt: skip


@pytest.mark.skipif(not MS.is_dir(), reason=f"real data folder {MS} is absent")
def test_ms_lesion_perturbations_move_every_metric_the_right_way(tmp_path):
    results = {}
    for kind in ("identity", "dilated", "eroded", "removed"):
        pred_dir = tmp_path / kind
        pred_dir.mkdir()
        for f in sorted(MS.glob("*.nii.gz")):
            img = nib.load(str(f))
            pred = perturb(np.asanyarray(img.dataobj), kind).astype(np.uint8)
            nib.save(nib.Nifti1Image(pred, img.affine, img.header), str(pred_dir / f.name))
        evaluate_folders(pred_dir, MS, tmp_path / f"out_{kind}", nsd_tolerance=0.5, workers=1, progress=False)
        results[kind] = rows_by_case(tmp_path / f"out_{kind}")
    assert len(results["identity"]) == 3
    for case, ident in results["identity"].items():
        assert ident["dice"] == 1 and ident["nsd"] == 1 and ident["hd95"] == 0 and ident["assd"] == 0
        assert ident["fpv_ml"] == 0 and ident["fnv_ml"] == 0 and ident["lesion_f1"] == 1 and ident["lesion_dice"] == 1
        dil, ero, rem = (results[k][case] for k in ("dilated", "eroded", "removed"))
        for r in (dil, ero, rem):
            assert r["dice"] < 1 and r["iou"] < 1 and r["nsd"] < 1 and r["hd95"] > 0 and r["assd"] > 0
            assert r["fpv_ml"] == 0 and r["lesion_fp"] == 0  # no perturbation creates a lesion
            assert r["lesion_dice"] < 1
        assert dil["recall"] == 1 and dil["precision"] < 1 and dil["fnv_ml"] == 0 and dil["lesion_fn"] == 0
        assert ero["precision"] == 1 and ero["recall"] < 1 and ero["fnv_ml"] > 0 and ero["lesion_fn"] > 0
        assert rem["precision"] == 1 and rem["recall"] < 1 and rem["lesion_fn"] > 0 and rem["lesion_f1"] < 1
        assert rem["lesion_tp"] + rem["lesion_fn"] == ident["lesion_tp"]


@pytest.mark.skipif(not SPLEEN.is_dir(), reason=f"real data folder {SPLEEN} is absent")
def test_spleen_prediction_pair(tmp_path):
    summary = evaluate_folders(SPLEEN / "pred", SPLEEN / "gt", tmp_path, nsd_tolerance=2.0, workers=1, progress=False)
    row = rows_by_case(tmp_path)["spleen1"]
    gt_img = nib.load(str(SPLEEN / "gt" / "spleen1.nii.gz"))
    pred_img = nib.load(str(SPLEEN / "pred" / "spleen1.nii.gz"))
    gt, pred = np.asanyarray(gt_img.dataobj) == 1, np.asanyarray(pred_img.dataobj) == 1
    spacing = gt_img.header.get_zooms()[:3]
    assert row["dice"] == pytest.approx(2 * (gt & pred).sum() / (gt.sum() + pred.sum()), abs=1e-12)
    sd = surface_distances(pred, gt, spacing)
    assert row["nsd"] == normalized_surface_dice(sd, 2.0) and row["hd95"] == robust_hausdorff(sd, 95)
    assert summary["per_label"]["1"]["dice"]["n"] == 1
    ref = pytest.importorskip("surface_distance")
    d = ref.compute_surface_distances(gt, pred, spacing)
    assert row["nsd"] == pytest.approx(ref.compute_surface_dice_at_tolerance(d, 2.0), abs=1e-9)
    assert row["hd95"] == pytest.approx(ref.compute_robust_hausdorff(d, 95), abs=1e-9)
