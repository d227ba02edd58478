"""Caches keyed by content: the preprocessed store and the fingerprint are redone when the plan or the data
change (and say so in one line); store writes use unique temporary names; split files are validated and a
numbered fold of a single case is refused naming the split file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from focusseg_testdata import write_tiny_dataset

from focusseg.data.splits import fold_cases, load_or_create_splits, make_splits, read_splits
from focusseg.errors import DatasetError
from focusseg.planning.fingerprint import FINGERPRINT_VERSION, load_or_compute_fingerprint
from focusseg.planning.planner import make_plan
from focusseg.preprocessing import PreprocessedStore, preprocess_dataset


def _plan(data: Path, tmp: Path, **over) -> dict:
    fp = load_or_compute_fingerprint(data, tmp / "fingerprint.json", progress=False, workers=1)
    plan = make_plan(fp)
    plan.update(over)
    return plan


def _pre(data: Path, plan: dict, out: Path, **kw) -> PreprocessedStore:
    return preprocess_dataset(data, plan, out, workers=1, progress=False, **kw)


def _edit_label(path: Path) -> None:
    """Change a label's content (a block of class 2 becomes class 1) and make sure its mtime moves."""
    st = path.stat()
    img = nib.load(path)
    lab = np.asarray(img.dataobj).copy()
    lab[lab == 2] = 1
    lab[2:6, 2:6, 2:6] = 2
    nib.save(nib.Nifti1Image(lab, img.affine), path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path / "D", n_cases=3)


def test_store_key_file_and_case_records(data: Path, tmp_path: Path):
    store = _pre(data, _plan(data, tmp_path), tmp_path / "pre")
    key = json.loads((store.root / "store.json").read_text())
    assert key["format"] >= 2 and len(key["key"]) == 64 and "target_spacing" in key["fields"]
    props = store.properties("case000")
    assert props["store_key"] == key["key"]
    names = [s[0] for s in props["source"]]
    assert names == ["imagesTr/case000_0000.nii.gz", "labelsTr/case000.nii.gz"]
    assert store.case_ids() == store.fresh_case_ids() == ["case000", "case001", "case002"]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_unchanged_store_is_reused_silently(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    plan = _plan(data, tmp_path)
    store = _pre(data, plan, tmp_path / "pre")
    mtimes = {p.name: p.stat().st_mtime_ns for p in store.root.iterdir()}
    capsys.readouterr()
    _pre(data, plan, tmp_path / "pre")
    assert {p.name: p.stat().st_mtime_ns for p in store.root.iterdir()} == mtimes
    assert "stale" not in capsys.readouterr().err


def test_target_spacing_change_repreprocesses_every_case(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    plan = _plan(data, tmp_path)
    store = _pre(data, plan, tmp_path / "pre")
    shapes = {c: store.image(c).shape for c in store.case_ids()}
    capsys.readouterr()
    coarse = {**plan, "target_spacing": [s * 2 for s in plan["target_spacing"]]}
    store = _pre(data, coarse, tmp_path / "pre")
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "stale" in x]
    assert "3 case(s) stale (target_spacing changed)" in line and str(store.root) in line
    for c, shape in shapes.items():
        new = store.image(c).shape
        assert new != shape and new[1:] == store.label(c).shape
        assert tuple(store.properties(c)["shape_preprocessed"]) == new[1:]


def test_edited_label_repreprocesses_that_case(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    plan = _plan(data, tmp_path)
    store = _pre(data, plan, tmp_path / "pre")
    before = {c: np.array(store.label(c)) for c in store.case_ids()}
    _edit_label(data / "labelsTr" / "case001.nii.gz")
    capsys.readouterr()
    store = _pre(data, plan, tmp_path / "pre")
    assert "1 case(s) stale (source files changed)" in capsys.readouterr().err
    assert not np.array_equal(np.array(store.label("case001")), before["case001"])
    for c in ("case000", "case002"):
        np.testing.assert_array_equal(np.array(store.label(c)), before[c])


def test_old_store_without_key_is_redone(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    plan = _plan(data, tmp_path)
    store = _pre(data, plan, tmp_path / "pre")
    (store.root / "store.json").unlink()
    capsys.readouterr()
    _pre(data, plan, tmp_path / "pre")  # every case still carries the right key: nothing to redo
    assert "stale" not in capsys.readouterr().err
    (store.root / "store.json").unlink()
    for c in store.case_ids():  # a store written before keys existed
        props = store.properties(c)
        del props["store_key"], props["source"]
        (store.root / f"{c}.json").write_text(json.dumps(props))
    _pre(data, plan, tmp_path / "pre")
    assert "3 case(s) stale (no store key" in capsys.readouterr().err
    assert all(store.properties(c).get("store_key") for c in store.case_ids())


def test_half_written_case_is_redone(data: Path, tmp_path: Path):
    plan = _plan(data, tmp_path)
    store = _pre(data, plan, tmp_path / "pre")
    (store.root / "case000.json").write_text("{trunc")
    (store.root / "case002.json").unlink()  # killed before its json: not a case
    assert "case002" not in store.case_ids()
    store = _pre(data, plan, tmp_path / "pre")
    assert store.properties("case000")["store_key"] and store.properties("case002")["store_key"]


def test_store_readers_name_the_file(data: Path, tmp_path: Path):
    store = _pre(data, _plan(data, tmp_path), tmp_path / "pre")
    (store.root / "case000.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DatasetError, match="case000.npy"):
        store.image("case000")
    with pytest.raises(FileNotFoundError, match="ghost.json"):
        store.properties("ghost")


def test_unknown_and_colliding_case_ids(data: Path, tmp_path: Path):
    plan = _plan(data, tmp_path)
    with pytest.raises(DatasetError, match="'ghost' is not a labelled case"):
        _pre(data, plan, tmp_path / "pre", case_ids=["case000", "ghost"])
    for suffix in ("0000.nii.gz",):
        (data / "imagesTr" / f"case000_seg_{suffix}").write_bytes((data / "imagesTr" / "case000_0000.nii.gz")
                                                                   .read_bytes())
    (data / "labelsTr" / "case000_seg.nii.gz").write_bytes((data / "labelsTr" / "case000.nii.gz").read_bytes())
    with pytest.raises(DatasetError, match="collide"):
        _pre(data, plan, tmp_path / "pre2")


def test_store_temp_names_are_unique(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two writers of one case never share a temporary file (io.atomic.atomic_path: mkstemp names)."""
    import focusseg.io.atomic as atomic

    seen = []
    real = atomic.tempfile.mkstemp

    def spy(*a, **k):
        fd, name = real(*a, **k)
        seen.append(name)
        return fd, name

    monkeypatch.setattr(atomic.tempfile, "mkstemp", spy)
    s = PreprocessedStore(tmp_path / "pre")
    for _ in range(2):
        s.write_case("c", np.zeros((1, 2, 2, 2)), np.zeros((2, 2, 2)), {"shape_preprocessed": [2, 2, 2]}, {})
    assert len(seen) == len(set(seen)) == 8
    assert all(Path(n).name.startswith(".") and ".tmp" in Path(n).name for n in seen)


def test_fingerprint_is_reused_only_when_nothing_changed(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    path = tmp_path / "fingerprint.json"
    fp = load_or_compute_fingerprint(data, path, progress=False, workers=1)
    assert fp["version"] == FINGERPRINT_VERSION and set(fp["sources"]) == {"case000", "case001", "case002"}
    mtime = path.stat().st_mtime_ns
    capsys.readouterr()
    assert load_or_compute_fingerprint(data, path, progress=False, workers=1) == json.loads(path.read_text())
    assert path.stat().st_mtime_ns == mtime and capsys.readouterr().err == ""
    before = fp["cases"][1]["class_voxels"]
    _edit_label(data / "labelsTr" / "case001.nii.gz")
    fp2 = load_or_compute_fingerprint(data, path, progress=False, workers=1)
    assert "fingerprint" in (err := capsys.readouterr().err) and "1 case(s) changed" in err and "recomputing" in err
    assert fp2["cases"][1]["class_voxels"] != before
    assert json.loads(path.read_text())["cases"][1]["class_voxels"] == fp2["cases"][1]["class_voxels"]


@pytest.mark.parametrize("change, reason", [
    ("dataset_json", "dataset.json changed"),
    ("add_case", "1 case(s) added"),
    ("version", "format version"),
    ("garbage", "unreadable"),
])
def test_fingerprint_stale_reasons(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, change: str,
                                   reason: str):
    path = tmp_path / "fingerprint.json"
    load_or_compute_fingerprint(data, path, progress=False, workers=1)
    if change == "dataset_json":
        ds = json.loads((data / "dataset.json").read_text())
        ds["description"] = "edited"
        (data / "dataset.json").write_text(json.dumps(ds))
    elif change == "add_case":
        for sub, name in (("imagesTr", "case000_0000"), ("labelsTr", "case000")):
            src = data / sub / f"{name}.nii.gz"
            (data / sub / f"{name.replace('case000', 'case009')}.nii.gz").write_bytes(src.read_bytes())
    elif change == "version":
        old = json.loads(path.read_text())
        old["version"] = 1
        path.write_text(json.dumps(old))
    else:
        path.write_text("{")
    capsys.readouterr()
    fp = load_or_compute_fingerprint(data, path, progress=False, workers=1)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert reason in line and str(path) in line
    assert fp["version"] == FINGERPRINT_VERSION


def test_splits_single_case_and_numbered_fold(tmp_path: Path):
    path = tmp_path / "splits_final.json"
    splits = load_or_create_splits(path, ["only"])
    assert fold_cases(splits, "all") == (["only"], [])
    with pytest.raises(DatasetError) as info:
        fold_cases(splits, 0)
    assert "at least 2 labelled cases" in str(info.value) and "splits_final.json" in str(info.value)
    assert "--fold all" in info.value.hint
    assert make_splits(["a", "b"]) == [{"train": ["b"], "val": ["a"]}, {"train": ["a"], "val": ["b"]}]


@pytest.mark.parametrize("content, needle", [
    ("not json", "not valid JSON"),
    ('{"a": 1}', "non-empty list"),
    ("[]", "non-empty list"),
    ('[{"train": "case000", "val": []}]', "'train' and a 'val'"),
    ('[{"train": [1], "val": []}]', "not a string"),
    ('[{"train": ["case000"], "val": ["missing_case"]}]', "names case 'missing_case'"),
    ('[{"train": ["case000"], "val": ["case000"]}]', "in both"),
])
def test_bad_split_files_name_the_file_and_the_case(tmp_path: Path, content: str, needle: str):
    path = tmp_path / "splits_final.json"
    path.write_text(content)
    with pytest.raises(DatasetError) as info:
        load_or_create_splits(path, ["case000", "case001"])
    assert needle in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_fold_out_of_range_names_the_split_file(tmp_path: Path):
    path = tmp_path / "splits_final.json"
    splits = load_or_create_splits(path, [f"c{i}" for i in range(6)])
    assert read_splits(path) == splits
    with pytest.raises(DatasetError, match="fold 7 out of range") as info:
        fold_cases(splits, 7)
    assert str(path) in str(info.value)
    with pytest.raises(DatasetError, match="neither a number nor 'all'"):
        fold_cases(splits, "x")
