"""``evaluate`` and the post-processing chooser on odd folders: bounded memory whatever the label values, any
known format, temporaries and side outputs ignored, one line naming the file for every bad input, atomic outputs,
NaN never silently averaged (issue 12, points 5, 7 and 8)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from inference.run_helpers import tree_hashes, visible_files, write_array

from focusseg.errors import DatasetError, ImageError, MissingFileError, PartialFailure, UsageError
from focusseg.inference.postprocess_selection import (
    choose_postprocessing,
    choose_postprocessing_for_run,
    read_prediction_pairs,
)
from focusseg.metrics import evaluate_folders
from focusseg.metrics.overlap import label_boxes

AFF = np.diag([1.5, 1.0, 2.0, 1.0])


def _pair(seed: int = 0, shape=(20, 18, 16)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, np.uint8)
    o = rng.integers(2, 6, 3)
    gt[o[0]:o[0] + 8, o[1]:o[1] + 8, o[2]:o[2] + 6] = 1
    gt[12:16, 10:16, 10:14] = 2
    pred = np.roll(gt, 1, axis=0)
    return pred, gt


def _folders(root: Path, n: int = 3, ending: str = ".nii.gz", gt_ending: str | None = None) -> tuple[Path, Path]:
    return _write_pairs(root / "pred", root / "gt", n, ending, gt_ending or ending)


def _write_pairs(pred_dir: Path, gt_dir: Path, n: int, ending: str, gt_ending: str) -> tuple[Path, Path]:
    """``n`` prediction/reference pairs ``c<i>`` written into two new folders."""
    pred_dir.mkdir(parents=True), gt_dir.mkdir(parents=True)
    for i in range(n):
        pred, gt = _pair(i)
        write_array(pred_dir / f"c{i}{ending}", pred, AFF)
        write_array(gt_dir / f"c{i}{gt_ending}", gt, AFF)
    return pred_dir, gt_dir


def _rows(out: Path) -> list[list[str]]:
    with open(out / "metrics.csv") as fh:
        return list(csv.reader(fh))


def _cli(args: list[str], capsys) -> tuple[int, str]:
    from focusseg.cli import main

    rc = main(args)
    return rc, capsys.readouterr().err


PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys
    from focusseg.metrics import evaluate_folders

    def peak_mb():
        # VmHWM: this process's own peak (ru_maxrss survives exec and may report the parent's size)
        try:
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024

    evaluate_folders(sys.argv[1], sys.argv[2], sys.argv[3], workers=1, progress=False)
    print(peak_mb())
""")


def test_huge_label_value_evaluates_in_bounded_memory(tmp_path: Path):
    """A label value of 10^8 once made ``find_objects`` allocate a table of 10^8 boxes (~5 GB)."""
    pred, gt = _pair()
    big = 100_000_000
    gt = gt.astype(np.int32) * big // 2  # labels 5*10^7 and 10^8
    pred = pred.astype(np.int32) * big // 2
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir(), gt_dir.mkdir()
    write_array(pred_dir / "a.nii.gz", pred, AFF)
    write_array(gt_dir / "a.nii.gz", gt, AFF)
    res = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(pred_dir), str(gt_dir), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    peak_mb = int(res.stdout.split()[-1])
    assert peak_mb < 400, f"peak memory {peak_mb} MB"
    rows = _rows(tmp_path / "out")
    assert [int(r[1]) for r in rows[1:]] == [big // 2, big]
    small = evaluate_folders(pred_dir, gt_dir, tmp_path / "ref", labels=[big // 2, big], workers=1, progress=False)
    assert small["per_label"][str(big)]["dice"]["n"] == 1


def test_label_boxes_same_for_small_and_relabelled_values():
    rng = np.random.default_rng(0)
    m = rng.integers(0, 4, (9, 8, 7))
    big = np.where(m > 0, m * 10_000_000, 0)
    small_boxes = label_boxes(m, [1, 2, 3, 5])
    big_boxes = label_boxes(big, [10_000_000, 20_000_000, 30_000_000, 50_000_000])
    assert list(small_boxes.values()) == list(big_boxes.values())
    assert small_boxes[5] is None


@pytest.mark.parametrize("ending, gt_ending", [(".mha", ".mha"), (".nrrd", ".nii.gz"), (".nii", ".nii.gz")])
def test_any_known_format(tmp_path: Path, ending: str, gt_ending: str):
    ref_pred, ref_gt = _folders(tmp_path / "ref")
    pred_dir, gt_dir = _folders(tmp_path / "other", ending=ending, gt_ending=gt_ending)
    evaluate_folders(ref_pred, ref_gt, tmp_path / "a", workers=1, progress=False)
    evaluate_folders(pred_dir, gt_dir, tmp_path / "b", workers=1, progress=False)
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")


def test_temporaries_dot_files_and_side_outputs_are_ignored(tmp_path: Path):
    pred_dir, gt_dir = _folders(tmp_path)
    evaluate_folders(pred_dir, gt_dir, tmp_path / "clean", workers=1, progress=False)
    junk = (pred_dir / "c0.nii.gz").read_bytes()
    for name in (".c9.nii.gz", ".c0.nii.gz.x1y2.tmp.nii.gz", "c9.nii.gz.tmp", "c0_uncertainty.nii.gz",
                 "c0_probabilities.nii.gz", "metrics.csv", "summary.json", "plot.png", "c9.npz"):
        (pred_dir / name).write_bytes(junk)
        (gt_dir / name).write_bytes(junk)
    evaluate_folders(pred_dir, gt_dir, tmp_path / "junk", workers=2, progress=False)
    assert _rows(tmp_path / "clean") == _rows(tmp_path / "junk")


def test_outputs_are_written_atomically_and_inputs_untouched(tmp_path: Path, monkeypatch):
    import focusseg.io.atomic as atomic

    pred_dir, gt_dir = _folders(tmp_path)
    before = {**tree_hashes(pred_dir), **{"gt/" + k: v for k, v in tree_hashes(gt_dir).items()}}
    renamed = []
    real = atomic.os.replace

    def spy(src, dst):
        renamed.append(Path(dst).name)
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", spy)
    evaluate_folders(pred_dir, gt_dir, tmp_path / "out", workers=1, progress=False)
    assert renamed == ["metrics.csv", "summary.json", "dice_violin.png", "nsd_violin.png"]
    assert visible_files(tmp_path / "out") == sorted(renamed)
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []
    after = {**tree_hashes(pred_dir), **{"gt/" + k: v for k, v in tree_hashes(gt_dir).items()}}
    assert after == before


def test_summary_is_strict_json_and_counts_undefined_values(tmp_path: Path):
    pred_dir, gt_dir = _folders(tmp_path, n=2)
    empty = np.zeros((20, 18, 16), np.uint8)
    write_array(pred_dir / "c2.nii.gz", empty, AFF)  # both empty: Dice undefined (default convention)
    write_array(gt_dir / "c2.nii.gz", empty, AFF)
    evaluate_folders(pred_dir, gt_dir, tmp_path / "out", labels=[1], workers=1, progress=False)
    text = (tmp_path / "out" / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    dice = summary["per_label"]["1"]["dice"]
    assert dice["n"] == 2 and dice["n_undefined"] == 1
    assert summary["overall"]["hd95"]["n_undefined"] == 1


@pytest.mark.parametrize("damage, cls, message", [
    ("shape", ImageError, "shape (20, 18, 15) differs from the reference"),
    ("affine", ImageError, "affine differs from the reference"),
    ("nan", ImageError, "NaN/inf voxels"),
    ("float", ImageError, "non-integer values"),
    ("negative", ImageError, "negative values"),
    ("truncated", ImageError, "unreadable"),
    ("empty", ImageError, "empty file"),
    ("5d", ImageError, "expected a 3D label map"),
])
def test_bad_prediction_is_one_line_naming_it(tmp_path: Path, damage: str, cls, message: str, capsys):
    pred_dir, gt_dir = _folders(tmp_path)
    bad = pred_dir / "c1.nii.gz"
    base = _pair(1)[0]
    if damage == "shape":
        write_array(bad, base[:, :, :15], AFF)
    elif damage == "affine":
        shifted = AFF.copy()
        shifted[0, 3] = 0.5
        write_array(bad, base, shifted)
    elif damage == "nan":
        arr = base.astype(np.float32)
        arr[0, 0, 0] = np.nan
        write_array(bad, arr, AFF)
    elif damage == "float":
        write_array(bad, base.astype(np.float32) * 0.5, AFF)
    elif damage == "negative":
        write_array(bad, base.astype(np.int16) - 1, AFF)
    elif damage == "truncated":
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "5d":
        write_array(bad, np.stack([base] * 2, -1)[..., None].repeat(2, -1), AFF)
    with pytest.raises(cls, match=re.escape(message)) as e:
        evaluate_folders(pred_dir, gt_dir, tmp_path / "out", workers=2, progress=False)
    assert e.value.path == bad and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing written from a partial evaluation
    rc, err = _cli(["evaluate", str(pred_dir), str(gt_dir), "--out", str(tmp_path / "out"), "--workers", "1"],
                   capsys)
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert rc == 1 and "Traceback" not in err and lines == [f"error: {bad}: {e.value.problem}"]


def test_several_bad_files_are_all_named(tmp_path: Path, capsys):
    pred_dir, gt_dir = _folders(tmp_path)
    for name in ("c0.nii.gz", "c2.nii.gz"):
        (pred_dir / name).write_bytes(b"")
    with pytest.raises(PartialFailure) as e:
        evaluate_folders(pred_dir, gt_dir, tmp_path / "out", workers=2, progress=False)
    assert [f.path.name for f in e.value.failures] == ["c0.nii.gz", "c2.nii.gz"]
    assert all(isinstance(f, ImageError) for f in e.value.failures)
    rc, err = _cli(["evaluate", str(pred_dir), str(gt_dir), "--out", str(tmp_path / "out")], capsys)
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert rc == 1 and len(lines) == 3 and lines[-1] == "error: 2 file(s) failed, 0 done"
    assert not (tmp_path / "out").exists()


def test_pairing_errors_name_the_files(tmp_path: Path):
    pred_dir, gt_dir = _folders(tmp_path)
    (pred_dir / "c1.nii.gz").unlink()
    (pred_dir / "c2.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"no prediction for ground truth .*c1\.nii\.gz \(and 1 more: c2\)") as e:
        evaluate_folders(pred_dir, gt_dir, tmp_path / "out", progress=False)
    assert e.value.path == pred_dir / "c1.nii.gz"
    write_array(pred_dir / "c1.nii.gz", _pair(1)[0], AFF)
    write_array(pred_dir / "c2.mha", _pair(2)[0], AFF)  # another format for the same case is fine
    evaluate_folders(pred_dir, gt_dir, tmp_path / "out", workers=1, progress=False)
    write_array(pred_dir / "c2.nii.gz", _pair(2)[0], AFF)
    with pytest.raises(DatasetError, match="two files for case 'c2'"):
        evaluate_folders(pred_dir, gt_dir, tmp_path / "out", progress=False)
    (pred_dir / "c2.nii.gz").unlink()
    write_array(pred_dir / "zz.nii.gz", _pair(2)[0], AFF)
    with pytest.raises(DatasetError, match="prediction has no ground truth") as e:
        evaluate_folders(pred_dir, gt_dir, tmp_path / "out", progress=False)
    assert e.value.path == pred_dir / "zz.nii.gz"


def test_usage_errors(tmp_path: Path):
    pred_dir, gt_dir = _folders(tmp_path, n=1)
    with pytest.raises(UsageError, match="connectivity"):
        evaluate_folders(pred_dir, gt_dir, tmp_path / "o", connectivity=4, progress=False)
    with pytest.raises(UsageError, match="nsd_tolerance"):
        evaluate_folders(pred_dir, gt_dir, tmp_path / "o", nsd_tolerance=float("nan"), progress=False)
    with pytest.raises(UsageError, match="labels must be positive"):
        evaluate_folders(pred_dir, gt_dir, tmp_path / "o", labels=[0], progress=False)
    with pytest.raises(UsageError, match="is a file, not a folder"):
        evaluate_folders(pred_dir / "c0.nii.gz", gt_dir, tmp_path / "o", progress=False)
    with pytest.raises(MissingFileError, match="ground-truth folder not found"):
        evaluate_folders(pred_dir, tmp_path / "nowhere", tmp_path / "o", progress=False)


# --- the post-processing chooser reads the same way --------------------------------------------------------------


def _validation(run: Path, n: int = 3, ending: str = ".nii.gz") -> tuple[Path, Path]:
    return _write_pairs(run / "validation" / "predictions", run / "validation" / "reference", n, ending, ending)


def test_read_prediction_pairs_ignores_temporaries_and_reads_any_format(tmp_path: Path):
    pred_dir, ref_dir = _validation(tmp_path / "nii")
    mha_pred, mha_ref = _validation(tmp_path / "mha", ending=".mha")
    junk = (pred_dir / "c0.nii.gz").read_bytes()
    for name in (".c0.nii.gz.ab.tmp.nii.gz", ".hidden.nii.gz", "c0_uncertainty.nii.gz"):
        (pred_dir / name).write_bytes(junk)
    names, preds, refs, spacings = read_prediction_pairs(pred_dir, ref_dir)
    names_m, preds_m, refs_m, spacings_m = read_prediction_pairs(mha_pred, mha_ref)
    assert names == ["c0.nii.gz", "c1.nii.gz", "c2.nii.gz"] and names_m == ["c0.mha", "c1.mha", "c2.mha"]
    for a, b in zip(preds + refs, preds_m + refs_m):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(spacings, spacings_m)


def test_read_prediction_pairs_refuses_a_prediction_without_reference(tmp_path: Path):
    pred_dir, ref_dir = _validation(tmp_path)
    (ref_dir / "c1.nii.gz").unlink()
    with pytest.raises(DatasetError, match="prediction has no reference") as e:
        read_prediction_pairs(pred_dir, ref_dir)
    assert e.value.path == pred_dir / "c1.nii.gz" and "\n" not in str(e.value)
    write_array(ref_dir / "c1.nii.gz", _pair(1)[1][:, :, :10], AFF)
    with pytest.raises(ImageError, match="differs from its reference"):
        read_prediction_pairs(pred_dir, ref_dir)


def test_chooser_uses_only_predictions_with_a_reference(tmp_path: Path):
    pred_dir, ref_dir = _validation(tmp_path)
    write_array(pred_dir / "stale.nii.gz", np.ones((20, 18, 16), np.uint8), AFF)  # e.g. from another fold
    (pred_dir / ".c0.nii.gz.zz.tmp.nii.gz").write_bytes(b"torn")
    res = choose_postprocessing_for_run(tmp_path, [1, 2])
    assert res["cases"] == ["c0.nii.gz", "c1.nii.gz", "c2.nii.gz"]
    assert res["skipped_without_reference"] == ["stale.nii.gz"]
    saved = json.loads((tmp_path / "postprocessing.json").read_text())
    assert saved["cases"] == res["cases"]
    with pytest.raises(MissingFileError, match="no validation predictions"):
        choose_postprocessing_for_run(tmp_path / "nothing", [1])


def test_chooser_refuses_unknown_candidates(tmp_path: Path):
    pred, gt = _pair()
    with pytest.raises(UsageError, match="not a known post-processor"):
        choose_postprocessing([pred], [gt], [1], candidates=[{"name": "os.system"}])
    with pytest.raises(UsageError, match="cannot be applied"):
        choose_postprocessing([pred], [gt], [1], candidates=[{"name": "erode", "no_such_arg": 1}])
    with pytest.raises(UsageError, match="must be a list"):
        choose_postprocessing([pred], [gt], [1], candidates={"name": "erode"})


def test_nibabel_float_labels_that_are_integers_are_fine(tmp_path: Path):
    pred_dir, gt_dir = _folders(tmp_path, n=1)
    nib.save(nib.Nifti1Image(_pair(0)[0].astype(np.float32), AFF), str(pred_dir / "c0.nii.gz"))
    evaluate_folders(pred_dir, gt_dir, tmp_path / "out", workers=1, progress=False)
    assert len(_rows(tmp_path / "out")) == 3
