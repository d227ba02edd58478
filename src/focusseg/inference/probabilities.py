"""Saved class probabilities and ensembling of prediction folders (nnU-Net's ``--save_probabilities`` and
``nnUNetv2_ensemble``).

``focusseg predict ... --save-probabilities`` writes ``<case>_probabilities.npz`` beside each segmentation:
float16 ``probabilities (K, *shape)`` on the case's original grid, ``affine``, ``shape``, ``labels``, ``ending``
and ``kind`` (``"softmax"`` or ``"regions"``; a file without ``kind`` is read as softmax). float16 keeps
probabilities to ~1e-3 at half the size of float32; nothing is unpickled (``allow_pickle=False``).

``focusseg ensemble DIR_A DIR_B ... --out DIR [--weights ...]`` averages the saved probabilities of the cases in
every folder, turns them into labels as ``predict`` does and writes them with the saved geometry; folders whose
cases, kinds, label channels or grids differ are refused, naming the case. The file format: ``docs/inference.md``.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

from focusseg.errors import DatasetError, UsageError, one_line
from focusseg.io import write_segmentation
from focusseg.io.atomic import atomic_path
from focusseg.io.geometry import MAX_VOXELS_ENV, Geometry, shape_text, voxel_limit
from focusseg.io.paths import is_inside, safe_child, validate_file_ending
from focusseg.metrics.files import check_folder
from focusseg.regions import labels_from_region_probabilities
from focusseg.settings import MAX_CLASSES

SUFFIX = "_probabilities.npz"
KEYS = ("probabilities", "affine", "shape", "labels", "ending")
KINDS = ("softmax", "regions")
#: Largest ``.npy`` header read (numpy writes ~128 bytes).
MAX_HEADER_BYTES = 4096
#: Longest ``ending`` or ``kind`` text.
MAX_TEXT_CHARS = 32
#: Arrays of one file, in bytes per voxel of the voxel limit: 32 is 16 float16 (8 float32) channels of the largest
#: grid (16 GiB at the default limit); a file with more channels needs a higher ``FOCUSSEG_MAX_VOXELS``.
MAX_BYTES_PER_LIMIT_VOXEL = 32
#: How far outside [0, 1] a saved probability may lie (float16 rounding is ~5e-4 near 1).
PROBABILITY_TOLERANCE = 1e-3


def probabilities_path(out_dir: str | Path, case: str) -> Path:
    return Path(out_dir) / f"{case}{SUFFIX}"


def save_probabilities(path: str | Path, probabilities: np.ndarray, geometry: Geometry, labels: Sequence[int],
                       ending: str, kind: str = "softmax") -> Path:
    """Write ``probabilities`` ``(K, *geometry.shape)`` as float16 with the geometry, atomically. ``kind``:
    "softmax", or "regions" with ``labels`` = ``regions_class_order`` (module docstring)."""
    path = Path(path)
    if kind not in KINDS:
        raise ValueError(f"{path}: probability kind {kind!r} is not one of {KINDS}")
    probs = np.asarray(probabilities)
    if probs.shape[1:] != tuple(geometry.shape) or probs.shape[0] != len(labels):
        raise ValueError(f"{path}: probabilities {probs.shape} do not fit {len(labels)} labels on grid "
                         f"{tuple(geometry.shape)}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy appends no ".npz"
        np.savez_compressed(f, probabilities=probs.astype(np.float16), affine=np.asarray(geometry.affine, np.float64),
                            shape=np.asarray(geometry.shape, np.int64), labels=np.asarray(labels, np.int64),
                            ending=np.asarray(str(ending)), kind=np.asarray(kind))
    return path


def _refuse(problem: str, path: Path) -> NoReturn:
    raise DatasetError(problem, path, hint="predict again with --save-probabilities")


def _header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, header bytes)`` a ``.npy`` member declares, read from its header alone (nothing allocated
    for its data): a version-1/2 header and a plain dtype (no Python objects, no records)."""
    name = info.filename
    with zf.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=MAX_HEADER_BYTES)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=MAX_HEADER_BYTES)
        else:
            _refuse(f"unreadable probability file: member {name} has .npy format version {version} (1.0 or 2.0 "
                    "expected)", path)
        header_bytes = fp.tell()
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        _refuse(f"unreadable probability file: member {name} holds {dtype} values (Python objects and records "
                "are never loaded)", path)
    if not all(isinstance(s, int) and 0 <= s for s in shape):
        _refuse(f"unreadable probability file: member {name} declares shape {shape}", path)
    return tuple(shape), dtype, header_bytes


def _check_sizes(infos: dict[str, zipfile.ZipInfo], headers: dict[str, tuple[tuple[int, ...], np.dtype, int]],
                 path: Path) -> None:
    """Each member's size in the zip's directory equal to its header plus ``prod(shape) * itemsize``: the
    decompressed member is exactly what the header declares (the zip reader stops at the declared size)."""
    for key, (shape, dtype, header_bytes) in headers.items():
        expected = header_bytes + math.prod(shape) * dtype.itemsize
        if infos[key].file_size != expected:
            _refuse(f"unreadable probability file: member {infos[key].filename} is {infos[key].file_size:,} bytes, "
                    f"its header declares {expected:,} (shape {shape}, {dtype})", path)


def _check_headers(headers: dict[str, tuple[tuple[int, ...], np.dtype, int]], path: Path, limit: int) -> None:
    """Each member's declared shape and dtype against what :func:`save_probabilities` writes, and the
    probabilities' grid against the voxel limit, before any member's data is read."""
    def want(key: str, ok: bool, what: str) -> None:
        if not ok:
            shape, dtype, _ = headers[key]
            _refuse(f"unreadable probability file: {key} is {dtype} of shape {shape}, expected {what}", path)

    shape, dtype, _ = headers["probabilities"]
    want("probabilities", dtype.kind == "f" and dtype.itemsize in (2, 4) and len(shape) in (3, 4),
         "float16/float32 (K, *grid) with a 2D or 3D grid")
    n_classes, grid = shape[0], shape[1:]
    if not 1 <= n_classes <= MAX_CLASSES or min(grid) < 1:
        _refuse(f"probability file declares {n_classes} channels on grid {shape_text(grid)} (1 to {MAX_CLASSES} "
                "channels on a non-empty grid)", path)
    voxels = math.prod(grid)
    if voxels > limit:
        _refuse(f"probability file declares grid {shape_text(grid)} = {voxels:,} voxels, over the voxel limit "
                f"{limit:,} ({MAX_VOXELS_ENV})", path)
    total = sum(math.prod(s) * d.itemsize for s, d, _ in headers.values())
    if total > MAX_BYTES_PER_LIMIT_VOXEL * limit:
        _refuse(f"probability file declares {total:,} bytes of arrays ({n_classes} channels x {voxels:,} voxels), "
                f"over {MAX_BYTES_PER_LIMIT_VOXEL} bytes per voxel of the voxel limit {limit:,} "
                f"({MAX_VOXELS_ENV})", path)
    want("affine", headers["affine"][1].kind == "f" and headers["affine"][0] == (4, 4), "a float (4, 4) affine")
    want("shape", headers["shape"][1].kind in "iu" and headers["shape"][0] == (len(grid),),
         f"{len(grid)} integers")
    want("labels", headers["labels"][1].kind in "iu" and headers["labels"][0] == (n_classes,),
         f"{n_classes} integer label values")
    for key in ("ending", "kind"):
        if key in headers:
            want(key, headers[key][1].kind == "U" and headers[key][0] == ()
                 and headers[key][1].itemsize <= 4 * MAX_TEXT_CHARS, f"a text of at most {MAX_TEXT_CHARS} characters")


def load_probabilities(path: str | Path, max_voxels: int | None = None
                       ) -> tuple[np.ndarray, Geometry, list[int], str, str]:
    """Read a saved probability file without trusting it: the zip's ``.npy`` headers are read and checked
    before numpy allocates anything (dtype float16/float32, no Python objects; shapes against the voxel limit and
    :data:`~focusseg.settings.MAX_CLASSES`; each member's declared size equal to its header's), then the arrays
    are read with ``allow_pickle=False`` and their values checked.

    Args:
        path: the ``<case>_probabilities.npz``.
        max_voxels: the voxel limit of its grid (None: :func:`~focusseg.io.geometry.voxel_limit`, the limit in
            force).

    Returns:
        ``(probabilities float32 (K, *shape), geometry, labels, ending, kind)``.

    Raises:
        DatasetError: a file that is not one of ours (members missing or unknown, not a zip, truncated), declares
            more than the bounds allow, holds Python objects, NaN/inf or values outside ``[0, 1]``, a grid or
            affine that does not fit, label values out of range, an unknown kind or file ending; names the file.
    """
    path = Path(path)
    limit = voxel_limit(max_voxels)
    try:
        with zipfile.ZipFile(path) as zf:
            infos: dict[str, zipfile.ZipInfo] = {}
            for info in zf.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else None
                if key is None or key in infos:
                    _refuse(f"not a focusseg probability file (member {info.filename!r})", path)
                infos[key] = info
            missing = [k for k in KEYS if k not in infos]
            if missing:
                _refuse(f"not a focusseg probability file (missing {', '.join(missing)})", path)
            unknown = sorted(set(infos) - set(KEYS) - {"kind"})
            if unknown:
                _refuse(f"not a focusseg probability file (unknown member {unknown[0]!r})", path)
            headers = {k: _header(zf, info, path) for k, info in infos.items()}
            _check_headers(headers, path, limit)
            _check_sizes(infos, headers, path)
            arrays = {}
            for key, info in infos.items():
                with zf.open(info) as fp:
                    arrays[key] = np.lib.format.read_array(fp, allow_pickle=False, max_header_size=MAX_HEADER_BYTES)
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, KeyError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
            zlib.error) as exc:  # not a zip, truncated, a corrupt stream, an encrypted member
        raise DatasetError(f"unreadable probability file ({one_line(exc, typed=True)})", path) from exc
    probs = arrays["probabilities"].astype(np.float32, copy=False)
    affine = arrays["affine"].astype(np.float64)
    shape = tuple(int(s) for s in arrays["shape"])
    labels = [int(v) for v in arrays["labels"]]
    ending, kind = str(arrays["ending"]), str(arrays["kind"]) if "kind" in arrays else "softmax"
    if probs.shape[1:] != shape or not np.isfinite(affine).all():
        raise DatasetError(f"inconsistent probability file: probabilities {probs.shape}, grid {shape}, "
                           f"{len(labels)} labels" + ("" if np.isfinite(affine).all() else ", a non-finite affine"),
                           path)
    if kind not in KINDS:
        raise DatasetError(f"probability file of unknown kind {kind!r} (expected one of {', '.join(KINDS)})", path)
    if not all(0 <= v < MAX_CLASSES for v in labels):
        raise DatasetError(f"probability file labels {labels[:8]} must be label values in [0, {MAX_CLASSES})", path)
    validate_file_ending(ending, path)
    if not np.isfinite(probs).all():
        raise DatasetError("probability file holds NaN/inf values", path)
    low, high = float(probs.min()), float(probs.max())
    if low < -PROBABILITY_TOLERANCE or high > 1 + PROBABILITY_TOLERANCE:
        raise DatasetError(f"probability file holds values in [{low:g}, {high:g}]: probabilities lie in [0, 1]", path)
    return probs, Geometry(affine, shape), labels, ending, kind


def ensemble_folders(folders: Sequence[str | Path], out_dir: str | Path, weights: Sequence[float] | None = None,
                     save_probabilities_too: bool = False, progress: bool = True,
                     max_voxels: int | None = None) -> list[Path]:
    """Ensemble saved probabilities (module docstring); returns the segmentations written.

    Args:
        folders: two or more prediction folders with ``<case>_probabilities.npz`` files of the same cases.
        out_dir: where the segmentations (and, with ``save_probabilities_too``, the mean probabilities) go.
        weights: one positive weight per folder (None: equal).
        save_probabilities_too: also write the weighted mean probabilities.
        progress: show a progress bar.
        max_voxels: the voxel limit every file's grid is read against (None: the limit in force,
            :func:`~focusseg.io.geometry.voxel_limit`).

    Raises:
        UsageError: fewer than two folders, bad weights, an output folder inside an input folder.
        DatasetError: no probabilities, folders with other cases, a file :func:`load_probabilities` refuses, or a
            case whose kind, label channels, grid shape or affine differ between folders (naming both files).
    """
    from rich.progress import Progress

    dirs = [check_folder(f, "prediction") for f in folders]
    if len(dirs) < 2:
        raise UsageError("an ensemble needs at least two prediction folders")
    w = [1.0] * len(dirs) if weights is None else [float(x) for x in weights]
    if len(w) != len(dirs) or not all(np.isfinite(x) and x > 0 for x in w):
        raise UsageError(f"need one positive weight per folder: {len(dirs)} folders, weights {list(w)}")
    out = Path(out_dir)
    for d in dirs:
        if is_inside(out, d):
            raise UsageError(f"the output folder lies inside the input folder {d}", out,
                             hint="choose an output folder outside every prediction folder")
    per_dir = [{p.name[: -len(SUFFIX)]: p for p in d.glob(f"*{SUFFIX}") if not p.name.startswith(".")}
               for d in dirs]
    if not per_dir[0]:
        raise DatasetError(f"no saved probabilities (<case>{SUFFIX}) in this folder", dirs[0],
                           hint="predict with --save-probabilities")
    for d, cases in zip(dirs[1:], per_dir[1:]):
        differ = sorted(set(per_dir[0]) ^ set(cases))
        if differ:
            raise DatasetError(f"the folders hold different cases (e.g. {differ[0]!r} is only in one of them)", d,
                               hint="ensemble folders predicted from the same input cases")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("ensembling", total=len(per_dir[0]))
        for case in sorted(per_dir[0]):
            total, geo0, labels0, ending0, kind0 = None, None, None, None, None
            for cases, weight in zip(per_dir, w):
                probs, geo, labels, ending, kind = load_probabilities(cases[case], max_voxels)
                if total is None:
                    total, geo0, labels0, ending0, kind0 = probs * weight, geo, labels, ending, kind
                    continue
                if kind != kind0:
                    raise DatasetError(f"case {case!r}: {kind} probabilities, but {kind0} ones in "
                                       f"{per_dir[0][case]}", cases[case],
                                       hint="ensemble region-based runs only with region-based runs")
                if labels != labels0:
                    raise DatasetError(f"case {case!r}: label channels {labels}, but {labels0} in "
                                       f"{per_dir[0][case]}", cases[case])
                if geo.shape != geo0.shape:
                    raise DatasetError(f"case {case!r}: grid {shape_text(geo.shape)}, but {shape_text(geo0.shape)} in "
                                       f"{per_dir[0][case]}", cases[case],
                                       hint="ensemble folders predicted from the same input images")
                if not geo.matches(geo0):
                    raise DatasetError(f"case {case!r}: another affine (voxel placement) than in {per_dir[0][case]}",
                                       cases[case], hint="ensemble folders predicted from the same input images")
                total += probs * weight
            assert total is not None and geo0 is not None and labels0 is not None and ending0 is not None
            total /= sum(w)
            if kind0 == "regions":
                seg = labels_from_region_probabilities(total, labels0)
            else:
                seg = np.asarray(labels0, dtype=np.int64)[total.argmax(0)]
            written.append(write_segmentation(safe_child(out, f"{case}{ending0}"), seg, geo0))
            if save_probabilities_too:
                save_probabilities(safe_child(out, f"{case}{SUFFIX}"), total, geo0, labels0, ending0, kind0)
            bar.advance(task)
    return written
