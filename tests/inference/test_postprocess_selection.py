"""Post-processing is chosen on validation, per class, and only kept where it raises the class's Dice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from focusseg.inference.postprocess import apply_postprocessing
from focusseg.inference.postprocess_selection import (
    choose_postprocessing,
    choose_postprocessing_for_run,
    load_run_postprocessing,
)


def _cases(n: int = 3) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """References with a class-1 box and a class-2 box; predictions = references + a spurious class-1 blob far
    away (largest-component removes it), and class 2 eroded by one voxel (dilation restores most of it)."""
    from scipy import ndimage

    refs, preds = [], []
    for i in range(n):
        ref = np.zeros((40, 40, 30), np.int16)
        ref[5 + i : 18 + i, 5:18, 5:15] = 1
        ref[22:35, 20:34, 10:24] = 2
        pred = ref.copy()
        pred[2:5, 30:34, 25:28] = 1  # spurious component of class 1
        m2 = ref == 2
        pred[m2 & ~ndimage.binary_erosion(m2)] = 0  # class 2 one voxel too thin
        refs.append(ref)
        preds.append(pred)
    return preds, refs


def test_choice_per_class_raises_dice_and_records_every_trial():
    preds, refs = _cases()
    res = choose_postprocessing(preds, refs, [1, 2])
    chosen = {s["labels"][0]: s["name"] for s in res["steps"]}
    assert chosen[1] in ("keep_largest_component", "remove_small_components") and chosen[2] == "dilate"
    assert res["dice_after"][1] > res["dice_before"][1] and res["dice_after"][2] > res["dice_before"][2]
    assert len(res["trials"]) == 2 * 5 and sum(t["accepted"] for t in res["trials"]) == 2
    # applying the chosen steps reproduces the reported Dice
    from focusseg.metrics import dice_per_class

    out = [apply_postprocessing(p, res["steps"]) for p in preds]
    for lab in (1, 2):
        d = np.mean([dice_per_class(o, r, [lab])[lab] for o, r in zip(out, refs)])
        assert d == pytest.approx(res["dice_after"][lab])


def test_nothing_is_chosen_when_no_step_helps():
    _, refs = _cases()
    res = choose_postprocessing([r.copy() for r in refs], refs, [1, 2])
    assert res["steps"] == [] and res["dice_after"] == res["dice_before"] == {1: 1.0, 2: 1.0}
    # a required gain the candidates cannot reach keeps nothing either
    preds, refs = _cases()
    assert choose_postprocessing(preds, refs, [1, 2], min_gain=0.5)["steps"] == []


def test_bad_input_is_refused():
    preds, refs = _cases(2)
    with pytest.raises(ValueError, match="matching"):
        choose_postprocessing(preds, refs[:1], [1])
    with pytest.raises(ValueError, match="differ in shape"):
        choose_postprocessing([preds[0][:10]], [refs[0]], [1])


def test_run_folder_roundtrip_and_plan_override(tmp_path: Path):
    import nibabel as nib

    preds, refs = _cases(2)
    for sub, arrs in (("predictions", preds), ("reference", refs)):
        (tmp_path / "validation" / sub).mkdir(parents=True)
        for i, a in enumerate(arrs):
            nib.save(nib.Nifti1Image(a, np.eye(4)), tmp_path / "validation" / sub / f"c{i}.nii.gz")
    res = choose_postprocessing_for_run(tmp_path, [1, 2])
    saved = json.loads((tmp_path / "postprocessing.json").read_text())
    assert saved["steps"] == res["steps"] and saved["cases"] == ["c0.nii.gz", "c1.nii.gz"]
    assert load_run_postprocessing(tmp_path, {"inference": {}}) == res["steps"]  # default "auto"
    fixed = [{"name": "keep_largest_component"}]
    assert load_run_postprocessing(tmp_path, {"inference": {"postprocessing": fixed}}) == fixed
    assert load_run_postprocessing(tmp_path, {"inference": {"postprocessing": "none"}}) == []
    with pytest.raises(FileNotFoundError, match="no validation predictions"):
        choose_postprocessing_for_run(tmp_path / "empty", [1])
