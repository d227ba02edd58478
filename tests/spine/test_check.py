"""`focusseg check` flags each corruption of a dataset with a message naming the file."""

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from focusseg_testdata import write_tiny_dataset

from focusseg.data.check import check_dataset


def _problems(root: Path) -> list[str]:
    return [str(p) for p in check_dataset(root, workers=1)]


def test_clean_dataset_has_no_problems(tiny_dataset: Path):
    assert _problems(tiny_dataset) == []


def _rewrite(path: Path, fn) -> None:
    img = nib.load(path)
    data, affine = fn(np.asarray(img.dataobj).copy(), img.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), path)


@pytest.mark.parametrize("corruption, needle, culprit", [
    ("nan", "NaN/inf voxels", "case001_0000.nii.gz"),
    ("inf", "NaN/inf voxels", "case001_0000.nii.gz"),
    ("shape", "shape", "case002.nii.gz"),
    ("affine", "affine differs", "case003.nii.gz"),
    ("undeclared", "label values [7] not declared", "case004.nii.gz"),
    ("missing_channel", "missing channel 1", "case000_0001.nii.gz"),
    ("truncated", "unreadable", "case005_0000.nii.gz"),
    ("empty", "empty file", "case005_0001.nii.gz"),
    ("orphan_label", "label without any image", "case099.nii.gz"),
    ("non_integer", "non-integer", "case002.nii.gz"),
])
def test_each_corruption_is_flagged(tmp_path: Path, corruption: str, needle: str, culprit: str):
    root = write_tiny_dataset(tmp_path / "D", n_cases=6, n_channels=2)
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    if corruption == "nan":
        _rewrite(img_dir / "case001_0000.nii.gz", lambda d, a: (np.where(d > 2, np.nan, d).astype(np.float32), a))
    elif corruption == "inf":
        _rewrite(img_dir / "case001_0000.nii.gz", lambda d, a: (np.where(d > 2, np.inf, d).astype(np.float32), a))
    elif corruption == "shape":
        _rewrite(lab_dir / "case002.nii.gz", lambda d, a: (d[:-1], a))
    elif corruption == "affine":
        def shift(d, a):
            a[0, 3] += 5.0
            return d, a
        _rewrite(lab_dir / "case003.nii.gz", shift)
    elif corruption == "undeclared":
        _rewrite(lab_dir / "case004.nii.gz", lambda d, a: (np.where(d == 2, 7, d).astype(np.uint8), a))
    elif corruption == "missing_channel":
        (img_dir / "case000_0001.nii.gz").unlink()
    elif corruption == "truncated":
        p = img_dir / "case005_0000.nii.gz"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif corruption == "empty":
        (img_dir / "case005_0001.nii.gz").write_bytes(b"")
    elif corruption == "orphan_label":
        (lab_dir / "case000.nii.gz").rename(lab_dir / "case099.nii.gz")
    elif corruption == "non_integer":
        _rewrite(lab_dir / "case002.nii.gz", lambda d, a: (d.astype(np.float32) * 0.5, a))
    problems = _problems(root)
    hits = [p for p in problems if needle in p]
    assert hits, f"{corruption}: not flagged; got {problems}"
    assert any(culprit in p for p in hits), f"{corruption}: message does not name {culprit}: {hits}"


def test_cli_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture):
    from focusseg.cli import main  # the one handler (the typer app alone lets CheckFailed escape)

    root = write_tiny_dataset(tmp_path / "D", n_cases=2)
    assert main(["check", str(root)]) == 0
    with gzip.open(root / "labelsTr" / "case000.nii.gz", "wb") as f:
        f.write(b"garbage")
    capsys.readouterr()
    code = main(["check", str(root)])
    err = capsys.readouterr().err
    assert code == 1 and "case000.nii.gz" in err and "Traceback" not in err


def test_bad_dataset_json(tmp_path: Path):
    root = write_tiny_dataset(tmp_path / "D", n_cases=1)
    (root / "dataset.json").write_text(json.dumps({"name": "x"}))
    (p,) = _problems(root)
    assert "dataset.json" in p
