"""dataset.json and the dataset folder: every malformed field, hostile file ending, hostile case id or MSD path
is refused with one DatasetError naming the file (and the field), never joined to a path."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from focusseg_testdata import write_tiny_dataset

from focusseg.data.check import check_dataset
from focusseg.errors import DatasetError, FocussegError, MissingFileError
from focusseg.io import discover_cases, discover_images, load_dataset_spec

GOOD = {"name": "T", "channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz"}


def _write(root: Path, raw: object) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(raw if isinstance(raw, str) else json.dumps(raw))
    return root


def _one_line(exc: FocussegError) -> None:
    assert "\n" not in str(exc) and "dataset.json" in str(exc), str(exc)


def test_missing_dataset_json_is_missing_file_error(tmp_path: Path):
    tmp_path.joinpath("D").mkdir()
    with pytest.raises(MissingFileError, match="dataset.json"):
        load_dataset_spec(tmp_path / "D")
    with pytest.raises(MissingFileError, match="not found"):
        load_dataset_spec(tmp_path / "absent")


@pytest.mark.parametrize("raw, needle", [
    ("{not json", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ("42", "JSON object"),
    ({"name": "x"}, "channel_names"),
    ({**GOOD, "channel_names": ["MR"]}, "'channel_names'"),
    ({**GOOD, "channel_names": {}}, "'channel_names'"),
    ({**GOOD, "channel_names": {"a": "MR"}}, "channel number"),
    ({**GOOD, "channel_names": {"0": 5}}, "named by a string"),
    ({**GOOD, "channel_names": {"0": "MR", "2": "T1"}}, "numbered 0..1"),
    ({**GOOD, "labels": None}, "'labels'"),
    ({**GOOD, "labels": ["background"]}, "'labels'"),
    ({**GOOD, "labels": {"background": 0, "a": "one"}}, "integer value"),
    ({**GOOD, "labels": {"background": 0, "a": 1.5}}, "integer value"),
    ({**GOOD, "labels": {"background": 0, "a": True}}, "integer value"),
    ({**GOOD, "labels": {"background": 0, "a": -1}}, "outside 0..32767"),
    ({**GOOD, "labels": {"background": 0, "a": 40000}}, "outside 0..32767"),
    ({**GOOD, "labels": {"background": 0, "a": 1, "b": 1}}, "both have value 1"),
    ({**GOOD, "labels": {"a": 1}}, "background as 0"),
    ({**GOOD, "labels": {"background": 0, "whole": [1, 2]}}, "region-based"),
    ({k: v for k, v in GOOD.items() if k != "file_ending"}, "'file_ending' is missing"),
    ({**GOOD, "file_ending": 3}, "file_ending"),
    ({**GOOD, "file_ending": "/../../x.nii.gz"}, "file_ending"),
    ({**GOOD, "file_ending": "../x"}, "file_ending"),
    ({**GOOD, "file_ending": "/abs/x.nii.gz"}, "file_ending"),
    ({**GOOD, "file_ending": ".nii.gz/../../y"}, "file_ending"),
    ({**GOOD, "file_ending": ".exe"}, "file_ending"),
    ({**GOOD, "numTraining": "3"}, "numTraining"),
    ({**GOOD, "numTraining": -1}, "numTraining"),
    ({"modality": {"0": "CT"}, "labels": {"0": "background", "x": "y"}}, "integer value"),
    ({"modality": {"0": "CT"}, "labels": {"0": "background"}, "training": {"a": 1}}, "'training' must be a list"),
])
def test_malformed_dataset_json(tmp_path: Path, raw: object, needle: str):
    root = tmp_path / "D"
    root.mkdir()
    if isinstance(raw, bytes):
        (root / "dataset.json").write_bytes(raw)
    else:
        _write(root, raw)
    with pytest.raises(DatasetError) as info:
        load_dataset_spec(root)
    assert needle in str(info.value)
    _one_line(info.value)
    # check reports the same problem as one line naming dataset.json
    (problem,) = check_dataset(root, workers=1)
    assert needle in str(problem) and "dataset.json" in str(problem)


def test_numtraining_is_optional(tmp_path: Path):
    spec = load_dataset_spec(_write(tmp_path / "D", GOOD))
    assert spec.file_ending == ".nii.gz" and spec.n_classes == 2 and spec.labels_contiguous
    assert not load_dataset_spec(_write(tmp_path / "E", {**GOOD, "labels": {"background": 0, "x": 3}})
                                 ).labels_contiguous


@pytest.mark.parametrize("name", ["-rf_0000.nii.gz", "a..b_0000.nii.gz", "x\x01y_0000.nii.gz"])
def test_hostile_case_ids_are_refused_naming_the_file(tmp_path: Path, name: str):
    root = write_tiny_dataset(tmp_path / "D", n_cases=2)
    src = root / "imagesTr" / "case000_0000.nii.gz"
    (root / "imagesTr" / name).write_bytes(src.read_bytes())
    with pytest.raises(DatasetError) as info:
        discover_cases(root)
    assert name in str(info.value) and "case id" in str(info.value)
    (problem,) = check_dataset(root, workers=1)
    assert name in str(problem)


def test_temp_and_dot_files_and_side_outputs_are_not_cases(tmp_path: Path):
    root = write_tiny_dataset(tmp_path / "D", n_cases=2)
    img = root / "imagesTr"
    data = (img / "case000_0000.nii.gz").read_bytes()
    for name in (".case009_0000.nii.gz", ".case008_0000.nii.gz.abcd.tmp.nii.gz", "case007_0000.nii.gz.tmp",
                 "case000_uncertainty.nii.gz", "case000.nii.gz", "case006_0000.nii.gz.tmp.nii.gz"):
        (img / name).write_bytes(data)
    (img / "case005_0000.nii.gz").mkdir()  # a folder is not a file
    assert list(discover_images(img)) == ["case000", "case001"]


def test_discover_images_validates_the_ending_and_the_folder(tmp_path: Path):
    with pytest.raises(DatasetError, match="file_ending"):
        discover_images(tmp_path, "/../x.nii.gz")
    with pytest.raises(MissingFileError):
        discover_images(tmp_path / "absent")


def _msd(root: Path, training: list, labels: dict | None = None) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    img = np.random.default_rng(0).normal(size=(5, 6, 7, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(img, np.eye(4)), root / "imagesTr" / "c1.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7), np.uint8), np.eye(4)), root / "labelsTr" / "c1.nii.gz")
    return _write(root, {"name": "msd", "modality": {"0": "FLAIR", "1": "T1"},
                         "labels": labels or {"0": "background", "1": "x"}, "training": training})


@pytest.mark.parametrize("entry, needle", [
    ({"image": "../outside/c1.nii.gz", "label": "./labelsTr/c1.nii.gz"}, "leaves the dataset folder"),
    ({"image": "./imagesTr/../../c1.nii.gz"}, "leaves the dataset folder"),
    ({"image": "/etc/passwd"}, "must be relative"),
    ({"image": "./imagesTr/c1.nii.gz", "label": "/tmp/x.nii.gz"}, "must be relative"),
    ({"image": 5}, "non-empty string"),
    ({"label": "./labelsTr/c1.nii.gz"}, "no 'image'"),
    (7, "must be an object"),
    ({"image": "./imagesTr/-c1.nii.gz"}, "case id"),
])
def test_msd_paths_must_stay_inside(tmp_path: Path, entry: object, needle: str):
    root = _msd(tmp_path / "M", [entry])
    spec = load_dataset_spec(root)
    with pytest.raises(DatasetError) as info:
        discover_cases(root, spec)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_msd_symlink_out_of_the_folder_is_refused(tmp_path: Path):
    root = _msd(tmp_path / "M", [{"image": "./imagesTr/link.nii.gz"}])
    (tmp_path / "secret.nii.gz").write_bytes(b"x")
    (root / "imagesTr" / "link.nii.gz").symlink_to(tmp_path / "secret.nii.gz")
    with pytest.raises(DatasetError, match="leaves the dataset folder"):
        discover_cases(root)


def test_msd_good_layout_and_duplicates(tmp_path: Path):
    root = _msd(tmp_path / "M", [{"image": "./imagesTr/c1.nii.gz", "label": "./labelsTr/c1.nii.gz"}])
    (case,) = discover_cases(root)
    assert case.case_id == "c1" and case.label is not None
    assert check_dataset(root, workers=1) == []
    dup = _msd(tmp_path / "N", [{"image": "./imagesTr/c1.nii.gz"}, {"image": "imagesTr/c1.nii.gz"}])
    with pytest.raises(DatasetError, match="listed twice"):
        discover_cases(dup)
