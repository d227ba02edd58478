import math

import numpy as np
import pytest

from focusseg.metrics.autopet import false_negative_volume, false_positive_volume, fp_pet_score, voxel_volume_ml
from focusseg.metrics.lesion import lesion_metrics

SPACING = (2.0, 2.0, 3.0)  # 12 mm^3 = 0.012 ml per voxel


def empty():
    return np.zeros((16, 16, 16), bool)


def test_voxel_volume_and_score():
    assert voxel_volume_ml(SPACING) == pytest.approx(0.012)
    assert fp_pet_score(0.8, 1.5, 0.5) == pytest.approx(0.6)


def test_corner_touching_lesions_use_18_connectivity():
    gt, pred = empty(), empty()
    gt[2:4, 2:4, 2:4] = True  # lesion A, 8 voxels
    gt[4:6, 4:6, 4:6] = True  # lesion B, 8 voxels, touches A only at a corner
    pred[2:4, 2:4, 2:4] = True  # finds A only
    assert false_negative_volume(pred, gt, SPACING) == pytest.approx(8 * 0.012)  # 18-conn: B separate
    assert false_negative_volume(pred, gt, SPACING, connectivity=26) == 0.0  # 26-conn: one lesion, touched
    assert false_positive_volume(pred, gt, SPACING) == 0.0
    les18 = lesion_metrics(pred, gt, connectivity=18)
    les26 = lesion_metrics(pred, gt, connectivity=26)
    assert (les18.tp, les18.fn, les18.n_gt) == (1, 1, 2) and (les26.tp, les26.fn, les26.n_gt) == (1, 0, 1)


def test_face_touching_lesions_merge_at_every_connectivity():
    gt = empty()
    gt[2:4, 2:4, 2:4] = True
    gt[4:6, 2:4, 2:4] = True
    for c in (6, 18, 26):
        assert lesion_metrics(gt, gt, connectivity=c).n_gt == 1


def test_lesion_split_in_two_by_the_prediction():
    gt, pred = empty(), empty()
    gt[2:8, 2:8, 2:8] = True  # 216 voxels
    pred[2:4, 2:8, 2:8] = True
    pred[6:8, 2:8, 2:8] = True  # two components, 144 voxels, all inside the lesion
    s = lesion_metrics(pred, gt)
    assert (s.tp, s.fp, s.fn, s.n_gt, s.n_pred) == (1, 0, 0, 1, 2)
    assert s.precision == 1.0 and s.recall == 1.0 and s.f1 == 1.0 and s.count_difference == 1
    assert s.lesion_dice == pytest.approx(2 * 144 / (216 + 144))
    assert false_positive_volume(pred, gt, SPACING) == 0.0 and false_negative_volume(pred, gt, SPACING) == 0.0


def test_missed_lesion_and_false_positive():
    gt, pred = empty(), empty()
    gt[2:8, 2:8, 2:8] = True
    pred[2:8, 2:8, 2:5] = True  # covers half of lesion 1 (108 voxels)
    gt[12:14, 12:14, 12:14] = True  # lesion 2 missed (8 voxels)
    pred[12:15, 2:4, 2:4] = True  # FP, 12 voxels
    s = lesion_metrics(pred, gt)
    assert (s.tp, s.fp, s.fn) == (1, 1, 1)
    assert s.precision == 0.5 and s.recall == 0.5 and s.f1 == 0.5
    assert s.lesion_dice == pytest.approx((2 * 108 / (216 + 108) + 0 + 0) / 3)
    assert false_positive_volume(pred, gt, SPACING) == pytest.approx(12 * 0.012)
    assert false_negative_volume(pred, gt, SPACING) == pytest.approx(8 * 0.012)
    strict = lesion_metrics(pred, gt, min_overlap=0.6)  # half coverage is not enough any more
    assert (strict.tp, strict.fn) == (0, 2)


def test_one_component_merging_two_lesions():
    gt, pred = empty(), empty()
    gt[2:4, 2:4, 2:4] = True
    gt[2:4, 6:8, 2:4] = True
    pred[2:4, 2:8, 2:4] = True  # bridges both
    s = lesion_metrics(pred, gt)
    assert (s.tp, s.fp, s.fn, s.n_pred) == (2, 0, 0, 1) and s.f1 == 1.0
    assert s.lesion_dice == pytest.approx(2 * 8 / (8 + 24))


def test_empty_ground_truth_and_empty_prediction():
    gt, pred = empty(), empty()
    pred[3:5, 3:5, 3:5] = True
    neg = lesion_metrics(pred, gt)
    assert (neg.tp, neg.fp, neg.fn) == (0, 1, 0) and neg.f1 == 0.0 and neg.lesion_dice == 0.0
    assert neg.precision == 0.0 and math.isnan(neg.recall)
    assert false_positive_volume(pred, gt, SPACING) == pytest.approx(8 * 0.012)
    assert false_negative_volume(pred, gt, SPACING) == 0.0
    miss = lesion_metrics(gt, pred)  # roles swapped: GT has a lesion, prediction empty
    assert (miss.tp, miss.fp, miss.fn) == (0, 0, 1) and miss.f1 == 0.0 and miss.lesion_dice == 0.0
    assert false_positive_volume(gt, pred, SPACING) == 0.0
    both = lesion_metrics(gt, gt)
    assert math.isnan(both.f1) and math.isnan(both.lesion_dice) and both.count_difference == 0
    assert lesion_metrics(gt, gt, both_empty=1.0).lesion_dice == 1.0


def test_bad_arguments():
    with pytest.raises(ValueError):
        lesion_metrics(empty(), empty(), connectivity=8)
    with pytest.raises(ValueError):
        lesion_metrics(empty(), empty(), min_overlap=1.0)
    with pytest.raises(ValueError):
        lesion_metrics(empty(), np.zeros((3, 3, 3), bool))
