"""BraTS 2015 subset with the standard regions (WT / TC / ET): a few iterations train, validate per region and
predict back to BraTS label values (slow, real data; the shared data is only linked, never modified)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from focusseg_testdata import shared_dataset

REGIONS = {"background": 0, "whole_tumor": [1, 2, 3, 4], "tumor_core": [1, 3, 4], "enhancing_tumor": 4}


@pytest.mark.slow
@pytest.mark.realdata
def test_brats_regions_train_a_few_iterations(tmp_path: Path, monkeypatch):
    from focusseg.workflows.train import run_training

    source = shared_dataset("Dataset102_BraTS2015Subset")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = tmp_path / "Dataset102r_BraTSRegions"
    data.mkdir()
    ds = json.loads((source / "dataset.json").read_text())
    ds["labels"], ds["regions_class_order"] = REGIONS, [2, 1, 4]
    (data / "dataset.json").write_text(json.dumps(ds))
    for sub in ("imagesTr", "labelsTr"):
        (data / sub).symlink_to(source / sub, target_is_directory=True)
    over = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
            "patch_size": [48, 48, 48], "batch_size": 2,
            "training": {"max_epochs": 1, "iterations_per_epoch": 3, "amp": "none", "val_patches": 2},
            "inference": {"mirror_axes": []}}
    summary = run_training(data, tmp_path / "run", fold=0, overrides=over, progress=False, device="cpu")
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["regions"] == [[1, 2, 3, 4], [1, 3, 4], [4]] and plan["n_classes"] == 5
    assert summary["iterations"] == 3
    final = summary["final_validation"]
    assert set(final["dice_per_label"]) == {"1", "2", "3"}
    val = json.loads(Path(final["summary_json"]).read_text())
    assert val["region_names"] == ["whole_tumor", "tumor_core", "enhancing_tumor"]
    import nibabel as nib
    import numpy as np

    for f in (tmp_path / "run" / "validation" / "predictions").glob("*.nii.gz"):
        assert set(np.unique(np.asarray(nib.load(f).dataobj)).tolist()) <= {0, 1, 2, 4}
