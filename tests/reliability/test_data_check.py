"""`focusseg check` finds every input problem up front, one line naming the file: extra/empty/missing channels,
wrong MSD channel count, 4D/5D images, zero spacing, header bombs, label values that int16 cannot hold, NaN and
undeclared labels, no labelled case, a bad splits_final.json; the CLI prints them without a traceback."""

from __future__ import annotations

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


def _flagged(root: Path, needle: str, culprit: str) -> None:
    problems = _problems(root)
    hits = [p for p in problems if needle in p]
    assert hits, f"not flagged ({needle!r}); got {problems}"
    assert any(culprit in p for p in hits), hits
    assert all("\n" not in p for p in problems)


def _save(path: Path, arr: np.ndarray, affine=None) -> None:
    nib.save(nib.Nifti1Image(arr, np.diag([1.5, 1.0, 2.0, 1.0]) if affine is None else affine), path)


def _raw_nifti(shape, data: bytes, pixdim=None) -> bytes:
    h = nib.Nifti1Header()
    h.set_data_shape(shape)
    h.set_data_dtype(np.float32)
    h["vox_offset"] = 352
    if pixdim is not None:
        h["pixdim"][1:4] = pixdim
    return h.binaryblock + b"\0" * 4 + data


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path / "D", n_cases=3)


def test_extra_channel_file_not_declared(ds: Path):
    img = ds / "imagesTr"
    (img / "case001_0001.nii.gz").write_bytes((img / "case001_0000.nii.gz").read_bytes())
    _flagged(ds, "channel file not declared in dataset.json", "case001_0001.nii.gz")


def test_missing_and_extra_channel_together(tmp_path: Path):
    root = write_tiny_dataset(tmp_path / "D", n_cases=2, n_channels=2)
    img = root / "imagesTr"
    (img / "case000_0001.nii.gz").rename(img / "case000_0002.nii.gz")
    _flagged(root, "missing channel 1", "case000_0001.nii.gz")
    _flagged(root, "not declared", "case000_0002.nii.gz")


def test_empty_channel_file(ds: Path):
    (ds / "imagesTr" / "case002_0000.nii.gz").write_bytes(b"")
    _flagged(ds, "empty file", "case002_0000.nii.gz")


def test_4d_image_in_nnunet_layout(ds: Path):
    _save(ds / "imagesTr" / "case000_0000.nii.gz", np.ones((20, 24, 16, 2), np.float32))
    _flagged(ds, "4D image with 2 volumes; nnU-Net layout needs one 3D file per channel", "case000_0000.nii.gz")


def test_4d_singleton_is_fine(ds: Path):
    p = ds / "imagesTr" / "case000_0000.nii.gz"
    img = nib.load(p)
    _save(p, np.asarray(img.dataobj)[..., None], img.affine)
    assert _problems(ds) == []


def test_5d_image(ds: Path):
    _save(ds / "imagesTr" / "case001_0000.nii.gz", np.ones((20, 24, 16, 1, 3), np.float32))
    _flagged(ds, "5D image", "case001_0000.nii.gz")


def test_zero_spacing(ds: Path):
    p = ds / "imagesTr" / "case001_0000.nii.gz"
    p.write_bytes(gzip.compress(_raw_nifti((20, 24, 16), b"\0" * (20 * 24 * 16 * 4), pixdim=[1.5, 0.0, 2.0])))
    _flagged(ds, "spacing", "case001_0000.nii.gz")


def test_header_bomb(ds: Path):
    p = ds / "labelsTr" / "case002.nii.gz"
    p.write_bytes(gzip.compress(_raw_nifti((1000, 1000, 1000), b"\0" * 100)))
    _flagged(ds, "above the limit", "case002.nii.gz")


def test_truncated_gzip_label(ds: Path):
    p = ds / "labelsTr" / "case000.nii.gz"
    p.write_bytes(p.read_bytes()[:-40])
    _flagged(ds, "unreadable", "case000.nii.gz")


def test_label_above_int16(ds: Path):
    p = ds / "labelsTr" / "case001.nii.gz"
    lab = np.asarray(nib.load(p).dataobj).astype(np.int32)
    lab[lab == 2] = 100_000_000
    _save(p, lab)
    _flagged(ds, "label value 100000000 above 32767", "case001.nii.gz")


def test_negative_label(ds: Path):
    p = ds / "labelsTr" / "case001.nii.gz"
    lab = np.asarray(nib.load(p).dataobj).astype(np.int16)
    lab[lab == 2] = -1
    _save(p, lab)
    _flagged(ds, "negative label value -1", "case001.nii.gz")


def test_nan_label(ds: Path):
    p = ds / "labelsTr" / "case002.nii.gz"
    lab = np.asarray(nib.load(p).dataobj).astype(np.float32)
    lab[0, 0, 0] = np.nan
    _save(p, lab)
    _flagged(ds, "NaN/inf", "case002.nii.gz")


def test_4d_label(ds: Path):
    p = ds / "labelsTr" / "case002.nii.gz"
    lab = np.asarray(nib.load(p).dataobj)
    _save(p, np.stack([lab, lab], -1))
    _flagged(ds, "label is 4D", "case002.nii.gz")


def test_wrong_channel_count_msd(tmp_path: Path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    _save(tmp_path / "imagesTr" / "a.nii.gz", np.ones((5, 6, 7, 3), np.float32), np.eye(4))
    _save(tmp_path / "imagesTr" / "b.nii.gz", np.ones((5, 6, 7), np.float32), np.eye(4))
    for c in "ab":
        _save(tmp_path / "labelsTr" / f"{c}.nii.gz", np.zeros((5, 6, 7), np.uint8), np.eye(4))
    (tmp_path / "dataset.json").write_text(json.dumps({
        "name": "msd", "modality": {"0": "FLAIR", "1": "T1"}, "labels": {"0": "background", "1": "x"},
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in "ab"]}))
    _flagged(tmp_path, "3 channel(s), dataset.json declares 2", "a.nii.gz")
    _flagged(tmp_path, "1 channel(s), dataset.json declares 2", "b.nii.gz")


def test_no_labelled_case(ds: Path):
    for p in (ds / "labelsTr").iterdir():
        p.unlink()
    _flagged(ds, "no labelled case", "labelsTr")


def test_single_case_is_not_a_check_problem(tmp_path: Path):
    """One labelled case can be trained with --fold all; numbered folds refuse it (test_data_caches)."""
    assert _problems(write_tiny_dataset(tmp_path / "D", n_cases=1)) == []


@pytest.mark.parametrize("content, needle", [
    ("{broken", "not valid JSON"),
    (json.dumps({"train": []}), "non-empty list"),
    (json.dumps([{"train": ["case000"]}]), "'train' and a 'val'"),
    (json.dumps([{"train": ["case000", "case001"], "val": ["ghost"]}]), "names case 'ghost'"),
    (json.dumps([{"train": ["case000", "case001"], "val": ["case001"]}]), "both 'train' and 'val'"),
])
def test_bad_split_file(ds: Path, content: str, needle: str):
    (ds / "splits_final.json").write_text(content)
    _flagged(ds, needle, "splits_final.json")


def test_cli_prints_one_line_per_problem_and_no_traceback(ds: Path, capsys: pytest.CaptureFixture):
    from focusseg.cli import main

    _save(ds / "imagesTr" / "case000_0000.nii.gz", np.ones((20, 24, 16, 1, 3), np.float32))
    (ds / "imagesTr" / "case001_0001.nii.gz").write_bytes((ds / "imagesTr" / "case001_0000.nii.gz").read_bytes())
    capsys.readouterr()
    assert main(["check", str(ds)]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert any("case000_0000.nii.gz" in line and "5D" in line for line in lines), err
    assert any("case001_0001.nii.gz" in line for line in lines), err
    assert "Traceback" not in err
