"""Dice (plain, squared) and Tversky against MONAI and hand-computed values."""

from __future__ import annotations

import pytest
import torch
from loss_helpers import random_case
from monai.losses import DiceCELoss as MonaiDiceCE
from monai.losses import DiceLoss as MonaiDice
from monai.losses import TverskyLoss as MonaiTversky

from focusseg.losses import DiceLoss, TverskyLoss, build_loss

ATOL = 1e-6


def multi_hot(target: torch.Tensor, k: int) -> torch.Tensor:
    """Sigmoid channel c <-> label c + 1 (k = 1: label > 0)."""
    if k == 1:
        return (target > 0).float()
    return torch.cat([(target == c + 1) for c in range(k)], 1).float()


@pytest.mark.parametrize("spatial", [(7, 6), (5, 6, 4)])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("batch", [False, True])
def test_dice_softmax_matches_monai(spatial, squared, include_background, batch):
    logits, target = random_case(3, 4, spatial, seed=1)
    ours = DiceLoss(squared=squared, include_background=include_background, batch=batch)
    ref = MonaiDice(
        include_background=include_background, to_onehot_y=True, softmax=True, squared_pred=squared, batch=batch
    )
    torch.testing.assert_close(ours(logits, target), ref(logits, target), atol=ATOL, rtol=0)


@pytest.mark.parametrize("include_background", [False, True])
def test_dice_class_weights_match_monai(include_background):
    logits, target = random_case(2, 3, (6, 5, 4), seed=2)
    w = torch.tensor([0.2, 1.5, 0.7])
    ref = MonaiDice(
        include_background=include_background,
        to_onehot_y=True,
        softmax=True,
        weight=w if include_background else w[1:],
    )
    ours = DiceLoss(include_background=include_background)
    torch.testing.assert_close(ours(logits, target, w), ref(logits, target), atol=ATOL, rtol=0)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("squared", [False, True])
def test_dice_sigmoid_matches_monai(k, squared):
    logits, target = random_case(2, k, (6, 5, 4), seed=3, high=k + 1)
    ours = DiceLoss(squared=squared, activation="sigmoid")
    ref = MonaiDice(include_background=True, sigmoid=True, squared_pred=squared)
    torch.testing.assert_close(ours(logits, target), ref(logits, multi_hot(target, k)), atol=ATOL, rtol=0)


def test_dice_per_sample_matches_monai_none():
    logits, target = random_case(3, 3, (6, 5, 4), seed=4)
    ref = MonaiDice(include_background=False, to_onehot_y=True, softmax=True, reduction="none")
    per = DiceLoss(reduction="none")(logits, target)
    torch.testing.assert_close(per, ref(logits, target).flatten(1).mean(1), atol=ATOL, rtol=0)


@pytest.mark.parametrize("include_background", [False, True])
def test_dice_ce_compound_matches_monai_dicece(include_background):
    logits, target = random_case(2, 3, (6, 5, 4), seed=5)
    w = torch.tensor([0.5, 1.0, 2.0])
    ref = MonaiDiceCE(include_background=include_background, to_onehot_y=True, softmax=True, weight=w)
    ours = build_loss({"ce": 1, "dice": {"weight": 1, "include_background": include_background}})
    torch.testing.assert_close(ours(logits, target, w), ref(logits, target), atol=ATOL, rtol=0)


def test_dice_hand_values():
    # one sample, sigmoid, 4 voxels: p = (0.5, 0.5, 0.5, 0.5) (logits 0), g = (1, 1, 0, 0)
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1, 1], [0, 0]]]])
    plain = DiceLoss(activation="sigmoid", smooth_nr=0, smooth_dr=0)(logits, target)
    squared = DiceLoss(squared=True, activation="sigmoid", smooth_nr=0, smooth_dr=0)(logits, target)
    assert plain.item() == pytest.approx(1 - 2 * 1.0 / (2.0 + 2.0))  # 2tp / (sum p + sum g)
    assert squared.item() == pytest.approx(1 - 2 * 1.0 / (1.0 + 2.0))  # 2tp / (sum p^2 + sum g^2)


def test_batch_dice_pools_samples():
    logits, target = random_case(3, 3, (6, 5, 4), seed=6)
    pooled = DiceLoss(batch=True)(logits, target)
    per = DiceLoss(batch=True, reduction="none")(logits, target)
    torch.testing.assert_close(per, DiceLoss(reduction="none")(logits, target))
    assert not torch.isclose(pooled, per.mean())  # documented: batch Dice != mean of per-sample Dice


@pytest.mark.parametrize("alpha,beta", [(0.5, 0.5), (0.3, 0.7), (0.8, 0.1)])
@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("batch", [False, True])
def test_tversky_matches_monai(alpha, beta, include_background, batch):
    logits, target = random_case(2, 3, (6, 5, 4), seed=7)
    ours = TverskyLoss(alpha=alpha, beta=beta, include_background=include_background, batch=batch)
    ref = MonaiTversky(
        include_background=include_background, to_onehot_y=True, softmax=True, alpha=alpha, beta=beta, batch=batch
    )
    torch.testing.assert_close(ours(logits, target), ref(logits, target), atol=ATOL, rtol=0)


def test_tversky_sigmoid_matches_monai_and_weights():
    logits, target = random_case(2, 2, (6, 5, 4), seed=8, high=3)
    ref = MonaiTversky(sigmoid=True, alpha=0.3, beta=0.7, reduction="none")
    per_class = ref(logits, multi_hot(target, 2)).flatten(1)  # (B, C)
    ours = TverskyLoss(activation="sigmoid")
    torch.testing.assert_close(ours(logits, target), per_class.mean(), atol=ATOL, rtol=0)
    w = torch.tensor([0.25, 2.0])
    torch.testing.assert_close(ours(logits, target, w), (per_class * w).mean(), atol=ATOL, rtol=0)


def test_tversky_hand_value_and_dice_equivalence():
    # p = 0.5 everywhere, g = (1, 1, 0, 0): tp = 1, fp = 1, fn = 1
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1, 1], [0, 0]]]])
    t = TverskyLoss(alpha=0.3, beta=0.7, activation="sigmoid", smooth_nr=0, smooth_dr=0)(logits, target)
    assert t.item() == pytest.approx(1 - 1 / (1 + 0.3 + 0.7))
    x, y = random_case(2, 3, (5, 4, 3), seed=9)
    torch.testing.assert_close(TverskyLoss(alpha=0.5, beta=0.5)(x, y), DiceLoss()(x, y))


def test_region_defaults_documented():
    d = DiceLoss()
    assert (d.include_background, d.batch, d.smooth_nr, d.smooth_dr, d.squared) == (False, False, 1e-5, 1e-5, False)
    assert build_loss("soft_dice").squared and not build_loss("dice").squared
    t = TverskyLoss()
    assert (t.alpha, t.beta) == (0.3, 0.7)
