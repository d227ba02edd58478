"""``focusseg predict`` from DICOM (issue 16 part 2): a folder of DICOM series (one per case folder, channels in
``<case>/<CCCC>/``) predicts exactly what the NIfTI of the same cases predicts, with the same geometry;
``--output-format dicom-seg`` writes a DICOM Segmentation referencing the source series; bad layouts fail with
one line naming the folder or file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("SimpleITK", reason="DICOM input needs SimpleITK (pip install 'focusseg[dicom]')")

from dicom.dicom_helpers import int_image, oblique_affine, write_series  # noqa: E402
from inference.run_helpers import make_run, tiny_plan  # noqa: E402

from focusseg.cli import main  # noqa: E402
from focusseg.io import read_image  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _cases(tmp_path: Path, n_channels: int = 1, n_cases: int = 2) -> tuple[Path, Path]:
    """The same cases as NIfTI (``nifti/<case>_<CCCC>.nii.gz``) and as DICOM (``dicom/<case>/`` or
    ``dicom/<case>/<CCCC>/``), oblique right-handed geometry, whole-number voxels."""
    nifti, dicom = tmp_path / "nifti", tmp_path / "dicom"
    nifti.mkdir(parents=True)
    for i in range(n_cases):
        aff = oblique_affine(angle=0.2 + 0.1 * i)
        for ch in range(n_channels):
            data = int_image(10 * i + ch)
            nib.save(nib.Nifti1Image(data, aff), str(nifti / f"case{i:03d}_{ch:04d}.nii.gz"))
            folder = dicom / f"case{i:03d}" / (f"{ch:04d}" if n_channels > 1 else "")
            write_series(folder, data, aff, series_number=ch + 1)
    return nifti, dicom


def _predict(run: Path, src: Path, out: Path, *extra: str) -> int:
    return main(["predict", str(run), str(src), str(out), "--device", "cpu", "--no-tta", *extra])


def _error_lines(capsys) -> list[str]:
    """The per-case ``error:`` lines (not the closing "N case(s) failed" summary)."""
    return [line for line in capsys.readouterr().err.splitlines()
            if line.startswith("error:") and "case(s) failed" not in line]


def test_dicom_predicts_what_the_nifti_predicts(tmp_path: Path):
    run = make_run(tmp_path / "run")
    nifti, dicom = _cases(tmp_path)
    assert _predict(run, nifti, tmp_path / "from_nifti") == 0
    assert _predict(run, dicom, tmp_path / "from_dicom") == 0
    names = sorted(p.name for p in (tmp_path / "from_dicom").iterdir())
    assert names == ["case000.nii.gz", "case001.nii.gz"]  # <case>.nii.gz by default for DICOM input
    labels = set()
    for name in names:
        ref, ref_geo = read_image(tmp_path / "from_nifti" / name, dtype=np.int16)
        seg, geo = read_image(tmp_path / "from_dicom" / name, dtype=np.int16)
        src_geo = read_image(nifti / name.replace(".nii.gz", "_0000.nii.gz"))[1]
        assert geo.matches(src_geo, atol=1e-4) and ref_geo.matches(src_geo, atol=1e-4)
        np.testing.assert_array_equal(seg, ref)
        labels |= set(np.unique(seg).tolist())
    assert len(labels) >= 2  # a real label map, not all background
    assert _predict(run, dicom, tmp_path / "as_mha", "--output-format", "mha") == 0
    seg, geo = read_image(tmp_path / "as_mha" / "case000.mha", dtype=np.int16)
    np.testing.assert_array_equal(seg, read_image(tmp_path / "from_nifti" / "case000.nii.gz", dtype=np.int16)[0])


def test_multichannel_dicom_and_a_missing_channel(tmp_path: Path, capsys):
    run = make_run(tmp_path / "run", tiny_plan(2))
    nifti, dicom = _cases(tmp_path, n_channels=2, n_cases=1)
    assert _predict(run, nifti, tmp_path / "from_nifti") == 0
    assert _predict(run, dicom, tmp_path / "from_dicom") == 0
    np.testing.assert_array_equal(read_image(tmp_path / "from_dicom" / "case000.nii.gz")[0],
                                  read_image(tmp_path / "from_nifti" / "case000.nii.gz")[0])
    import shutil

    shutil.rmtree(dicom / "case000" / "0001")
    capsys.readouterr()
    assert _predict(run, dicom, tmp_path / "missing") != 0
    errors = _error_lines(capsys)
    assert len(errors) == 1 and "case000/0001" in errors[0] and "lacks channel folder(s) 0001/" in errors[0], errors
    # a one-folder case for a two-channel run names the layout
    write_series(tmp_path / "flat" / "case009", int_image(5), oblique_affine())
    assert _predict(run, tmp_path / "flat", tmp_path / "flat_out") != 0
    errors = _error_lines(capsys)
    assert len(errors) == 1 and "case009" in errors[0] and "0000/, 0001/" in errors[0], errors


def test_dicom_seg_output_references_the_series_and_holds_the_prediction(tmp_path: Path):
    hd = pytest.importorskip("highdicom", reason="--output-format dicom-seg needs highdicom "
                                                 "(pip install 'focusseg[dicom]')")
    import pydicom

    from focusseg.io.dicom import find_series

    run = make_run(tmp_path / "run")
    nifti, dicom = _cases(tmp_path, n_cases=1)
    assert _predict(run, nifti, tmp_path / "ref") == 0
    assert _predict(run, dicom, tmp_path / "seg", "--output-format", "dicom-seg") == 0
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == ["case000.dcm"]
    ref = read_image(tmp_path / "ref" / "case000.nii.gz", dtype=np.int16)[0]
    seg = hd.seg.segread(tmp_path / "seg" / "case000.dcm")
    series = find_series(dicom / "case000")
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in series.files]
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["sphere", "cube"]  # the run's label names
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2]
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    from focusseg import __version__

    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("focusseg", __version__)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.uid
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID and seg.PatientID == sources[0].PatientID
    # one frame per (slice, segment) that holds the segment (empty frames are omitted)
    expected_frames = sum(int((ref[:, :, k] == v).any()) for k in range(ref.shape[2]) for v in (1, 2))
    assert int(seg.NumberOfFrames) == expected_frames > 0
    mask = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in sources], combine_segments=True)
    np.testing.assert_array_equal(mask, np.transpose(ref, (2, 1, 0)))  # (slice, row, column) = the prediction


def test_layout_errors_are_one_line_naming_the_folder(tmp_path: Path, capsys):
    run = make_run(tmp_path / "run")
    aff, data = oblique_affine(angle=0.0), int_image(1, shape=(8, 9, 6))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _predict(run, empty, tmp_path / "o1") != 0
    errors = _error_lines(capsys)
    assert len(errors) == 1 and str(empty) in errors[0] and "no input images" in errors[0]
    src = tmp_path / "in"
    write_series(src / "good", data, aff)
    write_series(src / "two", data, aff, name="A")
    write_series(src / "two", data, aff, name="B", series_number=2)
    (src / "text").mkdir()
    (src / "text" / "scan.nii.gz").write_bytes(b"not a dicom file")
    (src / "blank").mkdir()
    assert _predict(run, src, tmp_path / "o2") != 0
    errors = _error_lines(capsys)
    assert len(errors) == 3, errors
    by_case = {name: next(e for e in errors if str(src / name) in e) for name in ("two", "text", "blank")}
    assert "holds 2 DICOM series" in by_case["two"]
    assert "holds no DICOM series" in by_case["text"] and "scan.nii.gz" in by_case["text"]
    assert "holds no files" in by_case["blank"]
    assert (tmp_path / "o2" / "good.nii.gz").is_file()  # the other cases are still predicted
    nifti, _ = _cases(tmp_path / "n", n_cases=1)
    assert _predict(run, nifti, tmp_path / "o3", "--output-format", "dicom-seg") == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and "case000_0000.nii.gz" in errors[0] and "needs DICOM input" in errors[0], errors
    assert not (tmp_path / "o3").exists()
