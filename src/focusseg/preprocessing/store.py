"""The preprocessed store: one folder, per case ``<id>.npy`` (image, float32 ``(C, *spatial)``),
``<id>_seg.npy`` (label, int16), ``<id>.json`` (properties) and ``<id>_locs.npz`` (foreground voxel
locations per class; key ``-1``: annotated voxels, with an ignore label), plus ``store.json``: the store's
key. Arrays are opened memory-mapped, so a loader reads only the patch it crops.

Keyed by content: ``store.json`` holds the format version and the sha256 of the plan fields that change what
preprocessing produces (:data:`PREPROCESSING_FIELDS`); each case's ``.json`` repeats that key with each source
file's (name, size, mtime_ns), and :func:`~focusseg.preprocessing.preprocess.preprocess_dataset` redoes a case
whose key or sources differ. Every file is written atomically (:func:`~focusseg.io.atomic.atomic_path`), the case
``.json`` last, so a killed run never leaves a case that looks complete; arrays load with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from focusseg.errors import DatasetError, MissingFileError, one_line
from focusseg.io.atomic import atomic_path, atomic_write_text, is_temp_name
from focusseg.io.jsonfile import read_json

#: Bumped whenever the store's layout or the preprocessing code changes what a case's arrays hold.
STORE_FORMAT = 2
#: The plan fields whose values change the preprocessed arrays (plus the store format, see :func:`store_fields`).
PREPROCESSING_FIELDS = ("target_spacing", "normalization", "resample_order_image", "labels", "channel_names")
KEY_FILE = "store.json"
_HINT = "delete the preprocessed folder to rebuild it"

#: At most this many foreground voxel coordinates are stored per class (a random subset beyond it).
MAX_LOCATIONS_PER_CLASS = 10_000


def store_fields(plan: dict) -> dict:
    """The values that determine what preprocessing writes (defaults made explicit, so an absent field and
    its default give the same key)."""
    fields = {k: plan.get(k) for k in PREPROCESSING_FIELDS}
    fields["resample_order_image"] = int(plan.get("resample_order_image", 3))
    fields["labels"] = {str(k): int(v) for k, v in (plan.get("labels") or {}).items()}
    if plan.get("ignore_label") is not None:  # only then: stores of other plans keep their key
        fields["ignore_label"] = int(plan["ignore_label"])
    if plan.get("resample_separate_z") is not None:  # likewise
        fields["resample_separate_z"] = dict(plan["resample_separate_z"])
    fields["format"] = STORE_FORMAT
    fields["max_locations_per_class"] = MAX_LOCATIONS_PER_CLASS
    fields["crop"] = "nonzero"
    return fields


def store_key(fields: dict) -> str:
    """sha256 of the fields' canonical JSON."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class PreprocessedStore:
    """A preprocessed store folder (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def case_ids(self) -> list[str]:
        """Every case with a ``.json`` (written last, so its arrays are complete), whatever its key."""
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json") if not is_temp_name(p.name) and p.name != KEY_FILE)

    def fresh_case_ids(self) -> list[str]:
        """The cases whose key is the store's current key (``store.json``)."""
        key = (self.read_key() or {}).get("key")
        out = []
        for cid in self.case_ids():
            props = self.try_properties(cid)
            if key is not None and props is not None and props.get("store_key") == key:
                out.append(cid)
        return out

    def read_key(self) -> dict | None:
        """``store.json`` as a dict, or None when absent or unreadable."""
        try:
            data = read_json(self.root / KEY_FILE, DatasetError, allow_nan=False)
        except DatasetError:
            return None
        return data if isinstance(data, dict) else None

    def write_key(self, fields: dict) -> str:
        """Write ``store.json`` for ``fields`` (atomically); returns the key."""
        key = store_key(fields)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.root / KEY_FILE, json.dumps({"format": STORE_FORMAT, "key": key, "fields": fields},
                                                           indent=1) + "\n")
        return key

    def _atomic_save(self, path: Path, save) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            save(f)

    def write_case(self, case_id: str, image: np.ndarray, label: np.ndarray | None, props: dict,
                   locations: dict[int, np.ndarray]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._atomic_save(self.root / f"{case_id}.npy", lambda f: np.save(f, image.astype(np.float32)))
        if label is not None:
            self._atomic_save(self.root / f"{case_id}_seg.npy", lambda f: np.save(f, label.astype(np.int16)))
        self._atomic_save(self.root / f"{case_id}_locs.npz",
                          lambda f: np.savez(f, **{str(k): v for k, v in locations.items()}))
        props = {**props, "classes_present": [int(k) for k, v in locations.items() if len(v) and int(k) >= 0]}
        self._atomic_save(self.root / f"{case_id}.json", lambda f: f.write(json.dumps(props, indent=1).encode()))

    def _load(self, path: Path, mmap: bool) -> np.ndarray:
        if not path.is_file():
            raise MissingFileError("preprocessed array missing", path, hint=_HINT)
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise DatasetError(f"unreadable preprocessed array ({one_line(exc)})", path,
                               hint=_HINT) from exc

    def image(self, case_id: str, mmap: bool = True) -> np.ndarray:
        return self._load(self.root / f"{case_id}.npy", mmap)

    def label(self, case_id: str, mmap: bool = True) -> np.ndarray:
        return self._load(self.root / f"{case_id}_seg.npy", mmap)

    def try_properties(self, case_id: str) -> dict | None:
        """A case's properties, or None when its ``.json`` is absent or unreadable."""
        try:
            props = read_json(self.root / f"{case_id}.json", DatasetError, allow_nan=False)
        except DatasetError:
            return None
        return props if isinstance(props, dict) else None

    def properties(self, case_id: str) -> dict:
        path = self.root / f"{case_id}.json"
        props = self.try_properties(case_id)
        if props is None:
            if not path.is_file():
                raise MissingFileError("preprocessed case missing", path, hint=_HINT)
            raise DatasetError("unreadable preprocessed case properties", path, hint=_HINT)
        return props

    def locations(self, case_id: str) -> dict[int, np.ndarray]:
        path = self.root / f"{case_id}_locs.npz"
        if not path.is_file():
            raise MissingFileError("preprocessed foreground locations missing", path, hint=_HINT)
        try:
            with np.load(path, allow_pickle=False) as z:
                return {int(k): z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"unreadable foreground locations ({one_line(exc)})", path,
                               hint=_HINT) from exc

    def shape(self, case_id: str) -> tuple[int, ...]:
        return tuple(self.properties(case_id)["shape_preprocessed"])
