"""Synthetic abdominal-MR-like phantoms, written as an nnU-Net v2 raw dataset (the ``focusseg demo`` data).

Each case, in the coordinates of a slightly rotated and translated body frame: a body ellipsoid (air exactly 0
outside), a large deformed organ (label 1, 5-10 % of the voxels), one or two small organs (label 2, 0.3-0.8 %
each) and 0-4 lesions inside the organ (label 3, 3-80 voxels each). Intensities: per-class means with texture,
partial-volume blur, a smooth bias field, Rician noise and a per-case gain; the class means overlap on purpose
(lesions are dark on channel 0, bright on channel 1). Formulas: ``docs/synthetic-data.md``.

Every case ``i`` draws from ``numpy.random.default_rng([seed, i])``: a case does not depend on how many other
cases are generated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

LABELS: dict[str, int] = {"background": 0, "organ": 1, "small_organ": 2, "lesion": 3}
CHANNEL_NAMES: dict[int, dict[str, str]] = {1: {"0": "MR"}, 2: {"0": "T1", "1": "T2"}}
# mean intensity per channel of (soft tissue, organ, small organ, lesion)
CLASS_MEANS = np.array([[100.0, 140.0, 175.0, 50.0], [80.0, 60.0, 120.0, 160.0]])
LESION_COUNT_P = (0.2, 0.3, 0.25, 0.15, 0.1)


@dataclass(frozen=True)
class Phantom:
    """One case: ``image (C, X, Y, Z)`` float32, ``label (X, Y, Z)`` uint8, ``spacing`` mm, ``affine`` 4x4."""

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz


def _smooth_field(q: np.ndarray, rng: np.random.Generator, scale_mm: float, k: int = 4) -> np.ndarray:
    """Sum of ``k`` plane cosines, wavelengths ``scale_mm * U(1, 2)``, unit variance: a cheap smooth field."""
    dirs = rng.normal(size=(k, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    waves = dirs * (2 * np.pi / (scale_mm * rng.uniform(1.0, 2.0, size=(k, 1))))
    phase = rng.uniform(0, 2 * np.pi, size=k)
    field = np.einsum("kd,d...->k...", waves, q) + phase.reshape(-1, 1, 1, 1)
    return (np.cos(field).sum(0) * np.sqrt(2.0 / k)).astype(np.float32)


def _nearest(dist: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    """Mask of the ``k`` allowed voxels with the smallest ``dist`` (fewer if fewer are allowed)."""
    d = np.where(allowed, dist, np.inf).ravel()
    k = int(min(k, allowed.sum()))
    out = np.zeros(d.shape, dtype=bool)
    if k > 0:
        out[np.argpartition(d, k - 1)[:k]] = True
    return out.reshape(dist.shape)


def _largest_nearest(dist: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    """The largest 26-connected component of the nearest voxels, grown until it has at least ``k`` voxels."""
    want = k
    for _ in range(8):
        lab, n = ndimage.label(_nearest(dist, allowed, want), structure=np.ones((3, 3, 3)))
        sizes = np.bincount(lab.ravel())[1:]
        if n == 0:
            break
        biggest = lab == (int(np.argmax(sizes)) + 1)
        if sizes.max() >= k or want >= allowed.sum():
            return biggest
        want += k - int(sizes.max())
    return biggest


def make_phantom(
    rng: np.random.Generator,
    shape: Sequence[int] = (48, 48, 40),
    spacing: Sequence[float] = (1.5, 1.5, 2.0),
    n_channels: int = 1,
) -> Phantom:
    """Draw one phantom (see the module docstring for the model)."""
    if n_channels not in CHANNEL_NAMES:
        raise ValueError(f"n_channels must be 1 or 2, got {n_channels}")
    shape = tuple(int(s) for s in shape)
    sp = np.asarray(spacing, dtype=np.float64)
    extent = np.asarray(shape) * sp
    n_vox = int(np.prod(shape))
    centre = (np.asarray(shape) - 1) / 2.0
    p = (np.indices(shape, dtype=np.float32) - centre.reshape(3, 1, 1, 1)) * sp.reshape(3, 1, 1, 1)
    rot = _rotation(np.radians(rng.uniform(-8, 8, size=3)))
    shift = rng.uniform(-0.04, 0.04, size=3) * extent
    q = np.einsum("ji,j...->i...", rot, p - shift.reshape(3, 1, 1, 1)).astype(np.float32)

    a_body = extent * np.array([0.42, 0.36, 0.45]) * rng.uniform(0.92, 1.05, size=3)
    body_r = np.sqrt(np.einsum("d...,d->...", q**2, 1.0 / a_body**2))
    body = body_r < 1.0
    label = np.zeros(shape, dtype=np.uint8)

    a_org = a_body * np.array([0.55, 0.5, 0.55]) * rng.uniform(0.85, 1.15, size=3)
    c_org = a_body * rng.uniform(-0.12, 0.12, size=3)
    r_org = np.sqrt(np.einsum("d...,d->...", (q - c_org.reshape(3, 1, 1, 1)) ** 2, 1.0 / a_org**2))
    f_org = r_org * (1.0 + 0.18 * _smooth_field(q, rng, float(a_org.mean())))
    organ = _largest_nearest(f_org, body_r < 0.85, int(rng.uniform(0.05, 0.10) * n_vox))
    label[organ] = 1
    tau = f_org[organ].max()

    for _ in range(int(rng.integers(1, 3))):
        cand = np.flatnonzero(body & (body_r < 0.75) & (f_org > 1.3 * tau) & (label == 0))
        if cand.size == 0:
            cand = np.flatnonzero(body & (label == 0))
        c = q.reshape(3, -1)[:, rng.choice(cand)]
        aspect = np.array([1.0, *rng.uniform(0.7, 1.3, size=2)])
        d = np.sqrt(np.einsum("d...,d->...", (q - c.reshape(3, 1, 1, 1)) ** 2, 1.0 / aspect**2))
        d = d * (1.0 + 0.1 * _smooth_field(q, rng, 10.0))
        label[_nearest(d, body & (body_r < 0.85) & (label == 0), int(rng.uniform(0.003, 0.008) * n_vox))] = 2

    n_lesions = int(rng.choice(len(LESION_COUNT_P), p=LESION_COUNT_P))
    for _ in range(n_lesions):
        deep = np.flatnonzero((label == 1) & (f_org < 0.8 * tau))
        if deep.size == 0:
            deep = np.flatnonzero(label == 1)
        c = q.reshape(3, -1)[:, rng.choice(deep)]
        size = int(round(np.exp(rng.uniform(np.log(3), np.log(80)))))
        d = np.sqrt(((q - c.reshape(3, 1, 1, 1)) ** 2).sum(0)) + rng.uniform(0, 0.8, size=shape)
        label[_nearest(d, label == 1, size)] = 3

    image = np.empty((n_channels, *shape), dtype=np.float32)
    bias = 1.0 + 0.15 * _smooth_field(q, rng, float(a_body.max()))
    noise_sd = rng.uniform(5.0, 10.0)
    gain = rng.uniform(0.8, 1.25)
    for ch in range(n_channels):
        means = CLASS_MEANS[ch] + rng.normal(0.0, 6.0, size=4)
        s = means[label.astype(np.int64)] + 5.0 * _smooth_field(q, rng, 6.0)
        s = ndimage.gaussian_filter(np.where(body, s, 0.0).astype(np.float32), 0.6) * bias
        re = s + rng.normal(0.0, noise_sd, size=shape)
        im = rng.normal(0.0, noise_sd, size=shape)
        image[ch] = np.where(body, np.sqrt(re**2 + im**2) * gain, 0.0)
    affine = np.diag([*sp, 1.0])
    affine[:3, 3] = -centre * sp
    return Phantom(image, label, (float(sp[0]), float(sp[1]), float(sp[2])), affine)


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def generate_phantom_dataset(
    out_dir: Path,
    n_cases: int = 24,
    shape: Sequence[int] = (48, 48, 40),
    seed: int = 0,
    n_test: int = 0,
    n_channels: int = 1,
    spacing: Sequence[float] = (1.5, 1.5, 2.0),
    name: str = "Phantom",
) -> Path:
    """Write an nnU-Net v2 raw dataset into ``out_dir`` (the ``DatasetXXX_Name`` folder itself) and return it.

    Layout: ``dataset.json``, ``imagesTr/phantom_000_0000.nii.gz`` (float32, one file per channel),
    ``labelsTr/phantom_000.nii.gz`` (uint8), and for ``n_test > 0`` the cases ``phantom_{n_cases}...`` in
    ``imagesTs`` with their ground truth in ``labelsTs`` (not part of nnU-Net's layout; used by
    ``focusseg evaluate``). Older ``phantom_*`` files in these folders are removed so the folder holds exactly
    this dataset. Deterministic given ``seed``.
    """
    if n_cases < 1 or n_test < 0:
        raise ValueError("n_cases must be >= 1 and n_test >= 0")
    out = Path(out_dir)
    folders = {k: out / k for k in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
    for k, folder in folders.items():
        if folder.is_dir():
            for old in folder.glob("phantom_*.nii.gz"):
                old.unlink()
        if k.endswith("Tr") or n_test > 0:
            folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_cases + n_test):
        case = make_phantom(np.random.default_rng([seed, i]), shape, spacing, n_channels)
        split = "Tr" if i < n_cases else "Ts"
        cid = f"phantom_{i:03d}"
        for ch in range(n_channels):
            _save(case.image[ch], case.affine, folders[f"images{split}"] / f"{cid}_{ch:04d}.nii.gz")
        _save(case.label, case.affine, folders[f"labels{split}"] / f"{cid}.nii.gz")
    meta = {
        "name": name,
        "description": "Synthetic MR-like phantoms: body, large organ, small organs, tiny lesions (focusseg.synth).",
        "reference": "focusseg.synth.phantoms",
        "licence": "CC0",
        "tensorImageSize": "3D",
        "channel_names": CHANNEL_NAMES[n_channels],
        "labels": LABELS,
        "numTraining": n_cases,
        "numTest": n_test,
        "file_ending": ".nii.gz",
        "phantom": {"seed": seed, "shape": [int(s) for s in shape], "spacing": [float(s) for s in spacing]},
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
