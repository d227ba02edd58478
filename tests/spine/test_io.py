from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from focusseg.io import ImageReadError, discover_cases, load_dataset_spec, read_case, read_image, write_segmentation


def test_nifti_roundtrip_keeps_shape_and_affine(tmp_path: Path):
    aff = np.array([[0, -1.2, 0, 10], [0.9, 0, 0, -5], [0, 0, 3.0, 2], [0, 0, 0, 1]], dtype=float)
    arr = np.random.default_rng(0).integers(0, 3, (7, 9, 5)).astype(np.uint8)
    nib.save(nib.Nifti1Image(arr, aff), tmp_path / "a.nii.gz")
    data, geo = read_image(tmp_path / "a.nii.gz")
    assert geo.shape == (7, 9, 5)
    np.testing.assert_allclose(geo.affine, aff)
    np.testing.assert_allclose(geo.spacing, (0.9, 1.2, 3.0))
    write_segmentation(tmp_path / "b.nii.gz", data.astype(np.uint8), geo)
    back = nib.load(tmp_path / "b.nii.gz")
    np.testing.assert_allclose(back.affine, aff)
    np.testing.assert_array_equal(np.asarray(back.dataobj), arr)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp file left behind"


def test_sitk_formats_agree_with_nifti(tmp_path: Path):
    aff = np.diag([1.5, 0.8, 2.0, 1.0])
    aff[:3, 3] = [3, -4, 5]
    seg = np.random.default_rng(1).integers(0, 4, (6, 5, 4)).astype(np.uint8)
    from focusseg.io import Geometry

    geo = Geometry(aff, seg.shape)
    write_segmentation(tmp_path / "x.mha", seg, geo)
    data, g2 = read_image(tmp_path / "x.mha")
    np.testing.assert_array_equal(data.astype(np.uint8), seg)
    np.testing.assert_allclose(g2.affine, aff, atol=1e-6)


def test_write_refuses_wrong_shape(tmp_path: Path):
    from focusseg.io import Geometry

    with pytest.raises(ValueError, match="shape"):
        write_segmentation(tmp_path / "x.nii.gz", np.zeros((3, 3, 3), np.uint8), Geometry(np.eye(4), (4, 4, 4)))


def test_discover_and_stack_channels(tmp_path: Path):
    from focusseg_testdata import write_tiny_dataset

    root = write_tiny_dataset(tmp_path / "D", n_cases=2, n_channels=3)
    spec = load_dataset_spec(root)
    cases = discover_cases(root, spec)
    assert [c.case_id for c in cases] == ["case000", "case001"]
    img, lab, geo = read_case(list(cases[0].images), cases[0].label)
    assert img.shape == (3, 20, 24, 16) and lab.shape == (20, 24, 16)
    assert geo.spacing == pytest.approx((1.5, 1.0, 2.0))
    assert spec.n_classes == 3 and spec.foreground_labels == [1, 2]


def test_msd_layout(tmp_path: Path):
    import json

    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    img = np.random.default_rng(0).normal(size=(5, 6, 7, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(img, np.eye(4)), tmp_path / "imagesTr" / "c1.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7), np.uint8), np.eye(4)), tmp_path / "labelsTr" / "c1.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({
        "name": "msd", "modality": {"0": "FLAIR", "1": "T1"}, "labels": {"0": "background", "1": "x"},
        "training": [{"image": "./imagesTr/c1.nii.gz", "label": "./labelsTr/c1.nii.gz"}]}))
    spec = load_dataset_spec(tmp_path)
    assert spec.layout == "msd" and spec.n_channels == 2
    (case,) = discover_cases(tmp_path, spec)
    image, label, _ = read_case(list(case.images), case.label)
    assert image.shape == (2, 5, 6, 7)
    np.testing.assert_allclose(image[1], img[..., 1])


def test_read_case_refuses_nan_and_mismatch(tmp_path: Path):
    a = np.ones((4, 4, 4), np.float32)
    a[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(a, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(ImageReadError, match="NaN"):
        read_case([tmp_path / "nan.nii.gz"])
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), tmp_path / "ok.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 5), np.uint8), np.eye(4)), tmp_path / "lab.nii.gz")
    with pytest.raises(ImageReadError, match="lab.nii.gz"):
        read_case([tmp_path / "ok.nii.gz"], tmp_path / "lab.nii.gz")
