"""Tiny region-based datasets for the region tests (nnU-Net's region format in dataset.json)."""

from __future__ import annotations

import json
from pathlib import Path

from focusseg_testdata import write_tiny_dataset

#: Nested regions of the tiny dataset (label 1 = sphere, 2 = cube): "object" = {1, 2} ⊇ "cube" = {2}.
REGION_LABELS = {"background": 0, "object": [1, 2], "cube": 2}
REGION_ORDER = [1, 2]


def write_region_dataset(root: Path, n_cases: int = 6, **kwargs) -> Path:
    """The tiny blob dataset of ``focusseg_testdata`` with region-based labels in its dataset.json."""
    write_tiny_dataset(root, n_cases=n_cases, **kwargs)
    ds = json.loads((root / "dataset.json").read_text())
    ds["labels"], ds["regions_class_order"] = REGION_LABELS, REGION_ORDER
    (root / "dataset.json").write_text(json.dumps(ds, indent=1))
    return root


def write_json(root: Path, labels: dict, order=None, **extra) -> Path:
    """A minimal nnU-Net v2 dataset.json with these labels (and regions_class_order when given)."""
    root.mkdir(parents=True, exist_ok=True)
    ds = {"channel_names": {"0": "MR"}, "labels": labels, "file_ending": ".nii.gz", **extra}
    if order is not None:
        ds["regions_class_order"] = order
    (root / "dataset.json").write_text(json.dumps(ds))
    return root
