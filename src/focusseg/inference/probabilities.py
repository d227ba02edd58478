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

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from focusseg.errors import DatasetError, UsageError, one_line
from focusseg.io import write_segmentation
from focusseg.io.atomic import atomic_path
from focusseg.io.geometry import Geometry
from focusseg.io.paths import is_inside, safe_child
from focusseg.metrics.files import check_folder
from focusseg.regions import labels_from_region_probabilities

SUFFIX = "_probabilities.npz"
KEYS = ("probabilities", "affine", "shape", "labels", "ending")
KINDS = ("softmax", "regions")


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


def load_probabilities(path: str | Path) -> tuple[np.ndarray, Geometry, list[int], str, str]:
    """``(probabilities float32 (K, *shape), geometry, labels, ending, kind)``; a file that is not one of ours,
    of an unknown kind, or holding non-finite values, is a :class:`DatasetError` naming it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise DatasetError(f"not a focusseg probability file (missing {', '.join(missing)})", path)
            probs = z["probabilities"].astype(np.float32)
            affine, shape = z["affine"].astype(np.float64), tuple(int(s) for s in z["shape"])
            labels, ending = [int(v) for v in z["labels"]], str(z["ending"])
            kind = str(z["kind"]) if "kind" in z.files else "softmax"
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:  # truncated, pickled objects
        raise DatasetError(f"unreadable probability file ({one_line(exc, typed=True)})",
                           path) from exc
    if affine.shape != (4, 4) or probs.ndim != len(shape) + 1 or probs.shape[1:] != shape or \
            probs.shape[0] != len(labels):
        raise DatasetError(f"inconsistent probability file: probabilities {probs.shape}, grid {shape}, "
                           f"{len(labels)} labels", path)
    if kind not in KINDS:
        raise DatasetError(f"probability file of unknown kind {kind!r} (expected one of {', '.join(KINDS)})", path)
    if not np.isfinite(probs).all():
        raise DatasetError("probability file holds NaN/inf values", path)
    return probs, Geometry(affine, shape), labels, ending, kind


def ensemble_folders(folders: Sequence[str | Path], out_dir: str | Path, weights: Sequence[float] | None = None,
                     save_probabilities_too: bool = False, progress: bool = True) -> list[Path]:
    """Ensemble saved probabilities (module docstring); returns the segmentations written."""
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
                probs, geo, labels, ending, kind = load_probabilities(cases[case])
                if total is None:
                    total, geo0, labels0, ending0, kind0 = probs * weight, geo, labels, ending, kind
                    continue
                if kind != kind0:
                    raise DatasetError(f"case {case!r}: {kind} probabilities, but {kind0} ones in "
                                       f"{per_dir[0][case]}", cases[case],
                                       hint="ensemble region-based runs only with region-based runs")
                if labels != labels0 or not geo.matches(geo0):
                    raise DatasetError(f"case {case!r}: other label channels {labels} or grid than in "
                                       f"{per_dir[0][case]}", cases[case])
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
