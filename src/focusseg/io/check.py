"""``focusseg check DATA``: find every problem in a dataset before anything is trained.

Each problem is one line that names the file: unreadable/empty/truncated files, NaN/inf voxels, missing
channels, label files without images (and images without labels), channel/label shape or affine mismatch,
label values not declared in ``dataset.json``, non-integer labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from focusseg.io.dataset import CaseFiles, DatasetSpec, discover_cases, load_dataset_spec
from focusseg.io.image import ImageReadError, read_image


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def check_case(case: CaseFiles, spec: DatasetSpec) -> list[Problem]:
    """All problems of one case (reads every file once)."""
    problems: list[Problem] = []
    n_files_expected = 1 if spec.layout == "msd" else spec.n_channels
    if spec.layout != "msd" and len(case.images) < n_files_expected:
        have = {int(p.name[len(case.case_id) + 1 : len(case.case_id) + 5]) for p in case.images}
        for ch in sorted(set(range(spec.n_channels)) - have):
            name = f"{case.case_id}_{ch:04d}{spec.file_ending}"
            problems.append(Problem(case.images[0].parent / name, f"missing channel {ch} ({spec.channel_names[ch]})"))
    ref_path, ref_geo = None, None
    for p in case.images:
        try:
            arr, geo = read_image(p)
        except ImageReadError as exc:
            problems.append(Problem(p, str(exc).split(": ", 1)[-1]))
            continue
        bad = int(arr.size - np.isfinite(arr).sum())
        if bad:
            problems.append(Problem(p, f"{bad} NaN/inf voxels"))
        if spec.layout == "msd" and (arr.ndim == 4 and arr.shape[3] != spec.n_channels):
            problems.append(Problem(p, f"{arr.shape[3]} channels, dataset.json declares {spec.n_channels}"))
        if ref_geo is None:
            ref_path, ref_geo = p, geo
        else:
            problems.extend(_geometry_problems(p, geo, ref_path, ref_geo))
    if case.label is None:
        problems.append(Problem(case.images[0], f"no label file for case {case.case_id}"))
        return problems
    try:
        lab, lgeo = read_image(case.label)
    except ImageReadError as exc:
        problems.append(Problem(case.label, str(exc).split(": ", 1)[-1]))
        return problems
    if ref_geo is not None:
        problems.extend(_geometry_problems(case.label, lgeo, ref_path, ref_geo))
    if not np.isfinite(lab).all():
        problems.append(Problem(case.label, "label holds NaN/inf values"))
        return problems
    values = np.unique(lab)
    if not np.array_equal(values, np.round(values)):
        problems.append(Problem(case.label, "label holds non-integer values"))
    undeclared = sorted(set(values.astype(np.int64).tolist()) - set(spec.label_values))
    if undeclared:
        problems.append(Problem(case.label, f"label values {undeclared} not declared in dataset.json"))
    return problems


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
        if p.name[: -len(spec.file_ending)] not in known:
            yield Problem(p, "label without any image channel")


def _check_one(args: tuple[CaseFiles, DatasetSpec]) -> list[Problem]:
    return check_case(*args)


def check_dataset(data_dir: str | Path, workers: int = 2, progress: bool = False) -> list[Problem]:
    """Every problem in a dataset folder, in case order."""
    data_dir = Path(data_dir)
    try:
        spec = load_dataset_spec(data_dir)
        cases = discover_cases(data_dir, spec)
    except (FileNotFoundError, ValueError) as exc:
        return [Problem(data_dir, str(exc))]
    problems = list(_orphan_labels(data_dir, spec, cases))
    if not cases:
        problems.append(Problem(data_dir / "imagesTr", "no images found"))
    jobs = [(c, spec) for c in cases]
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
