"""``predict`` on a folder: inputs never modified, outputs never written among the inputs or read back as cases,
odd files ignored, a bad case reported while the others are predicted (issue 12, points 2, 7 and 8)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from inference.run_helpers import (
    affine,
    blob_image,
    make_run,
    tiny_plan,
    tree_hashes,
    visible_files,
    write_array,
    write_inputs,
)

from focusseg.errors import DatasetError, ImageError, MissingFileError, PartialFailure, UsageError
from focusseg.inference.folders import predict_folder
from focusseg.inference.predictor import EnsemblePredictor, Predictor


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture(scope="module")
def run2(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs2") / "run", plan=tiny_plan(n_channels=2), seed=1)


def _predict(run_dir: Path, in_dir: Path, out_dir: Path, **kw) -> list[Path]:
    return predict_folder(Predictor.from_run(run_dir, device="cpu"), in_dir, out_dir, progress=False, **kw)


def _cli(args: list[str], capsys) -> tuple[int, str]:
    from focusseg.cli import main

    rc = main([*args, "--device", "cpu"])
    return rc, capsys.readouterr().err


def test_out_equal_to_in_is_refused_and_nothing_changes(run: Path, tmp_path: Path, capsys):
    in_dir = tmp_path / "in"
    write_inputs(in_dir, 2)
    before = tree_hashes(in_dir)
    with pytest.raises(UsageError, match="is the input folder or lies inside it") as e:
        _predict(run, in_dir, in_dir)
    assert e.value.path == in_dir and str(in_dir) in e.value.problem  # names both folders
    with pytest.raises(UsageError, match="is the input folder or lies inside it"):
        _predict(run, in_dir, in_dir / "preds")
    rc, err = _cli(["predict", str(run), str(in_dir), str(in_dir)], capsys)
    assert rc == 2 and "Traceback" not in err and err.startswith(f"error: {in_dir}: the output folder {in_dir}")
    assert tree_hashes(in_dir) == before and not (in_dir / "preds").exists()


def test_out_equal_to_run_folder_is_refused(run: Path, tmp_path: Path):
    write_inputs(tmp_path / "in", 1)
    before = tree_hashes(run)
    for out in (run, run / "validation" / "predictions"):
        with pytest.raises(UsageError, match="is the run folder"):
            _predict(run, tmp_path / "in", out)
    assert tree_hashes(run) == before


def test_out_inside_an_input_free_folder_is_fine(run: Path, tmp_path: Path):
    """An output folder inside a folder that holds no input images (the input folder is a sibling) is fine."""
    write_inputs(tmp_path / "work" / "in", 1)
    (written,) = _predict(run, tmp_path / "work" / "in", tmp_path / "work" / "out")
    assert written == tmp_path / "work" / "out" / "case000.nii.gz"


def test_odd_files_are_not_cases_and_inputs_are_unchanged(run: Path, tmp_path: Path):
    in_dir = tmp_path / "in"
    ids = write_inputs(in_dir, 2)
    image_bytes = write_array(tmp_path / "x.nii.gz", blob_image(5)).read_bytes()
    for name in (".case009_0000.nii.gz", ".case009_0000.nii.gz.ab12.tmp.nii.gz", "case009_0000.nii.gz.tmp",
                 "case000_uncertainty.nii.gz", "case000_0000_probabilities.nii.gz", "notes.nii.gz",
                 "case000.nii.gz"):
        (in_dir / name).write_bytes(image_bytes)
    (in_dir / "README.txt").write_text("not an image")
    (in_dir / "sub_0000.nii.gz").mkdir()  # a folder named like an image
    before = tree_hashes(in_dir)
    written = _predict(run, in_dir, tmp_path / "out")
    assert [p.name for p in written] == [f"{c}.nii.gz" for c in ids]
    assert visible_files(tmp_path / "out") == [f"{c}.nii.gz" for c in ids]
    assert tree_hashes(in_dir) == before


def test_rerun_on_own_outputs_reads_nothing_back(run: Path, tmp_path: Path):
    """Predicting again into the same output folder rewrites the same files and nothing else."""
    write_inputs(tmp_path / "in", 2)
    first = _predict(run, tmp_path / "in", tmp_path / "out")
    hashes = tree_hashes(tmp_path / "out")
    second = _predict(run, tmp_path / "in", tmp_path / "out")
    assert first == second and tree_hashes(tmp_path / "out") == hashes


def test_missing_channel_is_reported_and_other_cases_predicted(run2: Path, tmp_path: Path, capsys):
    in_dir = tmp_path / "in"
    write_inputs(in_dir, 3, n_channels=2)
    (in_dir / "case001_0001.nii.gz").unlink()
    with pytest.raises(PartialFailure) as e:
        _predict(run2, in_dir, tmp_path / "out")
    assert e.value.done == 2 and len(e.value.failures) == 1
    f = e.value.failures[0]
    assert isinstance(f, MissingFileError) and f.path == in_dir / "case001_0001.nii.gz"
    assert "case case001 lacks channel file(s) case001_0001.nii.gz" in f.problem
    assert visible_files(tmp_path / "out") == ["case000.nii.gz", "case002.nii.gz"]
    rc, err = _cli(["predict", str(run2), str(in_dir), str(tmp_path / "out2")], capsys)
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert rc == 1 and "Traceback" not in err
    assert lines[0] == f"error: {in_dir / 'case001_0001.nii.gz'}: {f.problem}"
    assert lines[-1] == "error: 1 case(s) failed, 2 done"


def test_surplus_channel_is_refused_per_case(run: Path, tmp_path: Path):
    in_dir = tmp_path / "in"
    write_inputs(in_dir, 2)
    write_array(in_dir / "case001_0001.nii.gz", blob_image(3))
    with pytest.raises(PartialFailure) as e:
        _predict(run, in_dir, tmp_path / "out")
    (f,) = e.value.failures
    assert isinstance(f, DatasetError) and f.path == in_dir / "case001_0001.nii.gz" and "beyond the 1" in f.problem
    assert visible_files(tmp_path / "out") == ["case000.nii.gz"]


def _corrupt_gzip(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, message", [
    ("nan", "NaN/inf voxels"),
    ("truncated", "unreadable"),
    ("not-gzip", "unreadable"),
    ("empty", "empty file"),
    ("geometry", "geometry differs"),
    ("4d", "channel"),
    ("zero-spacing", "spacing"),
])
def test_bad_case_is_reported_and_others_predicted(run: Path, run2: Path, tmp_path: Path, damage: str,
                                                   message: str):
    in_dir = tmp_path / "in"
    two = damage == "geometry"
    run_dir = run2 if two else run
    write_inputs(in_dir, 3, n_channels=2 if two else 1)
    bad = in_dir / ("case001_0001.nii.gz" if two else "case001_0000.nii.gz")
    if damage == "nan":
        img = blob_image(1)
        img[5, 5, 5] = np.nan
        write_array(bad, img)
    elif damage == "truncated":
        _corrupt_gzip(bad)
    elif damage == "not-gzip":
        bad.write_bytes(b"\x1f\x8b" + b"garbage" * 50)
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "geometry":
        write_array(bad, blob_image(1), affine(shift=3.0))
    elif damage == "4d":
        write_array(bad, np.stack([blob_image(1)] * 3, -1))
    elif damage == "zero-spacing":  # a header whose pixdim says 0 mm (no qform/sform)
        img = nib.Nifti1Image(blob_image(1), None)
        img.header["pixdim"][1:4] = [1.5, 0.0, 2.0]
        img.header.set_qform(None, code=0)
        img.header.set_sform(None, code=0)
        nib.save(img, str(bad))
    before = tree_hashes(in_dir)
    with pytest.raises(PartialFailure) as e:
        _predict(run_dir, in_dir, tmp_path / "out")
    (f,) = e.value.failures
    assert isinstance(f, ImageError) and message in str(f) and "\n" not in f.one_line()
    assert str(in_dir / "case001_") in str(f)
    assert e.value.done == 2 and visible_files(tmp_path / "out") == ["case000.nii.gz", "case002.nii.gz"]
    assert tree_hashes(in_dir) == before


def test_bad_case_id_is_reported(run: Path, tmp_path: Path):
    in_dir = tmp_path / "in"
    write_inputs(in_dir, 1)
    write_array(in_dir / "-rf_0000.nii.gz", blob_image(2))
    write_array(in_dir / "a..b_0000.nii.gz", blob_image(2))
    with pytest.raises(PartialFailure) as e:
        _predict(run, in_dir, tmp_path / "out")
    assert sorted(f.path.name for f in e.value.failures) == ["-rf_0000.nii.gz", "a..b_0000.nii.gz"]
    assert all("cannot name a file" in f.problem for f in e.value.failures)
    assert visible_files(tmp_path / "out") == ["case000.nii.gz"]


def test_empty_and_missing_input_folders(run: Path, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden_0000.nii.gz").write_bytes(b"x")
    with pytest.raises(DatasetError, match="empty: no input images"):
        _predict(run, tmp_path / "empty", tmp_path / "out")
    with pytest.raises(MissingFileError, match="nowhere: input folder not found"):
        _predict(run, tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mha_inputs_give_mha_outputs_with_the_same_geometry(run: Path, tmp_path: Path):
    from focusseg.io import read_image

    write_inputs(tmp_path / "nii", 1)
    write_inputs(tmp_path / "mha", 1, ending=".mha")
    (a,) = _predict(run, tmp_path / "nii", tmp_path / "out_nii")
    (b,) = _predict(run, tmp_path / "mha", tmp_path / "out_mha")
    assert b.name == "case000.mha"
    seg_a, geo_a = read_image(a)
    seg_b, geo_b = read_image(b)
    _, geo_in = read_image(tmp_path / "mha" / "case000_0000.mha")
    assert geo_b.matches(geo_in) and geo_b.matches(geo_a)
    np.testing.assert_array_equal(seg_a, seg_b)


def test_file_ending_restricts_and_is_validated(run: Path, tmp_path: Path):
    in_dir = tmp_path / "in"
    write_inputs(in_dir, 1)
    write_inputs(in_dir, 1, ending=".mha", first=1)
    assert [p.name for p in _predict(run, in_dir, tmp_path / "a")] == ["case000.nii.gz", "case001.mha"]
    assert [p.name for p in _predict(run, in_dir, tmp_path / "b", file_ending=".mha")] == ["case001.mha"]
    with pytest.raises(UsageError, match="not a plain file extension"):
        _predict(run, in_dir, tmp_path / "c", file_ending="/../x")
    write_inputs(in_dir, 1, ending=".nii")  # case000 now twice: .nii.gz and .nii
    with pytest.raises(PartialFailure) as e:
        _predict(run, in_dir, tmp_path / "d")
    (f,) = e.value.failures
    assert "a second file for the same case" in f.problem and f.path.name.startswith("case000_0000.nii")


def test_ensemble_disagreeing_members_is_a_usage_error(run: Path, run2: Path):
    with pytest.raises(UsageError, match="disagree on input channels"):
        EnsemblePredictor([Predictor.from_run(run, device="cpu"), Predictor.from_run(run2, device="cpu")])
    with pytest.raises(UsageError, match="one positive weight per run"):
        EnsemblePredictor([Predictor.from_run(run, device="cpu")], weights=[float("nan")])


def test_uncertainty_side_output_is_not_read_back(run: Path, tmp_path: Path):
    write_inputs(tmp_path / "in", 1)
    p = EnsemblePredictor([Predictor.from_run(run, device="cpu")], uncertainty="entropy")
    predict_folder(p, tmp_path / "in", tmp_path / "out", progress=False)
    assert visible_files(tmp_path / "out") == ["case000.nii.gz", "case000_uncertainty.nii.gz"]
    # the output folder, used as a reference folder, shows one case only
    from focusseg.metrics.files import label_files

    assert list(label_files(tmp_path / "out")) == ["case000"]
    seg = nib.load(tmp_path / "out" / "case000.nii.gz")
    assert seg.shape == blob_image(0).shape


def test_truncated_gzip_helper_really_breaks_the_file(tmp_path: Path):
    p = write_array(tmp_path / "x.nii.gz", blob_image(0))
    _corrupt_gzip(p)
    with pytest.raises((EOFError, OSError, gzip.BadGzipFile)):
        gzip.decompress(p.read_bytes())
