"""Post-processing chosen per region (nnU-Net's region-based training): component steps on region masks, and a
selection that keeps a step only when it lowers no other region's Dice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from focusseg.inference.postprocess import apply_postprocessing, keep_largest_component, remove_small_components
from focusseg.inference.postprocess_selection import choose_postprocessing, choose_postprocessing_for_run

WT, TC = [1, 2], [2]  # nested regions: "whole" = {1, 2} contains "core" = {2}


def _tumour() -> np.ndarray:
    """A 24^3 reference: a 8^3 label-1 lesion with a 4^3 label-2 core, and a separate 3^3 label-2 lesion."""
    ref = np.zeros((24, 24, 24), np.int16)
    ref[2:10, 2:10, 2:10] = 1
    ref[4:8, 4:8, 4:8] = 2
    ref[18:21, 18:21, 18:21] = 2
    return ref


def test_region_masks_remove_every_label_of_a_stray_component():
    seg = _tumour()
    out = keep_largest_component(seg, regions=[WT])
    assert (out[18:21, 18:21, 18:21] == 0).all()  # the smaller whole-tumour component goes, label 2 and all
    np.testing.assert_array_equal(out[:12, :12, :12], seg[:12, :12, :12])
    np.testing.assert_array_equal(seg, _tumour())  # input untouched
    # per label, the separate label-2 lesion is smaller than the core and goes too, but label 1 is never touched
    per_label = keep_largest_component(seg, labels=[2])
    assert (per_label[4:8, 4:8, 4:8] == 2).all() and (per_label[18:21, 18:21, 18:21] == 0).all()
    small = remove_small_components(seg, 30, regions=[TC])
    assert (small[18:21, 18:21, 18:21] == 0).all() and (small[4:8, 4:8, 4:8] == 2).all()
    with pytest.raises(ValueError, match="labels or regions"):
        keep_largest_component(seg, labels=[1], regions=[WT])
    with pytest.raises(ValueError, match="non-empty"):
        keep_largest_component(seg, regions=[[]])


def test_a_false_positive_in_both_regions_is_removed():
    ref = _tumour()[:12]  # only the lesion with its core
    pred = ref.copy()
    pred[8:10, 20:22, 20:22] = 2  # a false positive, in both regions
    res = choose_postprocessing([pred], [ref], [1, 2], regions=[WT, TC])
    assert res["regions"] == [WT, TC]
    assert res["steps"][0] == {"name": "keep_largest_component", "regions": [[1, 2]]}  # the whole foreground
    assert res["dice_before"][1] < 1 and res["dice_before"][2] < 1
    assert res["dice_after"] == {1: 1.0, 2: 1.0}
    np.testing.assert_array_equal(apply_postprocessing(pred, res["steps"]), ref)
    assert res["not_for_regions"] == [{"name": "erode", "iterations": 1}, {"name": "dilate", "iterations": 1}]


def test_a_step_that_helps_one_region_but_lowers_another_is_not_kept():
    """nnU-Net keeps a region's step when that region's Dice rises; here it is kept only when no other falls."""
    ref = _tumour()
    pred = ref.copy()
    pred[14:19, 2:7, 2:7] = 1  # a 125-voxel false positive of label 1 (whole tumour only)
    res = choose_postprocessing([pred], [ref], [1, 2], regions=[WT, TC])
    wt_largest = [t for t in res["trials"] if t["label"] == 1 and t["step"]["name"] == "keep_largest_component"]
    assert len(wt_largest) == 1
    t = wt_largest[0]
    assert t["dice_after"] > t["dice_before"]  # whole tumour gains (125 FP voxels out, 27 TP voxels lost) ...
    assert t["lowers_other_regions"] == [2] and not t["accepted"]  # ... but the core loses its second lesion
    assert res["steps"] == [] and res["dice_after"] == res["dice_before"]
    fg = [t for t in res["trials"] if t["label"] == "foreground"]
    assert len(fg) == 1 and fg[0]["lowers_other_regions"] == [2] and not fg[0]["accepted"]


def test_ignored_voxels_do_not_count_for_region_dice():
    ref = _tumour()[:12]
    pred = ref.copy()
    pred[8:10, 20:22, 20:22] = 2  # a false positive ...
    ref = ref.copy()
    ref[6:12, 18:24, 18:24] = 9  # ... where the reference is not annotated
    res = choose_postprocessing([pred], [ref], [1, 2], ignore_label=9, regions=[WT, TC])
    assert res["dice_before"] == {1: 1.0, 2: 1.0} and res["steps"] == [] and res["ignore_label"] == 9


def test_a_run_chooses_per_region_from_its_plan(tmp_path: Path):
    import nibabel as nib

    run = tmp_path / "run"
    for sub in ("predictions", "reference"):
        (run / "validation" / sub).mkdir(parents=True)
    ref = _tumour()[:12]
    pred = ref.copy()
    pred[8:10, 20:22, 20:22] = 2
    for sub, arr in (("predictions", pred), ("reference", ref)):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), run / "validation" / sub / "case_0.nii.gz")
    (run / "plan.json").write_text(json.dumps({"regions": [WT, TC], "labels": {"background": 0, "a": 1, "b": 2}}))
    res = choose_postprocessing_for_run(run, [1, 2])
    assert res["regions"] == [WT, TC] and res["steps"] and res["dice_after"] == {1: 1.0, 2: 1.0}
    saved = json.loads((run / "postprocessing.json").read_text())
    assert saved["steps"] == res["steps"]
