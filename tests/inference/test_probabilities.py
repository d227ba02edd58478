"""Saved probabilities and `focusseg ensemble` (issue 16 part 4): float16 class probabilities on the original grid
with the geometry, never unpickled; the ensemble of saved folders is the argmax of their weighted mean."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from focusseg_testdata import write_tiny_dataset

from focusseg.errors import DatasetError
from focusseg.inference.probabilities import SUFFIX, ensemble_folders, load_probabilities, save_probabilities
from focusseg.io.geometry import Geometry

TINY = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 2, "iterations_per_epoch": 3, "augmentation": "light", "amp": "none"},
        "inference": {"mirror_axes": [0], "postprocessing": []}}


def test_round_trip_and_refusals(tmp_path: Path):
    rng = np.random.default_rng(0)
    p = rng.random((3, 5, 6, 7)).astype(np.float32)
    p /= p.sum(0)
    affine = np.diag([0.8, 1.0, 2.5, 1.0])
    affine[:3, 3] = [10, -4, 3]
    geo = Geometry(affine, (5, 6, 7))
    path = save_probabilities(tmp_path / f"a{SUFFIX}", p, geo, [0, 1, 3], ".nii.gz")
    q, g, labels, ending, kind = load_probabilities(path)
    assert q.dtype == np.float32 and np.abs(q - p).max() < 1e-3  # float16
    assert g.matches(geo) and labels == [0, 1, 3] and ending == ".nii.gz" and kind == "softmax"
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no temporary left
    # a pickled object array is never loaded; other archives and non-finite values are refused
    np.savez(tmp_path / "evil.npz", probabilities=np.array([object()], dtype=object), affine=affine,
             shape=np.array([5, 6, 7]), labels=np.array([0]), ending=np.array(".nii.gz"))
    with pytest.raises(DatasetError, match="unreadable"):
        load_probabilities(tmp_path / "evil.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DatasetError, match="missing"):
        load_probabilities(tmp_path / "other.npz")
    p[0, 0, 0, 0] = np.nan
    save_probabilities(tmp_path / f"nan{SUFFIX}", p, geo, [0, 1, 3], ".nii.gz")
    with pytest.raises(DatasetError, match="NaN"):
        load_probabilities(tmp_path / f"nan{SUFFIX}")
    (tmp_path / f"cut{SUFFIX}").write_bytes(path.read_bytes()[:50])
    with pytest.raises(DatasetError, match="unreadable"):
        load_probabilities(tmp_path / f"cut{SUFFIX}")


def test_files_without_a_kind_read_as_softmax_and_unknown_kinds_are_refused(tmp_path: Path):
    geo = Geometry(np.eye(4), (2, 3, 4))
    p = np.full((2, 2, 3, 4), 0.5, np.float32)
    np.savez(tmp_path / f"old{SUFFIX}", probabilities=p.astype(np.float16), affine=geo.affine,
             shape=np.array(geo.shape), labels=np.array([0, 1]), ending=np.array(".nii.gz"))
    assert load_probabilities(tmp_path / f"old{SUFFIX}")[4] == "softmax"
    np.savez(tmp_path / f"odd{SUFFIX}", probabilities=p.astype(np.float16), affine=geo.affine,
             shape=np.array(geo.shape), labels=np.array([0, 1]), ending=np.array(".nii.gz"), kind=np.array("logits"))
    with pytest.raises(DatasetError, match="unknown kind 'logits'"):
        load_probabilities(tmp_path / f"odd{SUFFIX}")
    with pytest.raises(ValueError, match="kind"):
        save_probabilities(tmp_path / f"x{SUFFIX}", p, geo, [0, 1], ".nii.gz", kind="logits")


def test_region_probabilities_ensemble_by_threshold_and_paint_order(tmp_path: Path):
    """Region files hold one sigmoid per region (channels overlap, they do not sum to 1): the ensemble thresholds
    the weighted mean at 0.5 and paints regions_class_order in order, as predict does; an argmax over the
    channels would give every voxel a label and mislabel nested regions."""
    from focusseg.regions import regions_to_labels

    rng = np.random.default_rng(3)
    geo = Geometry(np.diag([1.0, 1.2, 3.0, 1.0]), (6, 7, 5))
    order = [2, 1, 4]  # BraTS: whole tumour paints edema 2, core paints 1, enhancing paints 4
    a = rng.random((3, *geo.shape)).astype(np.float32)
    b = rng.random((3, *geo.shape)).astype(np.float32)
    for name, probs in (("pa", a), ("pb", b)):
        (tmp_path / name).mkdir()
        save_probabilities(tmp_path / name / f"c1{SUFFIX}", probs, geo, order, ".nii.gz", kind="regions")
    assert load_probabilities(tmp_path / "pa" / f"c1{SUFFIX}")[2:] == (order, ".nii.gz", "regions")
    ensemble_folders([tmp_path / "pa", tmp_path / "pb"], tmp_path / "ens", weights=[3, 1],
                     save_probabilities_too=True, progress=False)
    qa = load_probabilities(tmp_path / "pa" / f"c1{SUFFIX}")[0]
    qb = load_probabilities(tmp_path / "pb" / f"c1{SUFFIX}")[0]
    mean = (3 * qa + qb) / 4
    got = np.asarray(nib.load(tmp_path / "ens" / "c1.nii.gz").dataobj)
    np.testing.assert_array_equal(got, regions_to_labels(mean > 0.5, order))
    assert set(np.unique(got)) <= {0, 1, 2, 4} and (got == 0).any()  # background where no region passes 0.5
    assert load_probabilities(tmp_path / "ens" / f"c1{SUFFIX}")[4] == "regions"
    # a region folder is never mixed with a softmax one
    (tmp_path / "soft").mkdir()
    save_probabilities(tmp_path / "soft" / f"c1{SUFFIX}", a / a.sum(0), geo, [0, 1, 2], ".nii.gz")
    with pytest.raises(DatasetError, match="softmax probabilities, but regions"):
        ensemble_folders([tmp_path / "pa", tmp_path / "soft"], tmp_path / "mixed", progress=False)


def test_saved_probabilities_match_the_segmentation_and_ensemble(tmp_path: Path):
    from focusseg.cli import main
    from focusseg.workflows.train import run_training

    torch.set_num_threads(1)
    data = write_tiny_dataset(tmp_path / "D", n_cases=4, with_test=True)
    wide = {**TINY, "network": {**TINY["network"], "channels": [8, 16, 16]}}
    for name, plan in (("a", TINY), ("b", wide)):
        run_training(data, tmp_path / name, overrides=plan, progress=False, final_validation=False, check=False)
        assert main(["predict", str(tmp_path / name), str(data / "imagesTs"), str(tmp_path / f"p{name}"),
                     "--save-probabilities", "--device", "cpu"]) == 0
    segs = sorted(p for p in (tmp_path / "pa").iterdir() if p.name.endswith(".nii.gz"))
    assert segs
    for seg_path in segs:
        case = seg_path.name[: -len(".nii.gz")]
        probs, geo, labels, ending, kind = load_probabilities(tmp_path / "pa" / f"{case}{SUFFIX}")
        img = nib.load(seg_path)
        seg = np.asarray(img.dataobj)
        assert probs.shape == (3, *seg.shape) and labels == [0, 1, 2] and ending == ".nii.gz" and kind == "softmax"
        assert np.allclose(geo.affine, img.affine) and np.abs(probs.sum(0) - 1).max() < 1e-2
        agree = (probs.argmax(0) == seg).mean()  # float16 may flip a near tie
        assert agree > 0.999, agree
    # the ensemble of a folder with itself is its own argmax; of two runs, the argmax of the mean
    assert main(["ensemble", str(tmp_path / "pa"), str(tmp_path / "pb"), "--out", str(tmp_path / "ens"),
                 "--weights", "2,1"]) == 0
    for seg_path in segs:
        case = seg_path.name[: -len(".nii.gz")]
        pa, geo, _, _, _ = load_probabilities(tmp_path / "pa" / f"{case}{SUFFIX}")
        pb, _, _, _, _ = load_probabilities(tmp_path / "pb" / f"{case}{SUFFIX}")
        got = nib.load(tmp_path / "ens" / seg_path.name)
        assert np.allclose(got.affine, geo.affine)
        np.testing.assert_array_equal(np.asarray(got.dataobj), ((2 * pa + pb) / 3).argmax(0))
    written = ensemble_folders([tmp_path / "pa", tmp_path / "pa"], tmp_path / "self", progress=False)
    assert len(written) == len(segs)
    # refused in one line: different cases, output inside an input, a single folder
    (tmp_path / "pc").mkdir()
    first = next((tmp_path / "pa").glob(f"*{SUFFIX}"))
    (tmp_path / "pc" / first.name).write_bytes(first.read_bytes())
    if len(segs) > 1:
        assert main(["ensemble", str(tmp_path / "pa"), str(tmp_path / "pc"), "--out", str(tmp_path / "x")]) == 1
    assert main(["ensemble", str(tmp_path / "pa"), str(tmp_path / "pb"), "--out", str(tmp_path / "pa" / "e")]) == 2
    assert main(["ensemble", str(tmp_path / "pa"), "--out", str(tmp_path / "y")]) == 2
