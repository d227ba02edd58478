"""Corpus entries for DICOM input others made (``focusseg predict RUN DICOM_DIR OUT``, one series per case
folder): each breaks one case folder of an otherwise valid DICOM input folder in one hostile way. The header of
every file is checked before any pixel is read, so each is refused with one line naming the file or folder, the
other cases are still predicted, and nothing outside the input folder is read or changed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from dicom.dicom_helpers import edit_header, write_series

from .conftest import Sandbox
from .corpus import Entry, case

SHAPE = (20, 24, 16)  # the tiny run's test image shape: 16 slice files per series
AFFINE = np.array([[1.5, 0, 0, -10.0], [0, 1.0, 0, 5.0], [0, 0, 2.0, 3.0], [0, 0, 0, 1]])


def _series(folder: Path, seed: int = 0) -> Path:
    """A valid one-channel series in ``folder`` (IM0000.dcm ... IM0015.dcm, slice k in IM00kk)."""
    rng = np.random.default_rng(seed)
    data = np.round(rng.normal(100.0, 30.0, SHAPE)).astype(np.float32)
    return write_series(folder, data, AFFINE, shuffle=False)


def _dicom_input(sb: Sandbox, good: bool = True) -> Path:
    """``sb.root/in/dicom/`` holding one valid case ``good/`` (when ``good``): the bad case goes beside it."""
    root = sb.root / "in" / "dicom"
    root.mkdir(parents=True)
    if good:
        _series(root / "good")
    return root


def _predict(sb: Sandbox, dicom: Path) -> list:
    return ["predict", sb.run(), dicom, sb.out, "--device", "cpu", "--no-tta"]


def _only_good(sb: Sandbox):
    def check() -> None:
        written = sorted(p.name for p in sb.out.iterdir()) if sb.out.is_dir() else []
        assert written == ["good.nii.gz"], f"expected only the valid case to be predicted, found {written}"

    return check


@case("predict")
def dicom_later_multi_frame_file(sb: Sandbox) -> Entry:
    """A multi-frame file in the middle of a series (only the first file was checked): refused by its header."""
    dicom = _dicom_input(sb)
    edit_header(_series(dicom / "mf") / "IM0010.dcm", frames=2)
    return Entry(_predict(sb, dicom), "mf/IM0010.dcm", after=_only_good(sb))


@case("predict")
def dicom_non_utf8_file_name(sb: Sandbox) -> Entry:
    """A slice file named with bytes that are not UTF-8: SimpleITK aborts the process on such a name; refused
    before it sees it, the name printed escaped."""
    dicom = _dicom_input(sb)
    folder = _series(dicom / "badname")
    os.rename(folder / "IM0003.dcm", os.fsencode(folder) + b"/\xff\xfe.dcm")
    return Entry(_predict(sb, dicom), "badname/\\xff\\xfe.dcm", after=_only_good(sb))


@case("predict")
def dicom_non_utf8_case_folder(sb: Sandbox) -> Entry:
    """A case folder whose name is not UTF-8 (it would name the output file): refused, printed escaped."""
    dicom = _dicom_input(sb)
    os.rename(_series(dicom / "renamed"), os.fsencode(dicom) + b"/case\xff")
    return Entry(_predict(sb, dicom), "case\\xff", after=_only_good(sb))


@case("predict")
def dicom_case_folder_symlink_out(sb: Sandbox) -> Entry:
    """A case folder that is a symlink to a series outside the input folder: refused, never read (the victim
    lies under the sandbox, so the snapshot proves it unchanged)."""
    victim = _series(sb.root / "victim" / "series", seed=1)
    dicom = _dicom_input(sb)
    (dicom / "linked").symlink_to(victim, target_is_directory=True)
    return Entry(_predict(sb, dicom), "linked", after=_only_good(sb))


@case("predict")
def dicom_slice_symlink_out(sb: Sandbox) -> Entry:
    """One slice file of a case is a symlink to a file outside the input folder: refused, never read."""
    victim = _series(sb.root / "victim" / "series", seed=1)
    dicom = _dicom_input(sb)
    folder = _series(dicom / "linkslice")
    (folder / "IM0007.dcm").unlink()
    (folder / "IM0007.dcm").symlink_to(victim / "IM0007.dcm")
    return Entry(_predict(sb, dicom), "linkslice/IM0007.dcm", after=_only_good(sb))


@case("predict")
def dicom_header_bomb_rows_columns(sb: Sandbox) -> Entry:
    """Every slice header claims 65535 x 65535 pixels (4.3e9 voxels per file, 16 files: 6.9e10, far above the
    default voxel limit) but holds 960 bytes of pixels: refused from the header before anything is allocated."""
    dicom = _dicom_input(sb, good=False)
    for p in sorted(_series(dicom / "bomb").iterdir()):
        edit_header(p, Rows=65535, Columns=65535)
    return Entry(_predict(sb, dicom), "bomb", max_rss_mb=300)


@case("predict")
def dicom_too_many_files(sb: Sandbox) -> Entry:
    """A case folder of 10001 slice files (hard links of one slice: no disk space): refused from the listing,
    before any file is opened or scanned."""
    dicom = _dicom_input(sb, good=False)
    seed = _series(sb.root / "seed") / "IM0000.dcm"
    folder = dicom / "flood"
    folder.mkdir()
    for i in range(10_001):
        os.link(seed, folder / f"IM{i:05d}.dcm")
    return Entry(_predict(sb, dicom), "flood", max_rss_mb=300)


@case("predict")
def dicom_nan_rescale_slope(sb: Sandbox) -> Entry:
    """RescaleSlope NaN in one slice (GDCM reads it as slope 1: the case was predicted from wrong values)."""
    dicom = _dicom_input(sb)
    edit_header(_series(dicom / "nanslope") / "IM0005.dcm", RescaleSlope="NaN")
    return Entry(_predict(sb, dicom), "nanslope/IM0005.dcm", after=_only_good(sb))


@case("predict")
def dicom_infinite_pixel_spacing(sb: Sandbox) -> Entry:
    """PixelSpacing inf in one slice header."""
    dicom = _dicom_input(sb)
    edit_header(_series(dicom / "infspacing") / "IM0012.dcm", PixelSpacing="inf\\1")
    return Entry(_predict(sb, dicom), "infspacing/IM0012.dcm", after=_only_good(sb))
