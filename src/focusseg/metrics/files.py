"""Which files of a folder are cases, and reading one label map (prediction or reference) with its geometry.

A folder focusseg reads cases from may also hold what is not a case: the temporaries of an interrupted atomic
write and other dot files (:func:`focusseg.io.atomic.is_temp_name`), focusseg's own side outputs
(``<case>_uncertainty<ending>``, ``<case>_probabilities<ending>``), reports (CSV, JSON, PNG) and files of formats
focusseg does not read. Only files whose name ends in a known image ending
(:data:`focusseg.io.paths.KNOWN_FILE_ENDINGS`) and that are none of these count as cases; ``evaluate``, the
post-processing chooser and ``predict`` all use these rules.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from focusseg.errors import DatasetError, FocussegError, ImageError, MissingFileError, UsageError, one_line
from focusseg.io import read_image
from focusseg.io.atomic import is_temp_name
from focusseg.io.geometry import MAX_VOXELS_ENV, voxel_limit
from focusseg.io.paths import KNOWN_FILE_ENDINGS

#: Name endings (before the file ending) of the maps focusseg writes beside a case's segmentation.
SIDE_OUTPUT_SUFFIXES = ("_uncertainty", "_probabilities", "_probs")

#: Endings whose data lives in a second file (``.mhd`` + ``.raw``, ``.nhdr`` + ``.raw``): an atomic rename of the
#: header alone would leave it pointing at a temporary data file, so outputs use the one-file sibling.
ONE_FILE_ENDING = {".mhd": ".mha", ".nhdr": ".nrrd", ".nii.zst": ".nii.gz"}

_BY_LENGTH = tuple(sorted(KNOWN_FILE_ENDINGS, key=len, reverse=True))
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def split_ending(name: str, endings: tuple[str, ...] | None = None) -> tuple[str, str] | None:
    """``(stem, ending)`` of a file name with a known image ending (the longest that fits), else None."""
    for ending in sorted(endings, key=len, reverse=True) if endings else _BY_LENGTH:
        if name.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], ending
    return None


def is_side_output(stem: str) -> bool:
    """Whether a file stem names one of focusseg's side outputs (uncertainty or probability maps)."""
    return stem.endswith(SIDE_OUTPUT_SUFFIXES)


def output_ending(ending: str) -> str:
    """The ending a segmentation of an input with ``ending`` is written with (one-file formats only)."""
    return ONE_FILE_ENDING.get(ending, ending)


def check_folder(folder: str | Path, what: str) -> Path:
    """``folder`` as a Path if it is an existing folder; :class:`MissingFileError` / :class:`UsageError` naming it."""
    folder = Path(folder)
    if not folder.exists():
        raise MissingFileError(f"{what} folder not found", folder)
    if not folder.is_dir():
        raise UsageError(f"{what} folder is a file, not a folder", folder)
    return folder


def _candidates(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise DatasetError(f"cannot list the folder ({exc.strerror or exc})", folder) from exc
    # a broken symlink still counts (reading it then fails naming it); a folder named like an image does not
    return [p for p in entries if not is_temp_name(p.name) and (p.is_file() or p.is_symlink()) and not p.is_dir()]


def label_files(folder: str | Path, endings: tuple[str, ...] | None = None) -> dict[str, Path]:
    """``{case id: file}`` of the label maps in ``folder``: every file with a known image ending (or one of
    ``endings``) that is not a temporary, dot file or side output, sorted by case id. Two files for one case
    (``a.nii.gz`` and ``a.mha``) are a :class:`DatasetError` naming both."""
    folder = Path(folder)
    files: dict[str, Path] = {}
    for p in _candidates(folder):
        split = split_ending(p.name, endings)
        if split is None or is_side_output(split[0]):
            continue
        stem = split[0]
        if stem in files:
            raise DatasetError(f"two files for case {stem!r}: {files[stem].name} and {p.name}", folder,
                               hint="keep one file per case")
        files[stem] = p
    return dict(sorted(files.items()))


def channel_files(
    folder: str | Path, endings: tuple[str, ...] | None = None
) -> tuple[dict[str, dict[int, Path]], list[Path]]:
    """Input images ``<case>_<CCCC><ending>`` of ``folder``: ``({case: {channel: file}}, duplicates)`` where
    ``duplicates`` lists files whose case and channel another file (of another ending) already provides.
    Temporaries, dot files, side outputs and names without the ``_<CCCC>`` channel suffix are ignored."""
    found: dict[str, dict[int, Path]] = {}
    duplicates: list[Path] = []
    for p in _candidates(Path(folder)):
        split = split_ending(p.name, endings)
        if split is None or is_side_output(split[0]):
            continue
        m = _CHANNEL_RE.match(split[0])
        if not m:
            continue
        chans = found.setdefault(m["case"], {})
        if int(m["ch"]) in chans:
            duplicates.append(p)
        else:
            chans[int(m["ch"])] = p
    return dict(sorted(found.items())), duplicates


def _one_line(exc: BaseException) -> str:
    return one_line(exc)[:300]


def _load_nifti_checked(path: Path):
    """A NIfTI image (nibabel) whose voxels can be read without surprises: the header's voxel count is within
    :func:`focusseg.io.geometry.voxel_limit`, the file holds the declared data, and a ``.nii.gz`` stream is read to
    its end so that its CRC-32 and length are verified (a gzip stream damaged in the middle can otherwise decode
    to plausible garbage without any error)."""
    import gzip
    import math
    import zlib

    import nibabel as nib

    img = nib.load(str(path))  # the header only
    shape = tuple(int(s) for s in img.shape)
    n, limit = math.prod(shape), voxel_limit()
    if n > limit:
        raise ImageError(f"header declares {shape} = {n} voxels, above the limit of {limit} (set {MAX_VOXELS_ENV} "
                         "to raise it)", path)
    proxy = img.dataobj  # where the voxels start in the file, and their stored type
    need = int(proxy.offset) + n * np.dtype(proxy.dtype).itemsize
    if not path.name.endswith(".gz"):
        if need > path.stat().st_size:
            raise ImageError(f"truncated: the header declares {need} bytes, the file holds {path.stat().st_size}",
                             path)
        return img
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read(need)
            if len(raw) < need:
                raise ImageError(f"truncated: the image data ends after {len(raw)} of {need} bytes", path)
            while f.read(1 << 22):  # to the end of the stream: gzip checks its CRC-32 and length there
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageError(f"corrupt or truncated gzip ({type(exc).__name__}: {_one_line(exc)})", path) from exc
    return type(img).from_bytes(raw)


def read_label_map(path: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A 3D integer label map, its 4x4 affine and voxel spacing (mm) from any known format (NIfTI through
    nibabel, keeping the stored integer type; the others through :func:`focusseg.io.read_image`).

    The array gets the smallest unsigned integer type that holds its values. Every problem (missing,
    unreadable, not 3D, NaN, non-integer or negative values, non-positive spacing) is an :class:`ImageError`
    naming the file in one line."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError("file not found (a broken link?)", path)
    if path.is_file() and path.stat().st_size == 0:
        raise ImageError("empty file (an interrupted write?)", path)
    try:
        if path.name.endswith((".nii.gz", ".nii")):
            img = _load_nifti_checked(path)
            data = np.asanyarray(img.dataobj)
            affine = np.asarray(img.affine, dtype=np.float64)
            spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
        else:
            data, geo = read_image(path, dtype=np.float64)  # float64 holds every integer label exactly
            affine, spacing = np.asarray(geo.affine, dtype=np.float64), tuple(geo.spacing)
    except FocussegError:
        raise
    except MemoryError as exc:
        raise ImageError("too large to read into memory", path) from exc
    except Exception as exc:  # nibabel/gzip/zlib/SimpleITK raise many types for broken files
        raise ImageError(f"unreadable ({type(exc).__name__}: {_one_line(exc)})", path) from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim < 3:
        data = data.reshape(data.shape + (1,) * (3 - data.ndim))
    if data.ndim != 3:
        raise ImageError(f"expected a 3D label map, got shape {tuple(data.shape)}", path)
    if len(spacing) < 3:
        spacing = tuple(spacing) + (1.0,) * (3 - len(spacing))
    if not np.isfinite(affine).all() or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ImageError(f"voxel spacing {tuple(round(s, 6) for s in spacing)} is not positive and finite", path)
    if not np.issubdtype(data.dtype, np.integer):
        if data.dtype == bool:
            data = data.view(np.uint8)
        else:
            if not np.isfinite(data).all():
                raise ImageError(f"label map holds {int((~np.isfinite(data)).sum())} NaN/inf voxels", path)
            rounded = np.rint(data)
            if not np.array_equal(rounded, data):
                raise ImageError("label map holds non-integer values (a probability map?)", path)
            data = rounded
    lo, hi = (data.min(), data.max()) if data.size else (0, 0)
    if lo < 0:
        raise ImageError(f"label map holds negative values (min {int(lo)})", path)
    if hi >= 2**53:
        raise ImageError(f"label value {hi} is too large to be a label (>= 2^53)", path)
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if hi <= np.iinfo(dtype).max:
            break
    return data.astype(dtype, copy=False), affine, (float(spacing[0]), float(spacing[1]), float(spacing[2]))
