import math

import numpy as np
import pytest

from focusseg.metrics.conventions import CONVENTIONS, Convention, get_convention
from focusseg.metrics.overlap import confusion_counts, dice_per_class, label_boxes, overlap_metrics


def test_counts_and_metrics_by_hand():
    gt = np.zeros((4, 4, 4), np.uint8)
    pred = np.zeros_like(gt)
    gt[0:2] = 1  # 32 voxels
    pred[1:3] = 1  # 32 voxels, 16 shared
    assert confusion_counts(pred, gt) == (16, 16, 16)
    m = overlap_metrics(16, 16, 16)
    assert m == {"dice": 0.5, "iou": 1 / 3, "precision": 0.5, "recall": 0.5}


def test_dice_per_class_multilabel():
    gt = np.zeros((6, 6, 6), np.uint8)
    pred = np.zeros_like(gt)
    gt[0:2], pred[0:1] = 1, 1  # label 1: 36 in pred, 72 in gt, 36 shared -> 72/108
    gt[4:6, 0:3], pred[4:6, 0:3] = 2, 2  # label 2 identical
    pred[5, 5, 5] = 3  # label 3 only predicted
    d = dice_per_class(pred, gt, [1, 2, 3, 4])
    assert d[1] == pytest.approx(2 / 3) and d[2] == 1.0 and d[3] == 0.0 and math.isnan(d[4])
    # background: 108 voxels in gt, 143 in pred, 107 shared
    assert dice_per_class(pred, gt, [0])[0] == pytest.approx(2 * 107 / (108 + 143))


def test_dice_per_class_agrees_with_monai():
    torch = pytest.importorskip("torch")
    from monai.metrics import DiceMetric

    rng = np.random.default_rng(0)
    gt, pred = rng.integers(0, 4, (12, 10, 8)), rng.integers(0, 4, (12, 10, 8))
    onehot = lambda a: torch.from_numpy(np.eye(4, dtype=np.float32)[a].transpose(3, 0, 1, 2)[None])  # noqa: E731
    ref = DiceMetric(include_background=False, reduction="none")(onehot(pred), onehot(gt))[0]
    ours = dice_per_class(pred, gt, [1, 2, 3])
    np.testing.assert_allclose([ours[k] for k in (1, 2, 3)], ref.numpy(), atol=1e-6)


def test_label_boxes_and_validation():
    m = np.zeros((5, 5, 5), np.int16)
    m[1:3, 2, 4] = 2
    boxes = label_boxes(m, [1, 2])
    assert boxes[1] is None and boxes[2] == (slice(1, 3), slice(2, 3), slice(4, 5))
    with pytest.raises(ValueError):
        label_boxes(m, [0])
    with pytest.raises(ValueError):
        dice_per_class(m, m[:4], [1])


def test_conventions_for_empty_cases():
    assert all(math.isnan(v) for v in overlap_metrics(0, 0, 0).values())
    assert overlap_metrics(0, 0, 0, "flare21") == dict.fromkeys(("dice", "iou", "precision", "recall"), 1.0)
    pred_only = overlap_metrics(0, 5, 0)
    assert pred_only["dice"] == 0.0 and pred_only["precision"] == 0.0 and math.isnan(pred_only["recall"])
    gt_only = overlap_metrics(0, 0, 5)
    assert gt_only["dice"] == 0.0 and math.isnan(gt_only["precision"]) and gt_only["recall"] == 0.0
    assert math.isnan(overlap_metrics(0, 5, 0, "autopet")["dice"])  # undefined on a negative case
    assert overlap_metrics(0, 0, 5, "autopet")["dice"] == 0.0


def test_convention_registry():
    assert set(CONVENTIONS.names()) >= {"default", "flare21", "flare22", "flare23", "autopet"}
    f22 = get_convention("flare22")
    assert f22.nsd_zero_below_dice == 0.2 and f22.tolerance(1, 1.0) == 5.0 and f22.tolerance(99, 1.5) == 1.5
    custom = Convention("mine", both_empty=1.0)
    assert get_convention(custom) is custom
    with pytest.raises(KeyError):
        get_convention("brats")


def test_present_label_boxes_equal_unique_and_label_boxes():
    from focusseg.metrics.overlap import DIRECT_MAX_LABEL, label_boxes, present_label_boxes

    rng = np.random.default_rng(3)
    maps = []
    for dtype in (np.uint8, np.int16, np.int32):
        m = np.zeros((23, 19, 17), dtype)
        for v in (1, 2, 5):
            lo = rng.integers(0, 15, 3)
            m[lo[0]:lo[0] + rng.integers(1, 8), lo[1]:lo[1] + rng.integers(1, 8), lo[2]:lo[2] + rng.integers(1, 8)] = v
        maps.append(m)
    edge = np.zeros((10, 10, 10), np.uint8)
    edge[0, 3, 9] = edge[9, 0, 0] = 7  # a label touching opposite faces
    maps += [edge, np.zeros((5, 5, 5), np.uint8), rng.random((9, 8, 7)) > 0.7]
    for m in maps:
        values = [int(v) for v in np.unique(m) if v != 0]
        expected = {v: b for v, b in label_boxes(m, values).items()} if values else {}
        assert present_label_boxes(m) == expected
    assert present_label_boxes(np.full((3, 3, 3), -1, np.int16)) is None
    assert present_label_boxes(np.full((3, 3, 3), DIRECT_MAX_LABEL + 1, np.int32)) is None
    assert present_label_boxes(np.zeros((3, 3, 3), np.float32)) is None
