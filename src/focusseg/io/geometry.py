"""Where an image's voxels lie (:class:`Geometry`) and the checks every reader (NIfTI, SimpleITK, DICOM) runs on
a header before any voxel is allocated: the voxel count against a limit (:data:`DEFAULT_MAX_VOXELS`,
``max_voxels=`` or ``FOCUSSEG_MAX_VOXELS``), the declared axes, and an affine that can place voxels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from focusseg.errors import ImageError, UsageError

#: Default limit on the voxels a header may declare (all axes): 2**29 = 536,870,912 (2 GiB as float32).
DEFAULT_MAX_VOXELS = 1024**3 // 2
#: Environment variable that raises (or lowers) the limit, e.g. ``FOCUSSEG_MAX_VOXELS=2000000000``.
MAX_VOXELS_ENV = "FOCUSSEG_MAX_VOXELS"


class ImageReadError(ImageError):
    """A file that cannot be read, or whose content is not a usable image. ``str(e)`` is ``"<file>: <problem>"``
    (constructed either as ``ImageReadError(problem, path)`` or, as before, with one ``"<file>: <problem>"``
    string)."""


def voxel_limit(max_voxels: int | None = None) -> int:
    """The voxel limit in force: ``max_voxels`` if given, else ``$FOCUSSEG_MAX_VOXELS``, else the default."""
    if max_voxels is not None:
        if int(max_voxels) <= 0:
            raise UsageError(f"max_voxels must be positive, got {max_voxels}")
        return int(max_voxels)
    raw = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_VOXELS
    try:
        value = float(raw.replace("_", ""))
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 1 or value != int(value):
        raise UsageError(f"{MAX_VOXELS_ENV}={raw!r} is not a positive whole number of voxels",
                         hint=f"unset it for the default ({DEFAULT_MAX_VOXELS}) or give e.g. 2000000000")
    return int(value)


def shape_text(shape: Sequence[int]) -> str:
    """A shape as the errors write it: ``512x512x300``."""
    return "x".join(str(int(s)) for s in shape)


def check_declared_shape(path: Path, shape: Sequence[int], limit: int) -> tuple[int, ...]:
    """Check the shape a header (or a DICOM series) declares before any voxel is allocated for it.

    Args:
        path: the file or folder, named in the error.
        shape: the declared axes, channels included.
        limit: the most voxels allowed (:func:`voxel_limit`).

    Returns:
        the shape as a tuple of ints.

    Raises:
        ImageReadError: no axes, an empty axis, or more than ``limit`` voxels.
    """
    shape = tuple(int(s) for s in shape)
    if not shape:
        raise ImageReadError("header declares no axes", path)
    if any(s <= 0 for s in shape):
        raise ImageReadError(f"header declares an empty axis (shape {shape_text(shape)})", path)
    n = math.prod(shape)
    if n > limit:
        raise ImageReadError(f"header declares {shape_text(shape)} = {n} voxels, above the limit of {limit} "
                             f"(set {MAX_VOXELS_ENV} to raise it)", path)
    return shape


def check_affine(path: Path, affine: np.ndarray) -> None:
    """Refuse an affine that cannot place voxels: NaN/inf entries, or a zero column (zero voxel spacing, the
    norm of a column of the 3x3 part).

    Args:
        path: the file or folder, named in the error.
        affine: the 4x4 voxel-to-world matrix.

    Raises:
        ImageReadError: a non-finite affine or a zero spacing.
    """
    if not np.isfinite(affine).all():
        raise ImageReadError("affine holds NaN/inf values", path)
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    if (norms <= 0).any():
        raise ImageReadError(f"zero voxel spacing {tuple(round(float(s), 6) for s in norms)} "
                             "(the affine has a zero column)", path)


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
