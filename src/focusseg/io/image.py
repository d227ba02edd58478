"""Image I/O that keeps geometry: NIfTI through nibabel, other formats (``.mha``, ``.nrrd``...) through SimpleITK.

Arrays keep the file's voxel axis order (nibabel's i, j, k), so the input's affine maps prediction voxels exactly
as it maps image voxels; SimpleITK images (z, y, x, LPS) are transposed to (x, y, z) with the equivalent RAS affine.

Reading is bounded: the header is checked before any voxel is allocated (:mod:`focusseg.io.geometry`: the voxel
count against :func:`~focusseg.io.geometry.voxel_limit`, the spacing, the affine), the declared data size against
what the file (or its gzip stream, at most 1032:1) can hold, and the number of axes (2D read as 3D, 4D keeps its
4th axis, 5D refused). A ``.nii.gz`` is read to the end of the stream so that gzip's CRC check runs.
Details: ``docs/io.md``.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from focusseg.errors import UsageError, one_line
from focusseg.io.atomic import atomic_path
from focusseg.io.dataset import MAX_LABEL_VALUE
from focusseg.io.geometry import (
    Geometry,
    ImageReadError,
    check_affine,
    check_declared_shape,
    shape_text,
    voxel_limit,
)

NIFTI_ENDINGS = (".nii.gz", ".nii")

#: Deflate's largest possible compression ratio: a gzip file of S bytes decompresses to at most ~1032 * S.
_GZIP_MAX_RATIO = 1032


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = one_line(exc) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Trailing singleton axes beyond the third dropped, 1D/2D padded to 3D; 5D+ refused."""
    out = list(shape)
    while len(out) > 3 and out[-1] == 1:
        out.pop()
    if len(out) > 4:
        raise ImageReadError(f"{len(out)}D image (shape {shape_text(shape)}): focusseg reads 3D images "
                             "(4D only as channels in the MSD layout)", path)
    return tuple(out) + (1,) * (3 - len(out))


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_ENDINGS)


def _nifti_header(path: Path) -> nib.Nifti1Header:
    """The NIfTI-1/2 header alone (no extensions, no data), read without trusting anything in it."""
    gz = path.name.endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        what = "corrupt or truncated gzip" if gz else "cannot be read"
        raise ImageReadError(f"unreadable ({what}: {_one_line(exc)})", path) from exc
    if len(head) < 348:
        raise ImageReadError(f"truncated: {len(head)} bytes, shorter than a NIfTI header", path)
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    klass, n = (nib.Nifti2Header, 540) if 540 in sizes else (nib.Nifti1Header, 348)
    if n not in sizes:
        raise ImageReadError("not a NIfTI file (bad header size field)", path)
    if len(head) < n:
        raise ImageReadError(f"truncated: {len(head)} bytes, shorter than a NIfTI-2 header", path)
    try:
        return klass.from_fileobj(io.BytesIO(head[:n] + b"\0\0\0\0"), check=False)
    except Exception as exc:  # nibabel raises several types for a garbled header
        raise ImageReadError(f"unreadable NIfTI header ({_one_line(exc)})", path) from exc


def _check_nifti_header(path: Path, hdr: nib.Nifti1Header, limit: int) -> tuple[int, ...]:
    """Every check that needs only the header; returns the declared shape."""
    dim = [int(d) for d in hdr["dim"]]
    if not 1 <= dim[0] <= 7:
        raise ImageReadError(f"header declares {dim[0]} dimensions (NIfTI allows 1 to 7)", path)
    shape = check_declared_shape(path, dim[1 : dim[0] + 1], limit)
    try:
        dtype = hdr.get_data_dtype()
    except Exception as exc:
        raise ImageReadError(f"unsupported voxel type code {int(hdr['datatype'])} ({_one_line(exc)})", path) from exc
    if dtype.kind == "c" or dtype.fields is not None or dtype.itemsize == 0:
        raise ImageReadError(f"voxel type {dtype} is not a real-valued scalar type", path)
    pixdim = np.asarray(hdr["pixdim"][1 : 1 + min(dim[0], 3)], dtype=np.float64)
    if not np.isfinite(pixdim).all() or (pixdim <= 0).any():
        raise ImageReadError(f"zero, negative or NaN voxel spacing (pixdim {pixdim.tolist()})", path)
    offset = float(hdr["vox_offset"])
    if not math.isfinite(offset) or offset < 0:
        raise ImageReadError(f"header declares data offset {offset}", path)
    need = int(offset) + math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if path.name.endswith(".gz"):
        if need > _GZIP_MAX_RATIO * size + 65536:
            raise ImageReadError(f"header declares {need} bytes ({shape_text(shape)} x {dtype.itemsize}-byte "
                                 f"voxels) but a gzip file of {size} bytes cannot hold more than "
                                 f"{_GZIP_MAX_RATIO * size} (truncated file or wrong header)", path)
    elif need > size:
        raise ImageReadError(f"truncated: header declares {need} bytes ({shape_text(shape)} x "
                             f"{dtype.itemsize}-byte voxels from offset {int(offset)}), the file holds {size}", path)
    return shape


def _read_nifti_gz(path: Path, hdr: nib.Nifti1Header, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """The voxels of a ``.nii.gz``, read in one pass that decompresses exactly the declared bytes into one
    buffer (bounded: :func:`_check_nifti_header` has checked the declared size) and then the rest of the stream,
    so that gzip's CRC and length check run: a corrupt stream that still inflates to enough bytes is refused,
    not read as garbage. Scaling (``scl_slope``/``scl_inter``) is applied exactly as nibabel's ``dataobj``."""
    from nibabel.volumeutils import apply_read_scaling

    in_dtype = hdr.get_data_dtype()
    offset = int(hdr.get_data_offset())
    nbytes = math.prod(shape) * in_dtype.itemsize
    buf = bytearray(nbytes)
    view = memoryview(buf)
    got = 0
    try:
        with gzip.open(path, "rb") as f:
            f.seek(offset)
            while got < nbytes:
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
            if got == nbytes:
                while f.read(1 << 20):  # to the end of the stream: gzip verifies CRC-32 and length there
                    pass
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageReadError(f"unreadable (corrupt or truncated gzip: {_one_line(exc)})", path) from exc
    finally:
        view.release()
    if got < nbytes:
        raise ImageReadError(f"truncated: header declares {nbytes} bytes of voxel data, the gzip stream holds "
                             f"{got}", path)
    raw = np.ndarray(shape, in_dtype, buffer=buf, order="F")
    slope, inter = hdr.get_slope_inter()
    scl_slope = np.asanyarray(1.0 if slope is None else slope)
    scl_inter = np.asanyarray(0.0 if inter is None else inter)
    if np.can_cast(scl_slope, dtype):  # as nibabel's ArrayProxy._get_scaled
        scl_slope = scl_slope.astype(dtype)
    if np.can_cast(scl_inter, dtype):
        scl_inter = scl_inter.astype(dtype)
    scaled = apply_read_scaling(raw, scl_slope, scl_inter)
    scaled = scaled.astype(np.promote_types(scaled.dtype, dtype), copy=False)
    return scaled.astype(dtype, copy=False)


def read_image(path: str | Path, dtype: type = np.float32, max_voxels: int | None = None
               ) -> tuple[np.ndarray, Geometry]:
    """Read one image file; the header is checked before the voxels are read (module docstring).

    Args:
        path: a NIfTI file (``.nii``, ``.nii.gz``) or any format SimpleITK reads.
        dtype: the array's dtype after the header's scaling.
        max_voxels: overrides the voxel-count limit (:func:`voxel_limit`).

    Returns:
        ``(array, geometry)``: a 3D array, or 4D with the 4th axis last (the channels of an MSD image); 1D/2D
        files get singleton axes, trailing singleton axes are dropped. ``geometry`` holds the affine and shape.

    Raises:
        ImageReadError: naming the file when it is missing, empty, truncated, corrupt, too large for the limit,
            5D, or has zero/negative/NaN spacing.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError("file not found", path)
    if path.stat().st_size == 0:
        raise ImageReadError("empty file", path)
    limit = voxel_limit(max_voxels)
    if _is_nifti(path):
        hdr = _nifti_header(path)
        shape = _check_nifti_header(path, hdr, limit)
        spatial = _spatial_shape(path, shape)
        try:
            img = nib.load(str(path))
            affine = np.asarray(img.affine, dtype=np.float64)
            check_affine(path, affine)
            if path.name.endswith(".gz"):
                data = _read_nifti_gz(path, hdr, shape, dtype)
            else:
                data = np.asarray(img.dataobj, dtype=dtype)
        except ImageReadError:
            raise
        except Exception as exc:  # nibabel/gzip/zlib raise many types for broken files
            raise ImageReadError(f"unreadable ({type(exc).__name__}: {_one_line(exc)})", path) from exc
        if math.prod(data.shape) != math.prod(spatial):
            raise ImageReadError(f"read shape {data.shape} does not match the header's {shape}", path)
        data = data.reshape(spatial, order="A")
    else:
        data, affine = _read_sitk(path, dtype, limit)
    return data, Geometry(affine, tuple(int(s) for s in data.shape[:3]))


_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def _check_mha_size(path: Path, n_values: int) -> None:
    """An uncompressed MetaImage with its data in the same file (``ElementDataFile = LOCAL``) must hold the
    declared number of bytes after its text header."""
    with open(path, "rb") as f:
        head = f.read(65536)
    fields, end = {}, None
    pos = 0
    for line in head.split(b"\n"):
        pos += len(line) + 1
        key, _, value = line.decode("latin-1").partition("=")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            end = pos
            break
    if (end is None or fields.get("ElementDataFile", "").upper() != "LOCAL"
            or fields.get("CompressedData", "False").lower() == "true" or fields.get("ElementType") not in _MET_BYTES):
        return
    need = n_values * _MET_BYTES[fields["ElementType"]]
    have = path.stat().st_size - end
    if have < need:
        raise ImageReadError(f"truncated: header declares {need} bytes of voxel data, the file holds {max(have, 0)}",
                             path)


def _sitk(path: Path, verb: str = "read"):
    """SimpleITK, imported only for the formats that need it (an optional extra: ``focusseg[formats]``)."""
    try:
        import SimpleITK as sitk
    except ImportError as exc:
        raise UsageError(f"install focusseg[formats] (SimpleITK) to {verb} {''.join(path.suffixes) or 'this format'}"
                         " files", path, hint="pip install 'focusseg[formats]'") from exc
    return sitk


def _read_sitk(path: Path, dtype: type, limit: int) -> tuple[np.ndarray, np.ndarray]:
    sitk = _sitk(path)

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        size = tuple(int(s) for s in reader.GetSize())
        comps = int(reader.GetNumberOfComponents())
        spacing = np.asarray(reader.GetSpacing(), dtype=np.float64)
    except Exception as exc:
        raise ImageReadError(f"unreadable header ({_one_line(exc)})", path) from exc
    check_declared_shape(path, size + ((comps,) if comps > 1 else ()), limit)
    if path.name.lower().endswith(".mha"):
        _check_mha_size(path, math.prod(size) * comps)
    if not np.isfinite(spacing).all() or (spacing[:3] <= 0).any():
        raise ImageReadError(f"zero, negative or NaN voxel spacing {spacing.tolist()}", path)
    try:
        img = reader.Execute()
    except Exception as exc:
        raise ImageReadError(f"unreadable ({_one_line(exc)})", path) from exc
    arr = sitk.GetArrayFromImage(img)  # (z, y, x) or (z, y, x, c)
    if img.GetNumberOfComponentsPerPixel() > 1:  # vector pixels: the components become the 4th axis
        arr = np.moveaxis(arr, -1, 0)
        arr = np.transpose(arr, (*range(arr.ndim - 1, 0, -1), 0))
        spatial = arr.shape[:-1]
        if len(spatial) < 3:
            arr = arr.reshape(spatial + (1,) * (3 - len(spatial)) + arr.shape[-1:])
    else:
        arr = np.transpose(arr, tuple(range(arr.ndim))[::-1])
    dim = img.GetDimension()
    sdim = min(dim, 3)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)[:sdim, :sdim]
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)[:sdim]
    affine = np.eye(4)
    affine[:sdim, :sdim] = direction * spacing[None, :sdim]
    affine[:sdim, 3] = origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
    check_affine(path, affine)
    arr = arr.reshape(_spatial_shape(path, arr.shape))
    return arr.astype(dtype, copy=False), affine


def read_case(
    image_paths: list[Path], label_path: Path | None = None, *, n_channels: int | None = None,
    layout: str | None = None, label_values: Sequence[int] | None = None, max_voxels: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    """Read and stack a case's channels as ``(C, X, Y, Z)`` float32, and its label as ``(X, Y, Z)`` int16.

    Every channel and the label must share shape and affine; NaN/inf voxels are refused; a 4D file's volumes
    are channels (MSD layout) -- with ``layout="nnunetv2"`` a 4D file with more than one volume is refused.
    ``n_channels``: the number of channels the dataset declares (a different count is refused).
    ``label_values``: the declared label values (any other value in the label is refused). Label values must be
    integers in 0..32767 (int16). Errors name the file.
    """
    channels, geometry = [], None
    for p in image_paths:
        arr, geo = read_image(p, max_voxels=max_voxels)
        if arr.ndim == 4:  # MSD layout: channels in the 4th axis
            if layout == "nnunetv2" and arr.shape[3] > 1:
                raise ImageReadError(f"4D image with {arr.shape[3]} volumes; nnU-Net layout needs one 3D file "
                                     "per channel", p)
            chans = [arr[..., i] for i in range(arr.shape[3])]
        else:
            chans = [arr]
        if geometry is None:
            geometry = geo
        elif not geometry.matches(geo):
            raise ImageReadError(
                f"geometry differs from {image_paths[0]} (shape {geo.shape} vs {geometry.shape}, "
                f"affine max diff {np.abs(geo.affine - geometry.affine).max():.3g})", p)
        for c in chans:
            if not np.isfinite(c).all():
                raise ImageReadError(f"{int((~np.isfinite(c)).sum())} NaN/inf voxels", p)
        channels.extend(chans)
    if geometry is None:
        raise ImageReadError("a case needs at least one image file", label_path)
    if n_channels is not None and len(channels) != n_channels:
        raise ImageReadError(f"{len(channels)} channel(s) in {len(image_paths)} file(s), dataset.json declares "
                             f"{n_channels}", image_paths[0])
    image = np.stack(channels, 0).astype(np.float32, copy=False)
    label = None
    if label_path is not None:
        label = read_label(label_path, geometry, label_values, max_voxels=max_voxels)
    return image, label, geometry


def read_label(path: Path, geometry: Geometry | None = None, label_values: Sequence[int] | None = None,
               max_voxels: int | None = None) -> np.ndarray:
    """A label map as int16 ``(X, Y, Z)``: 3D, integer, finite, 0..32767, matching ``geometry`` when given,
    holding only ``label_values`` when given. Errors name the file."""
    lab, lgeo = read_image(path, dtype=np.float32, max_voxels=max_voxels)
    if lab.ndim == 4:
        raise ImageReadError(f"label is 4D ({lab.shape[3]} volumes); a label map must be 3D", path)
    if geometry is not None and not geometry.matches(lgeo):
        raise ImageReadError(
            f"label geometry differs from the image (shape {lgeo.shape} vs {geometry.shape}, "
            f"affine max diff {np.abs(lgeo.affine - geometry.affine).max():.3g})", path)
    if not np.isfinite(lab).all():
        raise ImageReadError(f"label holds {int((~np.isfinite(lab)).sum())} NaN/inf values", path)
    if not np.array_equal(lab, np.round(lab)):
        raise ImageReadError("label holds non-integer values", path)
    lo, hi = (float(lab.min()), float(lab.max())) if lab.size else (0.0, 0.0)
    if lo < 0 or hi > MAX_LABEL_VALUE:
        bad = hi if hi > MAX_LABEL_VALUE else lo
        raise ImageReadError(f"label value {int(bad)} outside 0..{MAX_LABEL_VALUE} (labels are stored as int16)",
                             path)
    label = lab.astype(np.int16)
    if label_values is not None:
        present = np.flatnonzero(np.bincount(label.ravel(), minlength=1))
        undeclared = sorted(set(present.tolist()) - {int(v) for v in label_values})
        if undeclared:
            more = f" (and {len(undeclared) - 10} more)" if len(undeclared) > 10 else ""
            raise ImageReadError(f"label values {undeclared[:10]}{more} not declared in dataset.json", path)
    return label


def write_segmentation(path: str | Path, seg: np.ndarray, geometry: Geometry) -> Path:
    """Write a label map with exactly the reference geometry, atomically (temp file + rename).

    Args:
        path: the output file; its ending picks the format (NIfTI through nibabel, others through SimpleITK).
        seg: integer label map of shape ``geometry.shape``; stored as uint8 when its values fit, else int16.
        geometry: the reference image's geometry (affine, shape).

    Returns:
        ``path``.

    Raises:
        ValueError: when ``seg``'s shape differs from ``geometry.shape``.
    """
    path = Path(path)
    if tuple(seg.shape) != tuple(geometry.shape):
        raise ValueError(f"{path}: segmentation shape {seg.shape} != reference shape {geometry.shape}")
    dtype = np.uint8 if seg.max(initial=0) < 256 and seg.min(initial=0) >= 0 else np.int16
    with atomic_path(path) as tmp:
        if _is_nifti(path):
            img = nib.Nifti1Image(seg.astype(dtype), geometry.affine)
            img.set_qform(geometry.affine, code=1)
            img.set_sform(geometry.affine, code=1)
            nib.save(img, str(tmp))
        else:
            _write_sitk(tmp, seg.astype(dtype), geometry)
    return path


def write_image(path: str | Path, image: np.ndarray, geometry: Geometry) -> Path:
    """Write a float32 map (probability, uncertainty) with exactly the reference geometry, atomically.

    Args:
        path: the output file; its ending picks the format.
        image: array of shape ``geometry.shape``, written as float32.
        geometry: the reference image's geometry (affine, shape).

    Returns:
        ``path``.

    Raises:
        ValueError: when ``image``'s shape differs from ``geometry.shape``.
    """
    path = Path(path)
    if tuple(image.shape) != tuple(geometry.shape):
        raise ValueError(f"{path}: image shape {image.shape} != reference shape {geometry.shape}")
    with atomic_path(path) as tmp:
        if _is_nifti(path):
            img = nib.Nifti1Image(image.astype(np.float32), geometry.affine)
            img.set_qform(geometry.affine, code=1)
            img.set_sform(geometry.affine, code=1)
            nib.save(img, str(tmp))
        else:
            _write_sitk(tmp, image.astype(np.float32), geometry)
    return path


def _write_sitk(path: Path, seg: np.ndarray, geometry: Geometry) -> None:
    sitk = _sitk(path, "write")

    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ geometry.affine  # RAS -> LPS
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.transpose(seg, (2, 1, 0)))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(v) for v in (affine[:3, :3] / spacing[None, :]).ravel()))
    img.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    sitk.WriteImage(img, str(path), True)
