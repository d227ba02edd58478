import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest

from focusseg.errors import DatasetError, MissingFileError
from focusseg.metrics import COLUMNS, evaluate_case, evaluate_folders, surface_metrics
from focusseg.metrics.plots import violin_plot

SPACING = (1.5, 1.0, 2.0)


def write(path, data, spacing=SPACING, shift=0.0):
    affine = np.diag([*spacing, 1.0])
    affine[0, 3] = shift
    nib.save(nib.Nifti1Image(data.astype(np.uint8), affine), str(path))


def make_pair():
    gt = np.zeros((20, 18, 16), np.uint8)
    pred = np.zeros_like(gt)
    gt[3:9, 3:9, 3:9] = 1
    pred[4:10, 3:9, 3:9] = 1
    gt[12:16, 10:16, 10:14] = 2
    pred[12:16, 10:15, 10:14] = 2
    return pred, gt


@pytest.fixture
def folders(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir(), gt_dir.mkdir()
    pred, gt = make_pair()
    write(pred_dir / "a.nii.gz", pred)
    write(gt_dir / "a.nii.gz", gt)
    pred_b, gt_b = np.zeros_like(gt), np.zeros_like(gt)
    gt_b[2:5, 2:5, 2:5] = 1
    pred_b[10:12, 10:12, 10:12] = 3  # label 3 only here, label 2 absent from both
    write(pred_dir / "b.nii.gz", pred_b)
    write(gt_dir / "b.nii.gz", gt_b)
    return pred_dir, gt_dir, tmp_path / "out"


def read_rows(out):
    with open(out / "metrics.csv") as fh:
        return list(csv.reader(fh))


def test_evaluate_case_matches_the_metric_functions():
    pred, gt = make_pair()
    rows = evaluate_case(pred, gt, SPACING, [1, 2], nsd_tolerance=1.0)
    assert [r["label"] for r in rows] == [1, 2] and set(rows[0]) == set(COLUMNS[1:])
    assert rows[0]["dice"] == pytest.approx(2 * 180 / 432)
    surf = surface_metrics(pred == 1, gt == 1, SPACING, 1.0)
    assert rows[0]["nsd"] == surf["nsd"] and rows[0]["hd95"] == surf["hd95"] and rows[0]["assd"] == surf["assd"]
    assert (rows[1]["lesion_tp"], rows[1]["lesion_fp"], rows[1]["lesion_fn"]) == (1, 0, 0)


def test_evaluate_case_conventions():
    gt = np.zeros((10, 10, 10), np.uint8)
    pred = gt.copy()
    pred[2:4, 2:4, 2:4] = 1
    neg = evaluate_case(pred, gt, (1, 1, 1), [1], convention="autopet")[0]
    assert math.isnan(neg["dice"]) and math.isnan(neg["fnv_ml"]) and neg["fpv_ml"] == pytest.approx(0.008)
    assert evaluate_case(pred, gt, (1, 1, 1), [1])[0]["fnv_ml"] == 0.0
    both = evaluate_case(gt, gt, (1, 1, 1), [1], convention="flare21")[0]
    assert both["dice"] == 1.0 and both["nsd"] == 1.0 and math.isnan(both["hd95"])
    # FLARE22: NSD forced to 0 where DSC < 0.2; label 1 (liver) uses a 5 mm tolerance
    far_gt = gt.copy()
    far_gt[2:4, 2:4, 4:8] = 1  # Dice with pred = 0 -> NSD 0 although surfaces are within 5 mm
    assert evaluate_case(pred, far_gt, (1, 1, 1), [1], convention="flare21")[0]["nsd"] > 0
    assert evaluate_case(pred, far_gt, (1, 1, 1), [1], convention="flare22")[0]["nsd"] == 0.0
    with pytest.raises(ValueError):
        evaluate_case(pred, gt, (1, 1, 1), [1], connectivity=4)


def test_evaluate_folders_outputs(folders):
    pred_dir, gt_dir, out = folders
    summary = evaluate_folders(pred_dir, gt_dir, out, workers=1, progress=False)
    rows = read_rows(out)
    assert tuple(rows[0]) == COLUMNS
    body = {(r[0], int(r[1])): dict(zip(COLUMNS, r)) for r in rows[1:]}
    assert set(body) == {(c, v) for c in "ab" for v in (1, 2, 3)}  # labels=None: union of all cases
    direct = evaluate_case(*make_pair(), SPACING, [1])[0]
    assert float(body[("a", 1)]["dice"]) == direct["dice"] and float(body[("a", 1)]["nsd"]) == direct["nsd"]
    assert body[("b", 2)]["dice"] == "" and body[("b", 2)]["hd95"] == ""  # both empty: undefined
    assert body[("b", 3)]["dice"] == "0.0" and body[("b", 3)]["recall"] == ""  # GT empty
    assert float(body[("b", 3)]["fpv_ml"]) == pytest.approx(8 * 3e-3)
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    d1 = saved["per_label"]["1"]["dice"]
    assert d1["n"] == 2 and d1["mean"] == pytest.approx((direct["dice"] + 0.0) / 2)
    assert saved["per_label"]["2"]["dice"]["n"] == 1 and saved["overall"]["dice"]["n"] == 4
    assert set(saved["per_label"]["1"]) >= {"nsd", "hd95", "lesion_f1", "fp_pet_score"}
    for name in ("dice_violin.png", "nsd_violin.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explicit_labels_and_parallel_workers_agree(folders):
    pred_dir, gt_dir, out = folders
    evaluate_folders(pred_dir, gt_dir, out / "one", labels=[1], workers=1, progress=False)
    evaluate_folders(pred_dir, gt_dir, out / "two", labels=[1], workers=2, progress=False, connectivity=6)
    one, two = read_rows(out / "one"), read_rows(out / "two")
    assert len(one) == 3 and one == two


def test_clear_errors(folders, tmp_path):
    pred_dir, gt_dir, out = folders
    (pred_dir / "b.nii.gz").rename(tmp_path / "moved.nii.gz")
    with pytest.raises(ValueError, match="b.nii.gz"):
        evaluate_folders(pred_dir, gt_dir, out, progress=False)
    write(pred_dir / "b.nii.gz", np.zeros((20, 18, 15)))
    with pytest.raises(ValueError, match=r"b\.nii\.gz.*shape"):
        evaluate_folders(pred_dir, gt_dir, out, workers=1, progress=False)
    write(pred_dir / "b.nii.gz", np.zeros((20, 18, 16)), shift=0.5)
    with pytest.raises(ValueError, match=r"b\.nii\.gz.*affine"):
        evaluate_folders(pred_dir, gt_dir, out, workers=1, progress=False)
    write(pred_dir / "b.nii.gz", np.zeros((20, 18, 16)))
    write(pred_dir / "c.nii.gz", np.zeros((20, 18, 16)))
    with pytest.raises(ValueError, match="c.nii.gz"):
        evaluate_folders(pred_dir, gt_dir, out, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: no ground-truth label maps"):
        evaluate_folders(pred_dir, tmp_path / "empty", out, progress=False)
    with pytest.raises(MissingFileError, match="nowhere: prediction folder not found"):
        evaluate_folders(tmp_path / "nowhere", gt_dir, out, progress=False)


def test_violin_plot_keeps_labels_without_values(tmp_path):
    path = violin_plot({"1": [0.9, 0.8, float("nan")], "2": [float("nan")], "3": [0.5]}, "DSC", tmp_path / "v.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
