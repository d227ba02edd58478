"""Compound specs and the deep-supervision wrapper."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from loss_helpers import random_case

from focusseg.losses import (
    CELoss,
    CompoundLoss,
    DeepSupervisionLoss,
    DiceLoss,
    TopKCELoss,
    TverskyLoss,
    build_loss,
    nnunet_weights,
)
from focusseg.losses.deep_supervision import downsample_target


def test_compound_mapping_spec_is_weighted_sum_of_default_parts():
    x, t = random_case(2, 3, (6, 5, 4), seed=0)
    w = torch.tensor([0.5, 1.0, 2.0])
    loss = build_loss({"ce": 1, "soft_dice": 2, "tversky": 0.5})
    assert isinstance(loss, CompoundLoss)
    expected = CELoss()(x, t, w) + 2 * DiceLoss(squared=True)(x, t, w) + 0.5 * TverskyLoss()(x, t, w)
    torch.testing.assert_close(loss(x, t, w), expected)


def test_compound_parts_list_spec_and_options():
    x, t = random_case(2, 3, (6, 5, 4), seed=1)
    spec = {"name": "compound", "parts": [{"name": "ce", "weight": 1}, {"name": "topk_ce", "k": 20, "weight": 3}]}
    torch.testing.assert_close(build_loss(spec)(x, t), CELoss()(x, t) + 3 * TopKCELoss(k=20)(x, t))
    opt = build_loss({"dice": {"weight": 2, "include_background": True}})
    torch.testing.assert_close(opt(x, t), 2 * DiceLoss(include_background=True)(x, t))


def test_compound_reduction_reaches_every_part():
    x, t = random_case(3, 3, (6, 5, 4), seed=2)
    per = build_loss({"ce": 1, "dice": 1}, reduction="none")(x, t)
    assert per.shape == (3,)
    torch.testing.assert_close(per, CELoss(reduction="none")(x, t) + DiceLoss(reduction="none")(x, t))
    torch.testing.assert_close(per.mean(), build_loss({"ce": 1, "dice": 1})(x, t))


def test_compound_bad_specs():
    with pytest.raises(KeyError, match="unknown loss"):
        build_loss({"ce": 1, "nope": 1})
    with pytest.raises(ValueError, match="name"):
        build_loss({"name": "compound", "parts": [{"weight": 1}]})
    with pytest.raises(ValueError, match="reduction"):
        CompoundLoss([CELoss(reduction="none")], [1.0])
    with pytest.raises(ValueError, match="one weight per part"):
        CompoundLoss([CELoss()], [1.0, 2.0])


def test_nnunet_weights():
    assert nnunet_weights(5) == pytest.approx([0.53333333, 0.26666667, 0.13333333, 0.06666667, 0.0])
    assert nnunet_weights(1) == [1.0]


def test_downsample_target_nearest_exact():
    t = torch.arange(8).view(1, 1, 8, 1).repeat(1, 1, 1, 2)
    assert downsample_target(t, (4, 1))[0, 0, :, 0].tolist() == [1, 3, 5, 7]  # centre of each pair: 2i + 1
    assert downsample_target(t, (4, 1), mode="nearest")[0, 0, :, 0].tolist() == [0, 2, 4, 6]
    assert downsample_target(t[:, 0], (8, 2)).shape == (1, 1, 8, 2)


def test_deep_supervision_flare_weights_and_single_tensor():
    x, t = random_case(2, 3, (8, 8, 8), seed=3)
    outs = [x, x[:, :, ::2, ::2, ::2].contiguous() * 0.5, x[:, :, ::4, ::4, ::4] * 2, x[:, :, ::8, ::8, ::8]]
    inner = build_loss({"dice": 1, "topk_ce": 1})
    ds = DeepSupervisionLoss(inner, weights=[0.7, 0.2, 0.1])
    w = torch.tensor([0.2, 1.0, 3.0])
    expected = sum(
        c * inner(o, F.interpolate(t.float(), size=o.shape[2:], mode="nearest-exact").long(), w)
        for c, o in zip([0.7, 0.2, 0.1], outs)
    )
    torch.testing.assert_close(ds(outs, t, w), expected)
    torch.testing.assert_close(ds(x, t, w), inner(x, t, w))  # a single tensor: the inner loss


def test_deep_supervision_nnunet_weights_reduction_and_spec():
    x, t = random_case(2, 3, (8, 8), seed=4)
    outs = [x, x[:, :, ::2, ::2], x[:, :, ::4, ::4]]
    ds = build_loss({"name": "deep_supervision", "loss": {"ce": 1}, "reduction": "none"})
    assert isinstance(ds, DeepSupervisionLoss) and ds.reduction == "none"
    per = ds(outs, t)
    assert per.shape == (2,)
    w = nnunet_weights(3)
    expected = sum(c * CELoss(reduction="none")(o, downsample_target(t, o.shape[2:])) for c, o in zip(w, outs))
    torch.testing.assert_close(per, expected)


def test_deep_supervision_skips_zero_weights_and_checks_counts():
    x, t = random_case(1, 2, (8, 8), seed=5)
    calls = []

    class Spy(torch.nn.Module):
        reduction = "mean"

        def forward(self, logits, target, class_weights=None):
            calls.append(tuple(logits.shape[2:]))
            assert target.shape[2:] == logits.shape[2:]
            return logits.mean()

    ds = DeepSupervisionLoss(Spy(), weights="nnunet")
    ds([x, x[:, :, ::2, ::2], x[:, :, ::4, ::4]], t)
    assert calls == [(8, 8), (4, 4)]  # the lowest output has weight 0 and is not computed
    with pytest.raises(ValueError, match="expected 3 outputs"):
        DeepSupervisionLoss(Spy(), n_outputs=3)([x, x], t)
    with pytest.raises(ValueError, match="weights for 2 outputs"):
        DeepSupervisionLoss(Spy(), weights=[0.7, 0.2, 0.1])([x, x], t)
    with pytest.raises(ValueError, match="non-negative"):
        DeepSupervisionLoss(Spy(), weights=[0.5, -1])
