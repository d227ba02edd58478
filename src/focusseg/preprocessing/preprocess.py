"""Preprocess cases with a plan: crop to non-zero -> normalise -> resample (image: spline order 3 by default,
label: nearest), then store each case as ``.npy`` arrays plus an index of foreground voxel locations per class
(and, with an ignore label, of annotated voxels under key :data:`ANNOTATED`; label maps keep the ignore value).
The store is keyed by what produced it (plan fields, source files; see :mod:`focusseg.preprocessing.store`), so a
changed plan or an edited case is preprocessed again, never silently reused.

Runs in a process pool; each worker handles one case and writes it, so memory does not grow with the number
of cases. The same :func:`preprocess_array` is used at inference time.
"""

from __future__ import annotations

import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from focusseg.errors import DatasetError, ImageError, PlanError
from focusseg.io import CaseFiles, Geometry, discover_cases, load_dataset_spec, read_case
from focusseg.io.dataset import case_sources
from focusseg.io.geometry import MAX_VOXELS_ENV, shape_text, voxel_limit
from focusseg.preprocessing.store import MAX_LOCATIONS_PER_CLASS, PreprocessedStore, store_fields, store_key
from focusseg.preprocessing.transforms import (
    crop,
    nonzero_bbox,
    normalize,
    resample_image,
    resample_label,
    resampled_shape,
    separate_axis,
)

#: Location key of the annotated voxels (every voxel that is not the ignore label), stored only when the plan has
#: an ignore label: nnU-Net centres its non-foreground patches on them (``annotated_classes_key``).
ANNOTATED = -1


def preprocess_array(
    image: np.ndarray, geometry: Geometry, plan: dict, label: np.ndarray | None = None,
    source: str | Path | None = None, max_voxels: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """One case in memory in the plan's preprocessed space.

    The resampled grid is computed first and refused when it holds more voxels than the limit in force: a plan
    whose ``target_spacing`` is far finer than the case's (``[0.01] * 3`` on a 1 mm image) would otherwise allocate
    a million times the image.

    Args:
        image: ``(C, *spatial)`` image.
        geometry: its geometry (the spacing is read from it).
        plan: the plan (``normalization``, ``target_spacing``, ``resample_order_image``, ``resample_separate_z``:
            nnU-Net's separate-z resampling of anisotropic cases, :func:`~.transforms.separate_axis`).
        label: the label map on the image's grid, or None.
        source: the case's file, named in the error.
        max_voxels: the voxel limit (:func:`focusseg.io.geometry.voxel_limit`; None: the limit in force).

    Returns:
        ``(image, label, properties)``; ``properties`` holds what is needed to map a prediction back: the original
        geometry, the crop box, the cropped shape and the axis resampled on its own (``separate_axis``, or None).

    Raises:
        PlanError: a ``target_spacing`` that is not one finite positive spacing per spatial axis.
        ImageError: the resampled grid (channels included) exceeds the voxel limit; names ``source``, the shapes,
            the target spacing and the limit.
    """
    bbox = nonzero_bbox(image)
    img = crop(image, bbox)
    target = plan["target_spacing"]
    if isinstance(target, np.ndarray):
        target = target.tolist()
    if not isinstance(target, (list, tuple)) or len(target) != img.ndim - 1 or not all(
            isinstance(t, (int, float, np.integer, np.floating)) and not isinstance(t, bool) and math.isfinite(t)
            and t > 0 for t in target):
        raise PlanError(f"target_spacing {target!r} must be {img.ndim - 1} finite positive spacings (mm) for this "
                        f"{img.ndim - 1}D case", source)
    new_shape = resampled_shape(img.shape[1:], geometry.spacing, target)
    limit = voxel_limit(max_voxels)
    voxels = math.prod(new_shape) * img.shape[0]
    if voxels > limit:
        raise ImageError(f"resampled to the plan's target_spacing {list(target)} mm, the cropped "
                         f"case {shape_text(img.shape[1:])} at {[round(float(s), 4) for s in geometry.spacing]} mm "
                         f"becomes {shape_text(new_shape)} x {img.shape[0]} channel(s) = {voxels:,} voxels, over "
                         f"the voxel limit {limit:,} ({MAX_VOXELS_ENV})", source,
                         hint="the plan's target_spacing is far finer than this case's spacing: check the plan, "
                              f"or raise {MAX_VOXELS_ENV} if the machine has the memory")
    mask = np.any(img != 0, axis=0)
    img = normalize(img, plan["normalization"], mask=mask)
    separate_z = plan.get("resample_separate_z")
    axis = None if separate_z is None else separate_axis(geometry.spacing, target,
                                                         float(separate_z.get("threshold", 3.0)))
    img = resample_image(img, new_shape, order=int(plan.get("resample_order_image", 3)), separate=axis,
                         order_separate=int(separate_z.get("order", 0)) if separate_z else 0)
    lab = None
    if label is not None:
        lab = resample_label(crop(label, bbox), new_shape)
    props = {
        "geometry": geometry.to_dict(),
        "bbox": [list(b) for b in bbox],
        "shape_after_crop": list(mask.shape),
        "shape_preprocessed": list(new_shape),
        "spacing": list(geometry.spacing),
        "separate_axis": axis,
    }
    return img, lab, props


def class_locations(label: np.ndarray, classes: list[int], seed: int = 0, ignore_label: int | None = None
                    ) -> dict[int, np.ndarray]:
    """Up to ``MAX_LOCATIONS_PER_CLASS`` voxel coordinates ``(N, ndim)`` per foreground class (random subset).

    ``classes`` never includes the ignore label (the plan's labels are classes only). With ``ignore_label``, key
    :data:`ANNOTATED` holds up to as many coordinates of annotated voxels (label != ignore, background included),
    drawn after the classes (so the classes' subsets do not depend on it)."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in classes:
        if ignore_label is not None and c == ignore_label:
            continue
        coords = np.argwhere(label == c)
        if len(coords) > MAX_LOCATIONS_PER_CLASS:
            coords = coords[rng.choice(len(coords), MAX_LOCATIONS_PER_CLASS, replace=False)]
        out[c] = coords.astype(np.int32)
    if ignore_label is not None:
        coords = np.argwhere(label != ignore_label)
        if len(coords) > MAX_LOCATIONS_PER_CLASS:
            coords = coords[rng.choice(len(coords), MAX_LOCATIONS_PER_CLASS, replace=False)]
        out[ANNOTATED] = coords.astype(np.int32)
    return out


def _preprocess_one(args: tuple[CaseFiles, dict, str, dict, dict]) -> str:
    case, plan, out_dir, reading, extra_props = args
    image, label, geo = read_case(list(case.images), case.label, **reading)
    img, lab, props = preprocess_array(image, geo, plan, label, source=case.images[0])
    fg = sorted(int(v) for v in plan["labels"].values() if int(v) != 0)
    locs = class_locations(lab, fg, ignore_label=plan.get("ignore_label")) if lab is not None else {}
    PreprocessedStore(out_dir).write_case(case.case_id, img, lab, {**props, **extra_props}, locs)
    return case.case_id


def _changed_fields(old: dict | None, new: dict) -> str:
    if old is None:
        return "no store key: written by an older focusseg or unreadable"
    old_fields = old.get("fields") if isinstance(old.get("fields"), dict) else {}
    changed = sorted(k for k in set(old_fields) | set(new) if old_fields.get(k) != new.get(k))
    return (", ".join(changed) + " changed") if changed else "store key changed"


def _check_ids(case_ids: list[str], source: Path) -> None:
    """Case ids whose store files would collide with another case's or with ``store.json``."""
    ids = set(case_ids)
    for cid in case_ids:
        if cid == "store":
            raise DatasetError("case id 'store' collides with the preprocessed store's store.json; rename the case",
                               source)
        for suffix in ("_seg", "_locs"):
            if cid.endswith(suffix) and cid[: -len(suffix)] in ids:
                raise DatasetError(f"case ids {cid[: -len(suffix)]!r} and {cid!r} collide in the preprocessed "
                                   f"store ({cid}.npy); rename one", source)


def preprocess_dataset(
    data_dir: str | Path, plan: dict, out_dir: str | Path, workers: int = 2, progress: bool = True,
    case_ids: list[str] | None = None,
) -> PreprocessedStore:
    """Preprocess every labelled case (or ``case_ids``) that is not already in ``out_dir`` with the same key.

    A case is redone when the store's key (the preprocessing fields of ``plan``, see
    :func:`~focusseg.preprocessing.store.store_fields`) or its source files (name, size, mtime_ns) differ from
    what it was made from; one line on stderr says how many and why. Returns the store.
    """
    data_dir = Path(data_dir)
    spec = load_dataset_spec(data_dir)
    store = PreprocessedStore(out_dir)
    cases = [c for c in discover_cases(data_dir, spec) if c.label is not None]
    if case_ids is not None:
        known = {c.case_id for c in cases}
        unknown = sorted(set(case_ids) - known)
        if unknown:
            raise DatasetError(f"case {unknown[0]!r} is not a labelled case of the dataset"
                               + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""), data_dir)
        wanted = set(case_ids)
        cases = [c for c in cases if c.case_id in wanted]
    _check_ids([c.case_id for c in cases], data_dir / ("imagesTr" if spec.layout != "msd" else "dataset.json"))
    fields = store_fields(plan)
    key = store_key(fields)
    old_key = store.read_key()
    existing = set(store.case_ids())
    store_reason = None
    if old_key is None or old_key.get("key") != key:
        if existing:
            store_reason = _changed_fields(old_key, fields)
        store.write_key(fields)  # before any case: each case's own key decides what is fresh
    reading = {"n_channels": spec.n_channels, "layout": spec.layout, "label_values": spec.label_values}
    todo, reasons = [], []
    for c in cases:
        sources = case_sources(c, data_dir)
        job = (c, plan, str(out_dir), reading, {"store_key": key, "source": sources})
        if c.case_id not in existing:
            todo.append(job)
            continue
        props = store.try_properties(c.case_id)
        if props is None:
            reason = "unreadable case file"
        elif props.get("store_key") != key:
            reason = store_reason or "made with other preprocessing fields"
        elif props.get("source") != sources:
            reason = "source files changed"
        else:
            continue
        todo.append(job)
        reasons.append(reason)
    if reasons:
        why = "; ".join(f"{r}" + (f": {reasons.count(r)}" if len(set(reasons)) > 1 else "")
                        for r in dict.fromkeys(reasons))
        print(f"preprocessed store {store.root}: {len(reasons)} case(s) stale ({why}) — re-preprocessing",
              file=sys.stderr)
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
