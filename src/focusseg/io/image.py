"""Image I/O that keeps geometry: NIfTI through nibabel, other formats (``.mha``, ``.nrrd``...) through SimpleITK.

Arrays keep the file's voxel axis order (nibabel's i, j, k): no transposition, so the affine of the input
file maps prediction voxels exactly as it maps image voxels. SimpleITK images (z, y, x arrays, LPS physical
space) are transposed to (x, y, z) and given the equivalent RAS affine, so both paths return the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from focusseg.errors import ImageError
from focusseg.io.atomic import atomic_path

NIFTI_ENDINGS = (".nii.gz", ".nii")


class ImageReadError(ImageError):
    """A file that cannot be read, or whose content is not a usable image. ``str(e)`` is ``"<file>: <problem>"``
    (constructed either as ``ImageReadError(problem, path)`` or, as before, with one ``"<file>: <problem>"``
    string)."""


@dataclass(frozen=True)
class Geometry:
    """Where an array's voxels lie: 4x4 voxel-to-world (RAS mm) affine and the spatial shape."""

    affine: np.ndarray
    shape: tuple[int, ...]

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm per array axis: the norms of the affine's columns."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, : len(self.shape)], axis=0))

    def matches(self, other: Geometry, atol: float = 1e-4) -> bool:
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol, rtol=1e-5)

    def to_dict(self) -> dict:
        return {"affine": np.asarray(self.affine).tolist(), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(np.asarray(d["affine"], dtype=np.float64), tuple(int(s) for s in d["shape"]))


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_ENDINGS)


def read_image(path: str | Path, dtype: type = np.float32) -> tuple[np.ndarray, Geometry]:
    """Read one image file. Returns ``(array, geometry)``; a 4D file keeps its 4th axis last.

    Raises ``ImageReadError`` naming the file when it is missing, empty, truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: empty file")
    try:
        if _is_nifti(path):
            img = nib.load(str(path))
            data = np.asarray(img.dataobj, dtype=dtype)
            affine = np.asarray(img.affine, dtype=np.float64)
        else:
            data, affine = _read_sitk(path, dtype)
    except ImageReadError:
        raise
    except Exception as exc:  # nibabel/gzip/zlib/SimpleITK raise many types for broken files
        raise ImageReadError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
    if data.ndim < 3:
        data = data.reshape(data.shape + (1,) * (3 - data.ndim))
    return data, Geometry(affine, tuple(int(s) for s in data.shape[:3]))


def _read_sitk(path: Path, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)  # (z, y, x) or (z, y, x, c)
    if img.GetNumberOfComponentsPerPixel() > 1:
        arr = np.moveaxis(arr, -1, 0)
        arr = np.transpose(arr, (3, 2, 1, 0))
    else:
        arr = np.transpose(arr, tuple(range(arr.ndim))[::-1])
    dim = img.GetDimension()
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)
    affine = np.eye(4)
    affine[:dim, :dim] = direction * spacing[None, :]
    affine[:dim, 3] = origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
    return arr.astype(dtype, copy=False), affine


def read_case(
    image_paths: list[Path], label_path: Path | None = None
) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    """Read and stack a case's channels as ``(C, X, Y, Z)`` float32, and its label as ``(X, Y, Z)`` int16.

    Every channel and the label must share shape and affine; NaN/inf voxels are refused. Errors name the file.
    """
    channels, geometry = [], None
    for p in image_paths:
        arr, geo = read_image(p)
        if arr.ndim == 4:  # MSD layout: channels in the 4th axis
            chans = [arr[..., i] for i in range(arr.shape[3])]
        else:
            chans = [arr]
        if geometry is None:
            geometry = geo
        elif not geometry.matches(geo):
            raise ImageReadError(
                f"{p}: geometry differs from {image_paths[0]} (shape {geo.shape} vs {geometry.shape}, "
                f"affine max diff {np.abs(geo.affine - geometry.affine).max():.3g})"
            )
        for c in chans:
            if not np.isfinite(c).all():
                raise ImageReadError(f"{p}: {int((~np.isfinite(c)).sum())} NaN/inf voxels")
        channels.extend(chans)
    assert geometry is not None, "read_case needs at least one image path"
    image = np.stack(channels, 0).astype(np.float32, copy=False)
    label = None
    if label_path is not None:
        lab, lgeo = read_image(label_path, dtype=np.float32)
        if not geometry.matches(lgeo):
            raise ImageReadError(
                f"{label_path}: label geometry differs from the image (shape {lgeo.shape} vs {geometry.shape}, "
                f"affine max diff {np.abs(lgeo.affine - geometry.affine).max():.3g})"
            )
        if not np.isfinite(lab).all() or not np.array_equal(lab, np.round(lab)):
            raise ImageReadError(f"{label_path}: label holds non-integer or NaN/inf values")
        label = lab[..., 0] if lab.ndim == 4 else lab
        label = label.astype(np.int16)
    return image, label, geometry


def write_segmentation(path: str | Path, seg: np.ndarray, geometry: Geometry) -> Path:
    """Write a label map with exactly the reference geometry, atomically (temp file + rename)."""
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
    """Write a float32 map (probability, uncertainty) with exactly the reference geometry, atomically."""
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
    import SimpleITK as sitk

    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ geometry.affine  # RAS -> LPS
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.transpose(seg, (2, 1, 0)))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(v) for v in (affine[:3, :3] / spacing[None, :]).ravel()))
    img.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    sitk.WriteImage(img, str(path), True)
