"""CE, BCE, TopK CE and focal loss: torch/MONAI references, hand values, gradcheck, per-sample definitions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from loss_helpers import random_case
from monai.losses import FocalLoss as MonaiFocal

from focusseg.losses import BCELoss, CELoss, FocalLoss, TopKCELoss

ATOL = 1e-6


def test_ce_matches_torch_with_and_without_weights():
    logits, target = random_case(2, 4, (6, 5, 4), seed=0)
    ref = F.cross_entropy(logits, target[:, 0])
    torch.testing.assert_close(CELoss()(logits, target), ref, atol=ATOL, rtol=0)
    w = torch.tensor([0.1, 1.0, 2.0, 0.5])
    ref_w = F.cross_entropy(logits, target[:, 0], weight=w)
    torch.testing.assert_close(CELoss()(logits, target, w), ref_w, atol=ATOL, rtol=0)
    # per sample: the weighted mean within each sample
    per = CELoss(reduction="none")(logits, target, w)
    for i in range(2):
        torch.testing.assert_close(per[i], F.cross_entropy(logits[i : i + 1], target[i : i + 1, 0], weight=w))


def test_ce_all_zero_weights_give_zero_not_nan():
    logits, target = random_case(1, 2, (4, 4), seed=1)
    out = CELoss()(logits, torch.zeros_like(target), torch.tensor([0.0, 1.0]))
    assert out.item() == 0.0


@pytest.mark.parametrize("k", [1, 3])
def test_bce_matches_torch(k):
    logits, target = random_case(2, k, (6, 5, 4), seed=2, high=k + 1)
    y = (target > 0).float() if k == 1 else torch.cat([(target == c + 1) for c in range(k)], 1).float()
    torch.testing.assert_close(BCELoss()(logits, target), F.binary_cross_entropy_with_logits(logits, y))
    w = torch.rand(k) + 0.1
    ref = F.binary_cross_entropy_with_logits(logits, y, weight=w.view(1, k, 1, 1, 1))
    torch.testing.assert_close(BCELoss()(logits, target, w), ref, atol=ATOL, rtol=0)


def test_topk_hand_values():
    # 10 voxels, two classes, class-1 logit a_v, target 0 everywhere: CE_v = log(1 + exp(a_v))
    a = torch.arange(10, dtype=torch.float64) * 0.5
    logits = torch.stack([torch.zeros(10, dtype=torch.float64), a]).view(1, 2, 1, 10)
    target = torch.zeros(1, 1, 1, 10, dtype=torch.long)

    def ce(v: float) -> float:
        return math.log(1 + math.exp(v))

    assert TopKCELoss(k=20)(logits, target).item() == pytest.approx((ce(4.5) + ce(4.0)) / 2, abs=1e-12)
    assert TopKCELoss()(logits, target).item() == pytest.approx(ce(4.5), abs=1e-12)  # k=10 -> int(10*0.1)=1
    assert TopKCELoss(k=5)(logits, target).item() == pytest.approx(ce(4.5), abs=1e-12)  # at least one voxel
    assert TopKCELoss(k=100)(logits, target).item() == pytest.approx(sum(ce(v) for v in a.tolist()) / 10)
    # class weights act on the voxel losses before the ranking (nnU-Net's weighted CE, reduction none)
    w = torch.tensor([2.0, 1.0], dtype=torch.float64)
    assert TopKCELoss(k=20)(logits, target, w).item() == pytest.approx(ce(4.5) + ce(4.0), abs=1e-12)


def test_topk_batch_is_global_over_all_voxels():
    logits, target = random_case(2, 3, (6, 5, 4), seed=3)
    vox = F.cross_entropy(logits, target[:, 0], reduction="none").flatten()
    n = int(vox.numel() * 10 / 100)
    torch.testing.assert_close(TopKCELoss()(logits, target), vox.topk(n).values.mean())


def test_topk_per_sample_equals_batch_where_definition_allows():
    logits, target = random_case(2, 3, (6, 5, 4), seed=4)
    # k = 100: TopK is CE, batch mean = mean of per-sample means
    torch.testing.assert_close(
        TopKCELoss(k=100, reduction="none")(logits, target).mean(), TopKCELoss(k=100)(logits, target)
    )
    torch.testing.assert_close(TopKCELoss(k=100)(logits, target), CELoss()(logits, target))
    # identical samples: each holds exactly half of the batch's top voxels
    x2, t2 = logits[:1].repeat(2, 1, 1, 1, 1), target[:1].repeat(2, 1, 1, 1, 1)
    torch.testing.assert_close(TopKCELoss(reduction="none")(x2, t2).mean(), TopKCELoss()(x2, t2))


def test_topk_gradcheck_float64():
    logits, target = random_case(2, 3, (4, 5), seed=5, dtype=torch.float64)
    logits.requires_grad_(True)
    w = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: TopKCELoss(k=20)(x, target, w), (logits,))
    assert torch.autograd.gradcheck(lambda x: TopKCELoss(k=20, reduction="none")(x, target), (logits,))


@pytest.mark.parametrize("gamma", [0.0, 2.0])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_focal_softmax_matches_monai_times_channels(gamma, alpha):
    logits, target = random_case(2, 3, (6, 5, 4), seed=6)
    ref = MonaiFocal(gamma=gamma, alpha=alpha, to_onehot_y=True, use_softmax=True)
    ours = FocalLoss(gamma=gamma, alpha=alpha)
    # MONAI's "mean" also averages over the 3 channels (only the target channel is non-zero)
    torch.testing.assert_close(ours(logits, target), 3 * ref(logits, target), atol=ATOL, rtol=0)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_focal_softmax_without_background_drops_background_voxel_terms(gamma):
    # MONAI's include_background=False removes channel 0 *before* the softmax (another definition); ours keeps
    # the softmax over all classes and drops the terms of background voxels: MONAI's unreduced terms of
    # channels 1.. (softmax over all), summed over channels and averaged over voxels.
    logits, target = random_case(2, 3, (6, 5, 4), seed=6)
    terms = MonaiFocal(gamma=gamma, to_onehot_y=True, use_softmax=True, reduction="none")(logits, target)
    expected = terms[:, 1:].sum(1).mean()
    ours = FocalLoss(gamma=gamma, include_background=False)
    torch.testing.assert_close(ours(logits, target), expected, atol=ATOL, rtol=0)


def test_focal_softmax_gamma0_is_ce_and_class_weights_match_monai():
    logits, target = random_case(2, 3, (6, 5, 4), seed=7)
    torch.testing.assert_close(FocalLoss(gamma=0)(logits, target), CELoss()(logits, target), atol=ATOL, rtol=0)
    w = torch.tensor([0.3, 1.0, 2.0])
    ref = MonaiFocal(gamma=2.0, weight=w, to_onehot_y=True, use_softmax=True)
    torch.testing.assert_close(FocalLoss()(logits, target, w), 3 * ref(logits, target), atol=ATOL, rtol=0)


@pytest.mark.parametrize("alpha", [None, 0.25, (0.2, 0.7)])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_focal_sigmoid_matches_monai(alpha, gamma):
    logits, target = random_case(2, 2, (6, 5, 4), seed=8, high=3)
    y = torch.cat([(target == c + 1) for c in range(2)], 1).float()
    ref = MonaiFocal(gamma=gamma, alpha=list(alpha) if isinstance(alpha, tuple) else alpha)
    ours = FocalLoss(gamma=gamma, alpha=alpha, activation="sigmoid")
    torch.testing.assert_close(ours(logits, target), ref(logits, y), atol=ATOL, rtol=0)
    w = torch.tensor([0.5, 3.0])
    ref_w = MonaiFocal(gamma=gamma, alpha=list(alpha) if isinstance(alpha, tuple) else alpha, weight=w)
    torch.testing.assert_close(ours(logits, target, w), ref_w(logits, y), atol=ATOL, rtol=0)


def test_focal_finite_gradient_at_saturated_softmax():
    logits = torch.zeros(1, 3, 2, 2)
    logits[:, 1] = 200.0  # p_1 == 1 in float32
    logits.requires_grad_(True)
    target = torch.ones(1, 1, 2, 2, dtype=torch.long)
    FocalLoss(gamma=0.5)(logits, target).backward()
    assert torch.isfinite(logits.grad).all()


def test_voxel_losses_reject_wrong_activation_targets():
    logits, target = random_case(1, 3, (4, 4), seed=9)
    with pytest.raises(ValueError, match="labels"):
        CELoss(validate_labels=True)(logits, target + 3)
    with pytest.raises(ValueError, match="softmax needs"):
        CELoss()(logits[:, :1], target.clamp(max=0))
    with pytest.raises(ValueError, match="k must"):
        TopKCELoss(k=0)
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1)
    with pytest.raises(ValueError, match="alpha has"):
        FocalLoss(alpha=(0.1, 0.2))(logits, target)
