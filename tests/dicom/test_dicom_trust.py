"""DICOM input is read without trusting it (``focusseg.io.dicom``): every file's header is checked before any
pixel is read (a multi-frame file anywhere in the series, non-finite rescale or geometry values, a header whose
rows x columns x files exceed the voxel limit, too many files), names that are not valid UTF-8 are refused with
a line that prints, and a case folder, channel folder or file that is a symlink out of the input folder is refused
without being opened. Each refusal is one line naming the file (or folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

sitk = pytest.importorskip("SimpleITK", reason="DICOM input needs SimpleITK (pip install 'focusseg[dicom]')")
pytest.importorskip("pydicom", reason="the damaged headers are written with pydicom")

from dicom.dicom_helpers import edit_header, int_image, oblique_affine, write_series  # noqa: E402

from focusseg.errors import DatasetError, ImageError  # noqa: E402
from focusseg.io.dicom import (  # noqa: E402
    MAX_SERIES_FILES,
    dicom_cases,
    find_series,
    read_dicom_case,
    read_series,
    series_files,
    shown,
)

BAD_NAME = b"\xff\xfe.dcm"  # not valid UTF-8


def _series(folder: Path) -> Path:
    """A small ordered series (IM0000.dcm .. IM0005.dcm, slice k in IM000k)."""
    return write_series(folder, int_image(4, shape=(8, 9, 6)), oblique_affine(angle=0.0), shuffle=False)


@pytest.fixture
def no_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any pixel data is read (the series reader's Execute): refusals come from headers."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("pixels were read before the header was refused")

    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", refuse)


def _refused(folder: Path, culprit: str, match: str, **kwargs) -> ImageError:
    with pytest.raises(ImageError, match=match) as e:
        read_series(folder, **kwargs)
    text = str(e.value)
    assert culprit in text, text
    assert "\n" not in text
    text.encode("utf-8")  # printable on a strict UTF-8 stream
    return e.value


def test_a_later_multi_frame_file_is_refused_naming_it(tmp_path: Path, no_pixels):
    """Only the first file was checked before: a multi-frame file later in the series must be caught by its
    header, not by the pixel reader."""
    folder = _series(tmp_path / "mf")
    edit_header(folder / "IM0004.dcm", frames=3)
    err = _refused(folder, "IM0004.dcm", "multi-frame file")
    assert err.path == folder / "IM0004.dcm"
    # a NumberOfFrames that is no whole number is refused too
    folder = _series(tmp_path / "frames_text")
    edit_header(folder / "IM0002.dcm", NumberOfFrames="2.5")
    _refused(folder, "IM0002.dcm", "NumberOfFrames")


@pytest.mark.parametrize("keyword, value", [
    ("RescaleSlope", "NaN"), ("RescaleIntercept", "inf"), ("PixelSpacing", "nan\\1"),
    ("ImagePositionPatient", "1\\NaN\\2"), ("ImageOrientationPatient", "1\\0\\0\\0\\inf\\0"),
    ("RescaleSlope", "one"),
])
def test_non_finite_header_values_are_refused_naming_the_file(tmp_path: Path, no_pixels, keyword: str, value: str):
    """GDCM reads a NaN RescaleSlope as slope 1 (the series read "fine" before): NaN never passes silently."""
    folder = _series(tmp_path / "s")
    if value == "one":  # not a decimal string at all: pydicom will not write it as DS
        edit_header(folder / "IM0003.dcm", raw={0x00281053: value})
    else:
        edit_header(folder / "IM0003.dcm", **{keyword: value})
    err = _refused(folder, "IM0003.dcm", keyword)
    assert err.path == folder / "IM0003.dcm"


def test_header_bombs_are_refused_before_any_pixel(tmp_path: Path, no_pixels):
    folder = _series(tmp_path / "bomb")
    for p in sorted(folder.iterdir()):  # 65535 x 65535 = 4.3e9 voxels claimed per file, a few bytes held
        edit_header(p, Rows=65535, Columns=65535)
    _refused(folder, "IM0000.dcm", "65535x65535 = 4294836225 voxels, above the limit")
    # each file within the limit, rows x columns x files above it: refused naming the folder
    folder = _series(tmp_path / "many")
    err = _refused(folder, "8x9x6", "above the limit", max_voxels=8 * 9 * 5)
    assert err.path == folder


def test_a_series_of_too_many_files_is_refused_before_scanning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(MAX_SERIES_FILES + 1):
        (folder / f"f{i:05d}.dcm").touch()

    def no_scan(*args, **kwargs):
        raise AssertionError("the folder was scanned by GDCM")

    monkeypatch.setattr(sitk.ImageSeriesReader, "GetGDCMSeriesIDs", no_scan)
    with pytest.raises(ImageError, match=f"more than {MAX_SERIES_FILES} files") as e:
        find_series(folder)
    assert e.value.path == folder
    assert len(series_files(_series(tmp_path / "six"))) == 6
    with pytest.raises(ImageError, match="more than 5 files"):
        series_files(tmp_path / "six", max_files=5)


def test_a_file_name_that_is_not_utf8_is_refused_and_prints(tmp_path: Path):
    """SimpleITK aborts the whole process on such a name (a C++ exception from the str conversion): it is refused
    before SimpleITK sees it, and the error line prints the name escaped."""
    folder = _series(tmp_path / "s")
    os.rename(folder / "IM0002.dcm", os.fsencode(folder) + b"/" + BAD_NAME)
    err = _refused(folder, "\\xff\\xfe.dcm", "not valid UTF-8")
    assert shown(err.path) == str(err.path)  # the path the error carries prints as it is
    assert shown(os.fsdecode(BAD_NAME)) == "\\xff\\xfe.dcm" and shown("é.dcm") == "é.dcm"
    # a dot file with such a name is not part of the series: ignored, as every dot file
    folder = _series(tmp_path / "hidden")
    (Path(os.fsdecode(os.fsencode(folder) + b"/." + BAD_NAME))).write_bytes(b"junk")
    assert read_series(folder)[0].shape == (8, 9, 6)


def test_dot_files_are_never_part_of_the_series(tmp_path: Path):
    """GDCM scans every file of the folder: a hidden copy of a slice (an interrupted copy) must not join the series
    (it would duplicate a slice position)."""
    folder = _series(tmp_path / "s")
    (folder / ".IM0003.dcm").write_bytes((folder / "IM0003.dcm").read_bytes())
    (folder / "IM0004.dcm.tmp").write_bytes((folder / "IM0004.dcm").read_bytes())
    arr, _ = read_series(folder)
    assert arr.shape == (8, 9, 6)
    assert [p.name for p in find_series(folder).files] == [f"IM{k:04d}.dcm" for k in range(6)]


def test_symlinks_out_of_the_input_folder_are_refused(tmp_path: Path, no_pixels):
    victim = _series(tmp_path / "victim" / "series")
    src = tmp_path / "in"
    _series(src / "good")
    (src / "linked_case").symlink_to(victim, target_is_directory=True)
    (src / "two").mkdir()
    _series(src / "two" / "0000")
    (src / "two" / "0001").symlink_to(victim, target_is_directory=True)
    linked_file = _series(src / "file_link")
    (linked_file / "IM0005.dcm").unlink()
    (linked_file / "IM0005.dcm").symlink_to(victim / "IM0005.dcm")
    hidden_link = _series(src / "hidden_link")
    (hidden_link / ".extra.dcm").symlink_to(victim / "IM0001.dcm")
    inside = src / ".store"  # a symlink that stays inside the input folder is fine (a dot folder is no case)
    _series(inside / "real")
    (src / "inside_link").symlink_to(inside / "real", target_is_directory=True)
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    cases, failures = dicom_cases(src, 1)
    assert sorted(cases) == ["good", "inside_link"], (cases, failures)
    assert sorted(failures) == ["file_link", "hidden_link", "linked_case", "two"], failures
    assert "linked_case" in str(failures["linked_case"]) and "outside the input folder" in str(failures["linked_case"])
    cases2, failures2 = dicom_cases(src, 2)
    assert "two/0001" in str(failures2["two"]) and "outside the input folder" in str(failures2["two"])
    assert str(failures["file_link"]).startswith(str(linked_file / "IM0005.dcm"))
    assert str(failures["hidden_link"]).startswith(str(hidden_link / ".extra.dcm"))
    # reading with the input folder as root refuses the link; without a root (the API) a link is followed
    with pytest.raises(ImageError, match="outside the input folder"):
        read_dicom_case([linked_file], root=src)
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before


def test_a_case_folder_named_with_bytes_that_are_not_utf8(tmp_path: Path):
    src = tmp_path / "in"
    _series(src / "good")
    os.rename(_series(src / "renamed"), os.fsencode(src) + b"/case\xff")  # SimpleITK cannot write there
    cases, failures = dicom_cases(src, 1)
    assert list(cases) == ["good"]
    (err,) = failures.values()
    assert isinstance(err, DatasetError)
    text = str(err)
    text.encode("utf-8")
    assert "case\\xff" in text and "not valid UTF-8" in text


def test_predict_reports_each_untrusted_case_on_one_printable_line(tmp_path: Path, capsys):
    """Through the CLI: the good case is predicted; the others are one error line each, all printable (the
    captured stream is strict UTF-8), none a traceback; nothing outside the input folder is read or changed."""
    from inference.run_helpers import make_run

    from focusseg.cli import main

    run = make_run(tmp_path / "run")
    victim = _series(tmp_path / "victim")
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    src = tmp_path / "in"
    write_series(src / "good", int_image(1), oblique_affine(angle=0.2))
    (src / "linked").symlink_to(victim, target_is_directory=True)
    bad_file = _series(src / "badname")
    os.rename(bad_file / "IM0001.dcm", os.fsencode(bad_file) + b"/" + BAD_NAME)
    os.rename(_series(src / "renamed"), os.fsencode(src) + b"/case\xfe")
    edit_header(_series(src / "nan") / "IM0002.dcm", RescaleSlope="NaN")
    edit_header(_series(src / "multiframe") / "IM0005.dcm", frames=2)
    capsys.readouterr()
    code = main(["predict", str(run), str(src), str(tmp_path / "out"), "--device", "cpu", "--no-tta"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:") and "case(s) failed" not in line]
    assert len(lines) == 5, lines
    for culprit in ("linked", "badname/\\xff\\xfe.dcm", "case\\xfe", "nan/IM0002.dcm", "multiframe/IM0005.dcm"):
        assert sum(culprit in line for line in lines) == 1, (culprit, lines)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz"]
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before
