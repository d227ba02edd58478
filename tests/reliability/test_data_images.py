"""read_image is bounded and strict: header-size bombs fail fast in little memory, truncated/corrupt files and
gzip give one ImageError naming the file, zero/NaN spacing and 5D images are refused, 2D and singleton axes are
read as 3D."""

from __future__ import annotations

import gzip
import resource
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from focusseg.errors import ImageError, UsageError
from focusseg.io import DEFAULT_MAX_VOXELS, Geometry, read_case, read_image, voxel_limit, write_segmentation


def nifti_bytes(shape: tuple[int, ...], dtype=np.float32, data: bytes | None = None, pixdim=None) -> bytes:
    """A raw NIfTI-1 file: a header declaring ``shape``/``dtype`` followed by ``data`` (default: exactly the
    declared amount of zeros)."""
    h = nib.Nifti1Header()
    h.set_data_shape(shape)
    h.set_data_dtype(dtype)
    h["vox_offset"] = 352
    if pixdim is not None:
        h["pixdim"][1 : 1 + len(pixdim)] = pixdim
    if data is None:
        data = b"\0" * (int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return h.binaryblock + b"\0" * 4 + data


def _bounded(path: Path, needle: str, max_mb: float = 20.0, **kw) -> ImageError:
    """read_image(path) raises ImageError containing ``needle`` within 2 s and under ``max_mb`` MB of Python/NumPy
    allocations (tracemalloc), and the process's peak RSS grows by less than 200 MB."""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ImageError) as info:
            read_image(path, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0
    assert peak < max_mb * 1e6, f"{peak / 1e6:.1f} MB allocated"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200 * 1024  # KiB on Linux
    msg = str(info.value)
    assert needle in msg and path.name in msg and "\n" not in msg, msg
    return info.value


def test_header_bomb_nii_is_refused_before_allocating(tmp_path: Path):
    p = tmp_path / "bomb.nii"
    p.write_bytes(nifti_bytes((1000, 1000, 1000), data=b"\0" * 1000))
    e = _bounded(p, "header declares 1000x1000x1000 = 1000000000 voxels, above the limit of 536870912")
    assert "FOCUSSEG_MAX_VOXELS" in str(e)


def test_header_bomb_counts_every_axis(tmp_path: Path):
    p = tmp_path / "bomb4d.nii"
    p.write_bytes(nifti_bytes((600, 600, 600, 3), data=b"\0" * 1000))
    _bounded(p, "600x600x600x3")


def test_header_lie_below_the_limit_nii(tmp_path: Path):
    p = tmp_path / "lie.nii"
    p.write_bytes(nifti_bytes((700, 700, 700), data=b"\0" * 4096))  # 343 M voxels < limit, 4 KB of data
    _bounded(p, "truncated: header declares")


def test_header_lie_below_the_limit_gz(tmp_path: Path):
    p = tmp_path / "lie.nii.gz"
    p.write_bytes(gzip.compress(nifti_bytes((700, 700, 700), data=b"\0" * 4096)))
    _bounded(p, "a gzip file of")


def test_truncated_nii(tmp_path: Path):
    p = tmp_path / "t.nii"
    p.write_bytes(nifti_bytes((10, 10, 10))[:-100])
    _bounded(p, "truncated")


@pytest.mark.parametrize("cut", [30, 1000, 3000])
def test_truncated_nii_gz(tmp_path: Path, cut: int):
    data = np.random.default_rng(0).normal(size=1000).astype(np.float32).tobytes()
    full = gzip.compress(nifti_bytes((10, 10, 10), data=data))
    p = tmp_path / "t.nii.gz"
    p.write_bytes(full[: len(full) - cut])
    _bounded(p, "unreadable" if cut < 3000 else "truncated")


def test_gzip_with_less_data_than_declared(tmp_path: Path):
    p = tmp_path / "short.nii.gz"
    p.write_bytes(gzip.compress(nifti_bytes((10, 10, 10), data=b"\1" * 3000)))
    _bounded(p, "truncated: header declares 4000 bytes of voxel data, the gzip stream holds 3000")


def test_corrupt_gzip(tmp_path: Path):
    data = np.random.default_rng(0).normal(size=1000).astype(np.float32).tobytes()
    raw = bytearray(gzip.compress(nifti_bytes((10, 10, 10), data=data)))
    raw[len(raw) // 2 : len(raw) // 2 + 40] = b"x" * 40
    p = tmp_path / "corrupt.nii.gz"
    p.write_bytes(bytes(raw))
    _bounded(p, "unreadable")
    for fill in (b"\0", b"\xff"):  # a stream that still inflates to enough bytes: only the CRC can tell
        for where in (0.3, 0.5, 0.7):
            raw = bytearray(gzip.compress(nifti_bytes((10, 10, 10), data=data)))
            at = int(len(raw) * where)
            raw[at : at + 64] = fill * 64
            p.write_bytes(bytes(raw))
            _bounded(p, "gzip")
    q = tmp_path / "plain.nii.gz"  # not gzip at all
    q.write_bytes(nifti_bytes((4, 4, 4)))
    _bounded(q, "gzip")


def test_garbage_and_empty_files(tmp_path: Path):
    (tmp_path / "g.nii").write_bytes(b"x" * 2000)
    _bounded(tmp_path / "g.nii", "not a NIfTI file")
    (tmp_path / "s.nii").write_bytes(b"x" * 20)
    _bounded(tmp_path / "s.nii", "shorter than a NIfTI header")
    (tmp_path / "e.nii.gz").write_bytes(b"")
    _bounded(tmp_path / "e.nii.gz", "empty file")
    _bounded(tmp_path / "absent.nii.gz", "file not found")


@pytest.mark.parametrize("pixdim", [[1.0, 0.0, 1.0], [1.0, -2.0, 1.0], [np.nan, 1.0, 1.0], [1.0, 1.0, np.inf]])
def test_zero_negative_nan_spacing(tmp_path: Path, pixdim):
    p = tmp_path / "sp.nii"
    p.write_bytes(nifti_bytes((4, 4, 4), pixdim=pixdim))
    _bounded(p, "spacing")


def test_zero_affine_column(tmp_path: Path):
    h = nib.Nifti1Header()
    h.set_data_shape((4, 4, 4))
    h.set_data_dtype(np.float32)
    h["vox_offset"] = 352
    h.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)  # pixdim fine, the sform has a zero column
    (tmp_path / "z.nii").write_bytes(h.binaryblock + b"\0" * (4 + 256))
    _bounded(tmp_path / "z.nii", "zero voxel spacing")


def test_dimensionality(tmp_path: Path):
    for shape, expect in [((4, 5), (4, 5, 1)), ((6,), (6, 1, 1)), ((4, 4, 4, 1), (4, 4, 4)),
                          ((4, 4, 4, 1, 1), (4, 4, 4)), ((4, 4, 4, 2), (4, 4, 4, 2))]:
        p = tmp_path / f"d{len(shape)}_{shape[-1]}.nii"
        p.write_bytes(nifti_bytes(shape))
        arr, geo = read_image(p)
        assert arr.shape == expect and geo.shape == expect[:3]
    p = tmp_path / "five.nii"
    p.write_bytes(nifti_bytes((4, 4, 4, 1, 3)))
    _bounded(p, "5D image")
    p = tmp_path / "six.nii"
    p.write_bytes(nifti_bytes((4, 4, 4, 2, 2, 2)))
    _bounded(p, "6D image")


def test_4d_in_nnunet_layout_is_refused_by_read_case(tmp_path: Path):
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 2), np.float32), np.eye(4)), tmp_path / "c_0000.nii.gz")
    image, _, _ = read_case([tmp_path / "c_0000.nii.gz"])  # MSD reading: the volumes are channels
    assert image.shape == (2, 4, 4, 4)
    with pytest.raises(ImageError, match="4D image with 2 volumes; nnU-Net layout needs one 3D file per channel"):
        read_case([tmp_path / "c_0000.nii.gz"], layout="nnunetv2")
    with pytest.raises(ImageError, match="2 channel.*declares 3"):
        read_case([tmp_path / "c_0000.nii.gz"], n_channels=3)


def test_read_case_label_rules(tmp_path: Path):
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), tmp_path / "i.nii.gz")
    for name, lab, needle in [
        ("big", np.full((4, 4, 4), 40000, np.int32), "40000 outside 0..32767"),
        ("neg", np.full((4, 4, 4), -3, np.int16), "-3 outside"),
        ("nan", np.where(np.eye(4)[:, :, None] > 0, np.nan, 1.0).repeat(4, 2).astype(np.float32), "NaN"),
        ("frac", np.full((4, 4, 4), 0.5, np.float32), "non-integer"),
        ("undecl", np.full((4, 4, 4), 7, np.uint8), "label values [7] not declared"),
        ("fourd", np.zeros((4, 4, 4, 2), np.uint8), "4D"),
    ]:
        nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / f"{name}.nii.gz")
        with pytest.raises(ImageError, match=needle.replace("[", r"\[").replace("]", r"\]")) as info:
            read_case([tmp_path / "i.nii.gz"], tmp_path / f"{name}.nii.gz", label_values=[0, 1])
        assert f"{name}.nii.gz" in str(info.value)


def test_voxel_limit_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    p = tmp_path / "ok.nii"
    p.write_bytes(nifti_bytes((10, 10, 10)))
    assert voxel_limit() == DEFAULT_MAX_VOXELS == 1024**3 // 2
    read_image(p)
    with pytest.raises(ImageError, match="10x10x10 = 1000 voxels, above the limit of 999"):
        read_image(p, max_voxels=999)
    monkeypatch.setenv("FOCUSSEG_MAX_VOXELS", "500")
    with pytest.raises(ImageError, match="above the limit of 500"):
        read_image(p)
    assert read_image(p, max_voxels=1000)[0].shape == (10, 10, 10)  # the argument wins
    monkeypatch.setenv("FOCUSSEG_MAX_VOXELS", "2_000")
    assert read_image(p)[0].shape == (10, 10, 10)
    monkeypatch.setenv("FOCUSSEG_MAX_VOXELS", "lots")
    with pytest.raises(UsageError, match="FOCUSSEG_MAX_VOXELS"):
        read_image(p)


def _mha(dims, spacing, n_data: int) -> bytes:
    head = (f"ObjectType = Image\nNDims = {len(dims)}\nDimSize = {' '.join(map(str, dims))}\n"
            f"ElementSpacing = {' '.join(map(str, spacing))}\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n")
    return head.encode() + b"\0" * n_data


def test_sitk_header_is_checked_before_reading(tmp_path: Path):
    import SimpleITK  # noqa: F401  (imported first so that its import time is not measured)

    (tmp_path / "bomb.mha").write_bytes(_mha((1000, 1000, 1000), (1, 1, 1), 100))
    _bounded(tmp_path / "bomb.mha", "1000x1000x1000 = 1000000000 voxels")
    (tmp_path / "zero.mha").write_bytes(_mha((4, 4, 4), (1, 0, 1), 256))
    _bounded(tmp_path / "zero.mha", "spacing")
    (tmp_path / "five.mha").write_bytes(_mha((4, 4, 4, 2, 2), (1, 1, 1, 1, 1), 1024))
    _bounded(tmp_path / "five.mha", "5D image")
    (tmp_path / "four.mha").write_bytes(_mha((4, 4, 4, 2), (1, 2, 3, 1), 512))
    arr, geo = read_image(tmp_path / "four.mha")
    assert arr.shape == (4, 4, 4, 2) and geo.spacing == pytest.approx((1, 2, 3))
    (tmp_path / "trunc.mha").write_bytes(_mha((4, 4, 4), (1, 1, 1), 100))
    _bounded(tmp_path / "trunc.mha", "truncated: header declares 256 bytes of voxel data, the file holds 100")


def test_valid_images_read_as_before(tmp_path: Path):
    """The bounded reader returns exactly what nibabel returns (dtypes, scaling, big-endian, NIfTI-2)."""
    rng = np.random.default_rng(0)
    aff = np.array([[0, -1.2, 0, 10], [0.9, 0, 0, -5], [0, 0, 3.0, 2], [0, 0, 0, 1]], dtype=float)
    for i, (arr, klass, endian) in enumerate([
            (rng.integers(-1000, 3000, (7, 9, 5)).astype(np.int16), nib.Nifti1Image, "<"),
            (rng.integers(-1000, 3000, (7, 9, 5)).astype(np.int16), nib.Nifti1Image, ">"),
            (rng.normal(size=(7, 9, 5)).astype(">f4"), nib.Nifti1Image, ">"),
            (rng.normal(size=(7, 9, 5, 2)).astype(np.float64), nib.Nifti1Image, "<"),
            (rng.integers(0, 255, (7, 9, 5)).astype(np.uint8), nib.Nifti2Image, "<")]):
        img = klass(arr, aff, klass.header_class(endianness=endian))
        if arr.dtype == np.int16:
            img.header.set_slope_inter(0.5, -1024)
        for ending in (".nii", ".nii.gz"):
            p = tmp_path / f"v{i}{ending}"
            nib.save(img, p)
            data, geo = read_image(p)
            np.testing.assert_array_equal(data, np.asarray(nib.load(p).dataobj, dtype=np.float32))
            np.testing.assert_allclose(geo.affine, aff)
    write_segmentation(tmp_path / "s.nii.gz", np.ones((7, 9, 5), np.uint8), Geometry(aff, (7, 9, 5)))
    assert read_image(tmp_path / "s.nii.gz")[0].sum() == 7 * 9 * 5
