"""The preprocessed store: one folder, per case ``<id>.npy`` (image, float32 ``(C, *spatial)``),
``<id>_seg.npy`` (label, int16), ``<id>.json`` (properties) and ``<id>_locs.npz`` (foreground voxel
locations per class). Arrays are opened memory-mapped, so a loader reads only the patch it crops.
Each file is written to a temporary name and renamed, and the ``.json`` last, so a killed run never leaves a
case that looks complete but is not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


class PreprocessedStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def case_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json") if not p.name.startswith("."))

    def _atomic_save(self, path: Path, save) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            save(f)
        os.replace(tmp, path)

    def write_case(self, case_id: str, image: np.ndarray, label: np.ndarray | None, props: dict,
                   locations: dict[int, np.ndarray]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._atomic_save(self.root / f"{case_id}.npy", lambda f: np.save(f, image.astype(np.float32)))
        if label is not None:
            self._atomic_save(self.root / f"{case_id}_seg.npy", lambda f: np.save(f, label.astype(np.int16)))
        self._atomic_save(self.root / f"{case_id}_locs.npz",
                          lambda f: np.savez(f, **{str(k): v for k, v in locations.items()}))
        props = {**props, "classes_present": [int(k) for k, v in locations.items() if len(v)]}
        self._atomic_save(self.root / f"{case_id}.json", lambda f: f.write(json.dumps(props, indent=1).encode()))

    def image(self, case_id: str, mmap: bool = True) -> np.ndarray:
        return np.load(self.root / f"{case_id}.npy", mmap_mode="r" if mmap else None)

    def label(self, case_id: str, mmap: bool = True) -> np.ndarray:
        return np.load(self.root / f"{case_id}_seg.npy", mmap_mode="r" if mmap else None)

    def properties(self, case_id: str) -> dict:
        return json.loads((self.root / f"{case_id}.json").read_text())

    def locations(self, case_id: str) -> dict[int, np.ndarray]:
        with np.load(self.root / f"{case_id}_locs.npz") as z:
            return {int(k): z[k] for k in z.files}

    def shape(self, case_id: str) -> tuple[int, ...]:
        return tuple(self.properties(case_id)["shape_preprocessed"])
