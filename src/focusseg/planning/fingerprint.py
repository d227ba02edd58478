"""Dataset fingerprint: what the planner needs to know about a raw dataset.

Per case: spacing, shape before/after crop to non-zero, per-class voxel counts, and a random sample of
foreground intensities per channel (nnU-Net samples 10,000 foreground voxels per case). Aggregated: median
spacing/shape, per-channel foreground mean/std/percentiles (0.5, 99.5), per-class voxel fractions. Voxels of the
ignore label (:mod:`focusseg.io.dataset`) are not annotated: neither foreground samples nor counted in a class.

Keyed by content: a fingerprint carries its format version, the sha256 of ``dataset.json`` and each case's
source signature (file names, sizes, mtime_ns); :func:`load_or_compute_fingerprint` reuses a cached one only
when all of them still match, and recomputes it (saying so in one line) otherwise.
"""

from __future__ import annotations

import hashlib
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from focusseg.errors import DatasetError, PlanError
from focusseg.io import CaseFiles, DatasetSpec, discover_cases, load_dataset_spec, read_case
from focusseg.io.atomic import save_json
from focusseg.io.dataset import case_sources
from focusseg.io.jsonfile import read_json
from focusseg.preprocessing.transforms import crop, nonzero_bbox

SAMPLES_PER_CASE = 10_000
#: Bumped whenever what a fingerprint holds or how it is computed changes.
FINGERPRINT_VERSION = 2


def case_fingerprint(case: CaseFiles, n_classes: int, seed: int = 0, reading: dict | None = None,
                     ignore_label: int | None = None) -> dict:
    """One case's fingerprint. With an ``ignore_label`` its voxels are neither foreground (intensity samples)
    nor counted in ``class_voxels`` (only the ``n_classes`` classes are)."""
    image, label, geo = read_case(list(case.images), case.label, **(reading or {}))
    bbox = nonzero_bbox(image)
    cropped = crop(image, bbox)
    lab = crop(label, bbox) if label is not None else None
    rng = np.random.default_rng(seed)
    fg = lab > 0 if lab is not None else np.any(cropped != 0, axis=0)
    if lab is not None and ignore_label is not None:
        fg &= lab != ignore_label
    samples = []
    for c in range(cropped.shape[0]):
        vals = cropped[c][fg]
        if vals.size > SAMPLES_PER_CASE:
            vals = rng.choice(vals, SAMPLES_PER_CASE, replace=False)
        samples.append(vals.astype(np.float32))
    counts = np.bincount(lab.ravel().clip(0), minlength=n_classes)[:n_classes] if lab is not None else None
    return {
        "case": case.case_id,
        "spacing": list(geo.spacing),
        "shape": list(geo.shape),
        "shape_after_crop": list(cropped.shape[1:]),
        "crop_fraction": float(np.prod(cropped.shape[1:]) / np.prod(geo.shape)),
        "class_voxels": counts.tolist() if counts is not None else None,
        "_samples": samples,
    }


def _job(args):
    return case_fingerprint(*args)


def dataset_json_sha256(data_dir: str | Path) -> str:
    return hashlib.sha256((Path(data_dir) / "dataset.json").read_bytes()).hexdigest()


def _labelled(data_dir: Path, spec: DatasetSpec) -> list[CaseFiles]:
    cases = [c for c in discover_cases(data_dir, spec) if c.label is not None]
    if not cases:
        raise DatasetError("no labelled cases found (labelsTr holds no label of any case)", data_dir)
    return cases


def _key(data_dir: Path, cases: list[CaseFiles], spec: DatasetSpec | None = None) -> dict:
    key = {"version": FINGERPRINT_VERSION, "dataset_json_sha256": dataset_json_sha256(data_dir),
           "sources": {c.case_id: case_sources(c, data_dir) for c in cases}}
    if spec is not None and spec.ignore_label is not None:  # only then: other datasets keep their cached key
        key["ignore_label"] = spec.ignore_label
    return key


def compute_fingerprint(data_dir: str | Path, workers: int = 2, progress: bool = True) -> dict:
    """Fingerprint of a dataset folder (JSON-serialisable), with its key (version, dataset.json hash, sources:
    taken before any file is read, so an edit during the computation makes the next call recompute)."""
    data_dir = Path(data_dir)
    spec: DatasetSpec = load_dataset_spec(data_dir)
    cases = _labelled(data_dir, spec)
    key = _key(data_dir, cases, spec)
    reading = {"n_channels": spec.n_channels, "layout": spec.layout, "label_values": spec.label_values}
    jobs = [(c, spec.n_classes, i, reading, spec.ignore_label) for i, c in enumerate(cases)]
    from rich.progress import Progress

    results = []
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("fingerprint", total=len(jobs))
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for r in pool.map(_job, jobs, chunksize=4):
                    results.append(r)
                    bar.advance(task)
        else:
            for j in jobs:
                results.append(_job(j))
                bar.advance(task)
    intensity = []
    for ch in range(spec.n_channels):
        vals = np.concatenate([r["_samples"][ch] for r in results]) if results else np.zeros(1)
        if vals.size == 0:
            vals = np.zeros(1, dtype=np.float32)
        p = np.percentile(vals, [0.5, 50, 99.5])
        intensity.append({
            "channel": spec.channel_names[ch],
            "mean": float(vals.mean()), "std": float(vals.std()),
            "percentile_00_5": float(p[0]), "median": float(p[1]), "percentile_99_5": float(p[2]),
            "min": float(vals.min()), "max": float(vals.max()),
        })
    for r in results:
        del r["_samples"]
    total = np.sum([r["class_voxels"] for r in results], axis=0).astype(np.float64)
    spacings = np.array([r["spacing"] for r in results])
    shapes = np.array([r["shape_after_crop"] for r in results])
    return {
        **key,
        "dataset": spec.name,
        "data_dir": str(data_dir.resolve()),
        "n_cases": len(results),
        "channel_names": {str(k): v for k, v in spec.channel_names.items()},
        "labels": spec.labels,
        "median_spacing": np.median(spacings, 0).tolist(),
        "spacing_percentile_10": np.percentile(spacings, 10, axis=0).tolist(),
        "median_shape_after_crop": np.median(shapes, 0).tolist(),
        "max_shape_after_crop": shapes.max(0).tolist(),
        "median_crop_fraction": float(np.median([r["crop_fraction"] for r in results])),
        "class_fraction": (total / max(total.sum(), 1)).tolist(),
        "intensity": intensity,
        "cases": results,
    }


def _stale_reason(cached: object, current: dict) -> str | None:
    """Why a cached fingerprint no longer describes the dataset (None: it does)."""
    if not isinstance(cached, dict):
        return "not a fingerprint"
    if cached.get("version") != current["version"]:
        return f"format version {cached.get('version')!r}, this focusseg writes {current['version']}"
    if cached.get("dataset_json_sha256") != current["dataset_json_sha256"]:
        return "dataset.json changed"
    if cached.get("ignore_label") != current.get("ignore_label"):
        return "ignore label not recorded (made by an older focusseg, which sampled its voxels as foreground)"
    old, new = cached.get("sources"), current["sources"]
    if not isinstance(old, dict):
        return "no source signature"
    added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    changed = sorted(c for c in set(new) & set(old) if old[c] != new[c])
    parts = [f"{len(x)} case(s) {what}" for x, what in ((changed, "changed"), (added, "added"), (removed, "removed"))
             if x]
    return ", ".join(parts) or None


def load_or_compute_fingerprint(data_dir: str | Path, path: str | Path, progress: bool = True, workers: int = 2
                                ) -> dict:
    """The fingerprint cached at ``path`` if its key (version, dataset.json hash, every case's source files)
    matches the dataset now; otherwise computed, saved to ``path`` (atomically) and returned, with one line on
    stderr when a cached one was stale."""
    data_dir, path = Path(data_dir), Path(path)
    if path.is_file():
        try:
            cached = read_json(path, PlanError, allow_nan=False)  # bounded: size, nesting, digits; no NaN
        except PlanError:
            cached, reason = None, "unreadable"
        else:
            spec = load_dataset_spec(data_dir)
            reason = _stale_reason(cached, _key(data_dir, _labelled(data_dir, spec), spec))
        if reason is None:
            return cached  # type: ignore[return-value]
        print(f"fingerprint {path}: stale ({reason}) — recomputing", file=sys.stderr)
    fp = compute_fingerprint(data_dir, workers=workers, progress=progress)
    save_json(fp, path)
    return fp


