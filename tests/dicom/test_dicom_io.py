"""Reading DICOM series (``focusseg.io.dicom``): a series written from a NIfTI case reads back with the NIfTI's
voxels and geometry (same affine when the NIfTI is right-handed; the same image in world space after
reorientation when it is not), rescale slope/intercept applied, slices sorted by position not by file name;
broken folders are refused with one line naming the folder."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("SimpleITK", reason="DICOM input needs SimpleITK (pip install 'focusseg[dicom]')")

from dicom.dicom_helpers import int_image, oblique_affine, write_series  # noqa: E402

from focusseg.errors import ImageError  # noqa: E402
from focusseg.io import read_image  # noqa: E402
from focusseg.io.dicom import find_series, read_series  # noqa: E402


def _canonical(arr: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    return nib.as_closest_canonical(nib.Nifti1Image(arr, affine))


def test_right_handed_oblique_series_reads_as_the_nifti(tmp_path: Path):
    data = int_image(1)
    aff = oblique_affine()
    nib.save(nib.Nifti1Image(data, aff), str(tmp_path / "case_0000.nii.gz"))
    write_series(tmp_path / "dcm", data, aff)  # files written in a scrambled order
    ref, ref_geo = read_image(tmp_path / "case_0000.nii.gz")
    arr, geo = read_series(tmp_path / "dcm")
    assert arr.dtype == np.float32 and arr.shape == ref.shape == (20, 24, 16)
    np.testing.assert_allclose(geo.affine, ref_geo.affine, atol=1e-5)
    np.testing.assert_allclose(geo.spacing, (1.5, 1.0, 2.0), atol=1e-6)
    np.testing.assert_array_equal(arr, ref)
    series = find_series(tmp_path / "dcm")
    assert [p.name for p in series.files] != sorted(p.name for p in series.files)  # sorted by position, not name


def test_left_handed_nifti_matches_after_reorientation(tmp_path: Path):
    data = int_image(2)
    aff = oblique_affine(left_handed=True)
    write_series(tmp_path / "dcm", data, aff)
    arr, geo = read_series(tmp_path / "dcm")
    assert np.linalg.det(geo.affine[:3, :3]) > 0  # DICOM stacks run along the slice normal
    a, b = _canonical(data, aff), _canonical(arr, geo.affine)
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(b.dataobj), np.asarray(a.dataobj))
    np.testing.assert_array_equal(arr, data[:, :, ::-1])  # the same voxels, z stored the other way


def test_ct_rescale_slope_and_intercept_are_applied(tmp_path: Path):
    data = int_image(3) - 1024.0
    aff = oblique_affine((0.8, 0.8, 2.5), angle=0.0)
    write_series(tmp_path / "ct", data, aff, modality="CT", slope=0.5, intercept=-1024.0)
    arr, geo = read_series(tmp_path / "ct")
    expected = np.round((data + 1024.0) / 0.5) * 0.5 - 1024.0
    np.testing.assert_array_equal(arr, expected.astype(np.float32))
    assert arr.min() < -900  # the intercept is applied, not the raw stored values
    np.testing.assert_allclose(geo.affine, aff, atol=1e-5)


def test_broken_folders_are_refused_naming_the_folder(tmp_path: Path):
    data, aff = int_image(4, shape=(8, 9, 6)), oblique_affine(angle=0.0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match="holds no files") as e:
        read_series(empty)
    assert str(empty) in str(e.value)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("not dicom")
    with pytest.raises(ImageError, match="holds no DICOM series.*notes.txt"):
        read_series(tmp_path / "text")
    two = tmp_path / "two"
    write_series(two, data, aff, name="A")
    write_series(two, data, aff, name="B", series_number=2)
    with pytest.raises(ImageError, match="holds 2 DICOM series"):
        read_series(two)
    stray = write_series(tmp_path / "stray", data, aff)
    (stray / "readme.txt").write_text("hello")
    with pytest.raises(ImageError, match="readme.txt is not an image of the series"):
        read_series(stray)
    gap = write_series(tmp_path / "gap", data, aff, shuffle=False)
    (gap / "IM0003.dcm").unlink()  # a missing slice in the middle
    with pytest.raises(ImageError, match="not evenly spaced"):
        read_series(gap)
    with pytest.raises(ImageError, match="above the limit"):
        read_series(write_series(tmp_path / "big", data, aff), max_voxels=100)


def test_reading_a_series_leaves_the_process_locale_alone(tmp_path: Path):
    """GDCM sets the C locale to "C" while it reads; afterwards Python's text encoding must be what it was."""
    import locale

    before = (locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False))
    write_series(tmp_path / "dcm", int_image(3), oblique_affine())
    read_series(tmp_path / "dcm")
    find_series(tmp_path / "dcm")
    assert (locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False)) == before
