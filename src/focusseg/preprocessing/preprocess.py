"""Preprocess cases with a plan: crop to non-zero -> normalise -> resample (image: spline order 3 by default,
label: nearest), then store each case as ``.npy`` arrays plus an index of foreground voxel locations per class.

Runs in a process pool; each worker handles one case and writes it, so memory does not grow with the number
of cases. The same :func:`preprocess_array` is used at inference time.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from focusseg.io import CaseFiles, Geometry, discover_cases, load_dataset_spec, read_case
from focusseg.preprocessing.store import PreprocessedStore
from focusseg.preprocessing.transforms import (
    crop,
    nonzero_bbox,
    normalize,
    resample_image,
    resample_label,
    resampled_shape,
)

MAX_LOCATIONS_PER_CLASS = 10_000


def preprocess_array(
    image: np.ndarray, geometry: Geometry, plan: dict, label: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """One case in memory: returns ``(image, label, properties)`` in the plan's preprocessed space.

    ``properties`` holds what is needed to map a prediction back: the original geometry, the crop box and
    the cropped shape.
    """
    bbox = nonzero_bbox(image)
    img = crop(image, bbox)
    mask = np.any(img != 0, axis=0)
    img = normalize(img, plan["normalization"], mask=mask)
    new_shape = resampled_shape(img.shape[1:], geometry.spacing, plan["target_spacing"])
    img = resample_image(img, new_shape, order=int(plan.get("resample_order_image", 3)))
    lab = None
    if label is not None:
        lab = resample_label(crop(label, bbox), new_shape)
    props = {
        "geometry": geometry.to_dict(),
        "bbox": [list(b) for b in bbox],
        "shape_after_crop": list(mask.shape),
        "shape_preprocessed": list(new_shape),
        "spacing": list(geometry.spacing),
    }
    return img, lab, props


def class_locations(label: np.ndarray, classes: list[int], seed: int = 0) -> dict[int, np.ndarray]:
    """Up to ``MAX_LOCATIONS_PER_CLASS`` voxel coordinates ``(N, ndim)`` per foreground class (random subset)."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in classes:
        coords = np.argwhere(label == c)
        if len(coords) > MAX_LOCATIONS_PER_CLASS:
            coords = coords[rng.choice(len(coords), MAX_LOCATIONS_PER_CLASS, replace=False)]
        out[c] = coords.astype(np.int32)
    return out


def _preprocess_one(args: tuple[CaseFiles, dict, str]) -> str:
    case, plan, out_dir = args
    image, label, geo = read_case(list(case.images), case.label)
    img, lab, props = preprocess_array(image, geo, plan, label)
    fg = sorted(int(v) for v in plan["labels"].values() if int(v) != 0)
    locs = class_locations(lab, fg) if lab is not None else {}
    PreprocessedStore(out_dir).write_case(case.case_id, img, lab, props, locs)
    return case.case_id


def preprocess_dataset(
    data_dir: str | Path, plan: dict, out_dir: str | Path, workers: int = 2, progress: bool = True,
    case_ids: list[str] | None = None,
) -> PreprocessedStore:
    """Preprocess every labelled case (or ``case_ids``) not yet in ``out_dir``; returns the store."""
    spec = load_dataset_spec(data_dir)
    store = PreprocessedStore(out_dir)
    done = set(store.case_ids())
    cases = [c for c in discover_cases(data_dir, spec) if c.label is not None]
    if case_ids is not None:
        wanted = set(case_ids)
        cases = [c for c in cases if c.case_id in wanted]
    todo = [(c, plan, str(out_dir)) for c in cases if c.case_id not in done]
    from rich.progress import Progress

    with Progress(transient=True, disable=not progress or not todo) as bar:
        task = bar.add_task("preprocessing", total=len(todo))
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(_preprocess_one, todo):
                    bar.advance(task)
        else:
            for t in todo:
                _preprocess_one(t)
                bar.advance(task)
    return store
