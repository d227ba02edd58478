"""Formats end to end (issue 16 part 1): a `.mha` dataset checks, trains, validates (the final validation) and
predicts; `predict --output-format nifti|nrrd|mha` writes the same segmentation with the input's geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from focusseg_testdata import write_tiny_dataset

pytest.importorskip("SimpleITK")

TINY = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 2, "iterations_per_epoch": 3, "augmentation": "light", "amp": "none"},
        "inference": {"mirror_axes": []}}


def _as_mha(src: Path, dst: Path) -> Path:
    """A copy of a NIfTI dataset folder in .mha (images float32, labels uint8, geometry kept)."""
    from focusseg.io import read_image, write_image, write_segmentation

    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        if not (src / sub).is_dir():
            continue
        for f in sorted((src / sub).glob("*.nii.gz")):
            arr, geo = read_image(f)
            out = dst / sub / f.name.replace(".nii.gz", ".mha")
            if sub == "labelsTr":
                write_segmentation(out, arr.astype(np.uint8), geo)
            else:
                write_image(out, arr.astype(np.float32), geo)
    spec = json.loads((src / "dataset.json").read_text())
    spec["file_ending"] = ".mha"
    (dst / "dataset.json").write_text(json.dumps(spec))
    return dst


def test_mha_dataset_trains_validates_and_predicts_in_every_format(tmp_path: Path):
    from focusseg.cli import main
    from focusseg.io import read_image

    torch.set_num_threads(1)
    nifti = write_tiny_dataset(tmp_path / "N", n_cases=5, with_test=True)
    data = _as_mha(nifti, tmp_path / "M")
    assert main(["check", str(data)]) == 0
    run = tmp_path / "run"
    (tmp_path / "tiny.json").write_text(json.dumps({"name": "tiny", "plan": TINY}))
    assert main(["train", str(data), "--out", str(run), "--recipe", str(tmp_path / "tiny.json"), "--no-progress",
                 "--device", "cpu"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_validation"]["mean_dice"] is not None  # the final validation read .mha references
    assert sorted(p.suffix for p in (run / "validation" / "predictions").iterdir()) == [".mha"]
    segs = {}
    for fmt, ending in (("default", ".mha"), ("nifti", ".nii.gz"), ("nrrd", ".nrrd"), ("mha", ".mha")):
        out = tmp_path / f"pred_{fmt}"
        extra = [] if fmt == "default" else ["--output-format", fmt]
        assert main(["predict", str(run), str(data / "imagesTs"), str(out), "--device", "cpu", *extra]) == 0
        files = sorted(out.iterdir())
        assert files and all(f.name.endswith(ending) for f in files), files
        segs[fmt] = {f.name[: -len(ending)]: read_image(f, dtype=np.int16) for f in files}
    for case, (ref_img, ref_geo) in segs["default"].items():
        src = read_image(data / "imagesTs" / f"{case}_0000.mha")[1]
        assert ref_geo.matches(src)  # the input's spacing, origin and direction
        for fmt in ("nifti", "nrrd", "mha"):
            img, geo = segs[fmt][case]
            assert geo.matches(src, atol=1e-4), (fmt, geo.affine, src.affine)
            np.testing.assert_array_equal(img, ref_img)
    assert main(["predict", str(run), str(data / "imagesTs"), str(tmp_path / "bad"), "--output-format", "png"]) == 2
    # evaluate reads .mha predictions against .mha references
    assert main(["evaluate", str(run / "validation" / "predictions"), str(run / "validation" / "reference"), "--out",
                 str(tmp_path / "eval")]) == 0
