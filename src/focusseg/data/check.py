"""``focusseg check DATA``: find every problem in a dataset before anything is trained.

Each problem is one line that names the file: a malformed ``dataset.json``, case ids that cannot name a file,
unreadable, truncated or oversized files, bad spacing or dimensionality, missing or undeclared channels, NaN/inf
voxels, images without labels (and labels without images), shape or affine mismatches, label values that are not
integers, negative, above 32767 (labels are stored as int16) or undeclared, no labelled case, and a malformed
``splits_final.json``. The full list: ``docs/data.md``.

Ignore label (nnU-Net v2's): a label named ``ignore`` must be the highest label value; its value is then one a
label file may hold (partially annotated cases), not a class.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from focusseg.data.splits import read_splits
from focusseg.errors import DatasetError, FocussegError, ImageError, UsageError
from focusseg.io.atomic import is_temp_name
from focusseg.io.dataset import MAX_LABEL_VALUE, CaseFiles, DatasetSpec, channel_of, discover_cases, load_dataset_spec
from focusseg.io.image import read_image


@dataclass(frozen=True)
class Problem:
    """One problem: the file it is in and what is wrong (``str`` is ``"<file>: <problem>"``)."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _problem(exc: FocussegError, fallback: Path) -> Problem:
    return Problem(exc.path if exc.path is not None else fallback, " ".join(exc.problem.split()))


def _channel_problems(case: CaseFiles, spec: DatasetSpec) -> tuple[list[Problem], list[Path]]:
    """Missing and undeclared channel files of an nnU-Net layout case; returns (problems, declared files)."""
    problems, declared, have = [], [], set()
    for p in case.images:
        ch = channel_of(p, case.case_id, spec.file_ending)
        if ch is None or ch >= spec.n_channels:
            problems.append(Problem(p, f"channel file not declared in dataset.json (channel_names declares "
                                       f"{spec.n_channels} channel(s): _0000..._{spec.n_channels - 1:04d})"))
        else:
            have.add(ch)
            declared.append(p)
    folder = case.images[0].parent
    for ch in sorted(set(range(spec.n_channels)) - have):
        name = f"{case.case_id}_{ch:04d}{spec.file_ending}"
        problems.append(Problem(folder / name, f"missing channel {ch} ({spec.channel_names[ch]})"))
    return problems, declared


def check_case(case: CaseFiles, spec: DatasetSpec, max_voxels: int | None = None) -> list[Problem]:
    """All problems of one case (reads every file once)."""
    problems: list[Problem] = []
    images = list(case.images)
    if spec.layout != "msd":
        problems, images = _channel_problems(case, spec)
    ref_path, ref_geo = None, None
    for p in images:
        try:
            arr, geo = read_image(p, max_voxels=max_voxels)
        except ImageError as exc:
            problems.append(_problem(exc, p))
            continue
        bad = int(arr.size - np.isfinite(arr).sum())
        if bad:
            problems.append(Problem(p, f"{bad} NaN/inf voxels"))
        n_vol = arr.shape[3] if arr.ndim == 4 else 1
        if spec.layout == "msd" and n_vol != spec.n_channels:
            problems.append(Problem(p, f"{n_vol} channel(s), dataset.json declares {spec.n_channels}"))
        elif spec.layout != "msd" and n_vol > 1:
            problems.append(Problem(p, f"4D image with {n_vol} volumes; nnU-Net layout needs one 3D file per "
                                       "channel"))
        if ref_geo is None:
            ref_path, ref_geo = p, geo
        else:
            problems.extend(_geometry_problems(p, geo, ref_path, ref_geo))
    if case.label is None:
        problems.append(Problem(case.images[0], f"no label file for case {case.case_id}"))
        return problems
    try:
        lab, lgeo = read_image(case.label, max_voxels=max_voxels)
    except ImageError as exc:
        problems.append(_problem(exc, case.label))
        return problems
    if lab.ndim == 4:
        problems.append(Problem(case.label, f"label is 4D ({lab.shape[3]} volumes); a label map must be 3D"))
        return problems
    if ref_geo is not None:
        problems.extend(_geometry_problems(case.label, lgeo, ref_path, ref_geo))
    problems.extend(label_problems(case.label, lab, spec))
    return problems


def label_problems(path: Path, lab: np.ndarray, spec: DatasetSpec) -> list[Problem]:
    """NaN/inf, non-integer, negative, above-int16 and undeclared label values (memory bounded: values are
    counted with ``bincount`` only once they are known to lie in 0..32767). The ignore label, when
    ``dataset.json`` declares one, is a declared value."""
    if not np.isfinite(lab).all():
        return [Problem(path, f"label holds {int((~np.isfinite(lab)).sum())} NaN/inf values")]
    if not np.array_equal(lab, np.round(lab)):
        return [Problem(path, "label holds non-integer values")]
    if lab.size == 0:
        return []
    lo, hi = float(lab.min()), float(lab.max())
    if hi > MAX_LABEL_VALUE:
        return [Problem(path, f"label value {int(hi)} above {MAX_LABEL_VALUE} (focusseg stores labels as int16); "
                              "declare and use smaller values")]
    if lo < 0:
        return [Problem(path, f"negative label value {int(lo)} (label values must be 0..{MAX_LABEL_VALUE})")]
    present = np.flatnonzero(np.bincount(lab.astype(np.int32).ravel()))
    undeclared = sorted(set(present.tolist()) - set(spec.label_values))
    if undeclared:
        more = f" (and {len(undeclared) - 20} more)" if len(undeclared) > 20 else ""
        return [Problem(path, f"label values {undeclared[:20]}{more} not declared in dataset.json")]
    return []


def _geometry_problems(path: Path, geo, ref_path: Path, ref_geo) -> list[Problem]:
    if geo.shape != ref_geo.shape:
        return [Problem(path, f"shape {geo.shape} differs from {ref_path.name} {ref_geo.shape}")]
    if not geo.matches(ref_geo):
        diff = float(np.abs(geo.affine - ref_geo.affine).max())
        return [Problem(path, f"affine differs from {ref_path.name} (max difference {diff:.4g})")]
    return []


def _orphan_labels(data_dir: Path, spec: DatasetSpec, cases: list[CaseFiles]) -> Iterator[Problem]:
    label_dir = data_dir / "labelsTr"
    if spec.layout == "msd" or not label_dir.is_dir():
        return
    known = {c.case_id for c in cases}
    for p in sorted(label_dir.glob(f"*{spec.file_ending}")):
        if not is_temp_name(p.name) and p.name[: -len(spec.file_ending)] not in known:
            yield Problem(p, "label without any image channel")


def _split_problems(data_dir: Path, cases: list[CaseFiles]) -> list[Problem]:
    path = data_dir / "splits_final.json"
    if not path.is_file():
        return []
    try:
        read_splits(path, [c.case_id for c in cases if c.label is not None])
    except DatasetError as exc:
        return [_problem(exc, path)]
    return []


def _check_one(args: tuple[CaseFiles, DatasetSpec, int | None]) -> list[Problem]:
    return check_case(*args)


def check_dataset(data_dir: str | Path, workers: int = 2, progress: bool = False, max_voxels: int | None = None
                  ) -> list[Problem]:
    """Every problem in a dataset folder, in case order (an empty list: the dataset can be trained on)."""
    data_dir = Path(data_dir)
    try:
        spec = load_dataset_spec(data_dir)
        cases = discover_cases(data_dir, spec)
    except UsageError:
        raise
    except FocussegError as exc:
        return [_problem(exc, data_dir)]
    problems = list(_orphan_labels(data_dir, spec, cases))
    image_dir = data_dir / "imagesTr"
    if not cases:
        problems.append(Problem(image_dir, "no images found"))
    elif not any(c.label is not None for c in cases):
        problems.append(Problem(data_dir / "labelsTr", "no labelled case: training needs label files"))
    problems.extend(_split_problems(data_dir, cases))
    jobs = [(c, spec, max_voxels) for c in cases]
    if workers > 1 and len(jobs) > 4:
        with ProcessPoolExecutor(workers) as pool:
            results = list(_progress(pool.map(_check_one, jobs, chunksize=4), len(jobs), progress))
    else:
        results = list(_progress(map(_check_one, jobs), len(jobs), progress))
    for r in results:
        problems.extend(r)
    return problems


def _progress(it, total: int, show: bool):
    if not show:
        yield from it
        return
    from rich.progress import track

    yield from track(it, total=total, description="checking", transient=True)
