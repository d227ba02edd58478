"""Phantom generator: files, geometry, labels, class fractions, intensities, determinism, speed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from focusseg.synth import LABELS, generate_phantom_dataset, make_phantom

SMALL = (32, 32, 24)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_phantom_dataset(tmp_path_factory.mktemp("raw") / "Dataset900_Phantom", n_cases=3,
                                    shape=SMALL, seed=5, n_test=1)


@pytest.fixture(scope="module")
def phantoms() -> list:
    """16 cases at the default size (about 0.7 s)."""
    return [make_phantom(np.random.default_rng([0, i])) for i in range(16)]


def test_layout_and_dataset_json(dataset: Path) -> None:
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MR"}
    assert meta["labels"] == {"background": 0, "organ": 1, "small_organ": 2, "lesion": 3} == LABELS
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (dataset / "imagesTr").iterdir()) == [
        f"phantom_{i:03d}_0000.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (dataset / "labelsTr").iterdir()) == [f"phantom_{i:03d}.nii.gz" for i in range(3)]
    assert [p.name for p in (dataset / "imagesTs").iterdir()] == ["phantom_003_0000.nii.gz"]
    assert [p.name for p in (dataset / "labelsTs").iterdir()] == ["phantom_003.nii.gz"]


def test_files_geometry_and_dtypes(dataset: Path) -> None:
    for i in range(3):
        img = nib.load(dataset / "imagesTr" / f"phantom_{i:03d}_0000.nii.gz")
        lab = nib.load(dataset / "labelsTr" / f"phantom_{i:03d}.nii.gz")
        assert img.shape == lab.shape == SMALL
        assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
        assert np.allclose(img.header.get_zooms()[:3], (1.5, 1.5, 2.0))
        np.testing.assert_allclose(img.affine, lab.affine)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        x, y = np.asarray(img.dataobj), np.asarray(lab.dataobj)
        assert set(np.unique(y).tolist()) <= {0, 1, 2, 3} and (y == 1).any()
        assert np.isfinite(x).all() and (x >= 0).all()
        assert (y[x == 0] == 0).all() and (x[y > 0] > 0).all()  # air is exactly 0 and holds no labels


def test_lead_io_reads_it_without_problems(dataset: Path) -> None:
    """The dataset passes focusseg.io's discovery and checks (train and test split)."""
    from focusseg.data.check import check_case
    from focusseg.io.dataset import discover_cases, load_dataset_spec

    spec = load_dataset_spec(dataset)
    assert spec.n_channels == 1 and spec.n_classes == 4
    cases = discover_cases(dataset, spec)
    assert len(cases) == 3 and len(discover_cases(dataset, spec, split="Ts")) == 1
    for case in cases:
        assert check_case(case, spec) == []


def test_class_fractions_in_intended_ranges(phantoms: list) -> None:
    n_lesion_cases = 0
    for ph in phantoms:
        frac = np.bincount(ph.label.ravel(), minlength=4) / ph.label.size
        assert 0.05 <= frac[1] + frac[3] <= 0.105  # large organ (lesions lie inside it)
        assert 0.003 <= frac[2] <= 0.016  # one or two small organs of 0.3-0.8 % each
        assert frac[3] <= 0.0025  # at most 4 lesions of at most 80 voxels
        if frac[3] > 0:
            n_lesion_cases += 1
            assert frac[3] >= 3 / ph.label.size
        body = ph.image[0] > 0
        assert 0.2 < body.mean() < 0.35
        box = ndimage.find_objects(body.astype(np.int8))[0]
        assert np.prod([s.stop - s.start for s in box]) / body.size < 0.7  # cropping to non-zero pays
    assert 8 <= n_lesion_cases < len(phantoms)  # some cases have no lesion
    lesion = np.array([np.mean(ph.label == 3) for ph in phantoms])
    assert 1e-4 <= lesion.mean() <= 1e-3  # ~0.01-0.1 % on average
    assert 0.05 <= np.mean([np.mean(ph.label == 1) for ph in phantoms]) <= 0.1


def test_shapes_are_connected_and_lesions_inside_organ(phantoms: list) -> None:
    full = np.ones((3, 3, 3))
    for ph in phantoms[:8]:
        organ_or_lesion = np.isin(ph.label, (1, 3))
        assert ndimage.label(organ_or_lesion, structure=full)[1] == 1
        lesions = ph.label == 3
        if lesions.any():  # lesions grow inside the organ: their one-voxel ring is mostly organ
            ring = ndimage.binary_dilation(lesions, structure=full) & ~lesions
            assert np.mean(ph.label[ring] == 1) > 0.6


def test_class_intensities_differ_but_overlap(phantoms: list) -> None:
    means = np.array([[ph.image[0][ph.label == k].mean() if (ph.label == k).any() else np.nan
                       for k in range(1, 4)] for ph in phantoms])
    tissue = np.array([ph.image[0][(ph.label == 0) & (ph.image[0] > 0)].mean() for ph in phantoms])
    organ, small, lesion = np.nanmean(means, axis=0)
    assert np.nanmean(lesion) < tissue.mean() < organ < small
    ph = phantoms[0]
    t, o = ph.image[0][(ph.label == 0) & (ph.image[0] > 0)], ph.image[0][ph.label == 1]
    assert np.percentile(t, 99) > np.percentile(o, 1)  # intensity ranges overlap


def test_determinism_and_case_independence(tmp_path: Path) -> None:
    a = make_phantom(np.random.default_rng([3, 1]), SMALL)
    b = make_phantom(np.random.default_rng([3, 1]), SMALL)
    c = make_phantom(np.random.default_rng([4, 1]), SMALL)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)
    d1 = generate_phantom_dataset(tmp_path / "one", n_cases=2, shape=SMALL, seed=3)
    d2 = generate_phantom_dataset(tmp_path / "two", n_cases=3, shape=SMALL, seed=3)
    for name in ("imagesTr/phantom_001_0000.nii.gz", "labelsTr/phantom_001.nii.gz"):
        assert np.array_equal(np.asarray(nib.load(d1 / name).dataobj), np.asarray(nib.load(d2 / name).dataobj))
    assert np.array_equal(np.asarray(nib.load(d1 / "imagesTr/phantom_001_0000.nii.gz").dataobj), a.image[0])


def test_regenerating_removes_stale_cases_and_two_channels(tmp_path: Path) -> None:
    out = generate_phantom_dataset(tmp_path / "ds", n_cases=3, shape=SMALL, n_test=2)
    out = generate_phantom_dataset(out, n_cases=2, shape=SMALL, n_channels=2)
    assert len(list((out / "labelsTr").iterdir())) == 2 and not list((out / "imagesTs").iterdir())
    assert len(list((out / "imagesTr").iterdir())) == 4
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T2"} and meta["numTraining"] == 2
    t1 = np.asarray(nib.load(out / "imagesTr/phantom_000_0000.nii.gz").dataobj)
    t2 = np.asarray(nib.load(out / "imagesTr/phantom_000_0001.nii.gz").dataobj)
    assert np.array_equal(t1 > 0, t2 > 0) and not np.allclose(t1, t2)
    with pytest.raises(ValueError):
        make_phantom(np.random.default_rng(0), SMALL, n_channels=3)
    with pytest.raises(ValueError):
        generate_phantom_dataset(tmp_path / "bad", n_cases=0)


def test_default_dataset_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    generate_phantom_dataset(tmp_path / "ds")  # 24 cases of 48 x 48 x 40
    assert time.perf_counter() - start < 15.0  # ~2 s alone; generous for a shared 2-core machine
    assert len(list((tmp_path / "ds" / "labelsTr").iterdir())) == 24
