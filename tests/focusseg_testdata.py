"""Shared test data helpers: a tiny nnU-Net v2 raw dataset written to a temp folder, and the shared data location."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def shared_dataset(name: str) -> Path:
    """Path of a dataset under ../shared/data, or skip the test with a clear message."""
    p = SHARED_DATA / name
    if not p.is_dir():
        pytest.skip(f"real data not available: {p} is absent (needs ../shared/data beside the repository)")
    return p


def write_tiny_dataset(root: Path, n_cases: int = 6, shape=(20, 24, 16), n_channels: int = 1, seed: int = 0,
                       spacing=(1.5, 1.0, 2.0), with_test: bool = False) -> Path:
    """A blob-in-noise dataset: label 1 = a sphere, label 2 = a small cube; bright in the image."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "imagesTr").mkdir(exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 3.0]
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)

    def case(i: int, split: str = "Tr") -> None:
        c = np.array(shape) / 2 + rng.integers(-2, 3, 3)
        lab = np.zeros(shape, np.uint8)
        lab[np.linalg.norm(grid - c, axis=-1) < min(shape) / 4] = 1
        q = (np.array(shape) * 0.2).astype(int)
        lab[q[0]:q[0] + 3, q[1]:q[1] + 3, q[2]:q[2] + 3] = 2
        for ch in range(n_channels):
            img = (lab * (2.0 + ch) + rng.normal(0, 0.3, shape) + 1.0).astype(np.float32)
            img[:1] = 0  # a zero border so crop-to-non-zero does something
            nib.save(nib.Nifti1Image(img, affine), root / f"images{split}" / f"case{i:03d}_{ch:04d}.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), root / f"labels{split}" / f"case{i:03d}.nii.gz")

    for i in range(n_cases):
        case(i)
    if with_test:
        (root / "imagesTs").mkdir(exist_ok=True)
        (root / "labelsTs").mkdir(exist_ok=True)
        for i in range(n_cases, n_cases + 2):
            case(i, "Ts")
    ds = {"name": "Tiny", "channel_names": {str(c): "MR" for c in range(n_channels)},
          "labels": {"background": 0, "sphere": 1, "cube": 2}, "numTraining": n_cases, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(ds, indent=1))
    return root


def write_partially_annotated_dataset(root: Path, n_cases: int = 6, shape=(20, 24, 16), ignore_value: int = 3,
                                      seed: int = 0, with_test: bool = False) -> Path:
    """:func:`write_tiny_dataset` as a partially annotated dataset (nnU-Net's ignore label): in every label file
    (labelsTr, and labelsTs with ``with_test``) the slices ``z`` with ``(z // 2) % 2 == 1`` -- half the voxels --
    are set to ``ignore_value``, and ``dataset.json`` declares ``"ignore": ignore_value`` (above sphere 1 and cube
    2, so it is the highest label value). Sphere and cube keep annotated voxels in every case."""
    write_tiny_dataset(root, n_cases=n_cases, shape=shape, seed=seed, with_test=with_test)
    ignored = (np.arange(shape[2]) // 2) % 2 == 1
    for folder in ("labelsTr", "labelsTs"):
        for f in sorted((root / folder).glob("*.nii.gz")) if (root / folder).is_dir() else []:
            img = nib.load(f)
            lab = np.asarray(img.dataobj).astype(np.uint8)
            lab[..., ignored] = ignore_value
            nib.save(nib.Nifti1Image(lab, img.affine), f)
    ds = json.loads((root / "dataset.json").read_text())
    ds["labels"] = {"background": 0, "sphere": 1, "cube": 2, "ignore": int(ignore_value)}
    (root / "dataset.json").write_text(json.dumps(ds, indent=1))
    return root
