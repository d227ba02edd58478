"""Blob loss: hand values, the loop definition, gradcheck, empty batches, per-sample behaviour, options."""

from __future__ import annotations

import math

import pytest
import torch
from loss_helpers import blob_target, loop_blob

from focusseg.losses import BlobLoss, build_loss
from focusseg.losses.instances import log1m_softmax


def logit(p):
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p) - torch.log1p(-p)


P = [0.9, 0.6, 0.2, 0.7, 0.1, 0.4]
G = [1, 1, 0, 1, 0, 0]  # two instances in 4-connectivity: voxels {0, 1} and {3}


def hand_case():
    return logit(P).view(1, 1, 1, 6), torch.tensor(G).view(1, 1, 1, 6)


def test_blob_dice_hand_value():
    x, t = hand_case()
    inner = {"dice": {"smooth_nr": 0, "smooth_dr": 0}}
    blob_only = BlobLoss(blob=inner, alpha=0, beta=1, connectivity=4)(x, t)
    # instance A: m = (.9, .6, .2, 0, .1, .4): tp 1.5, sum m 2.2, |A| 2; instance B: m = (0, 0, .2, .7, .1, .4)
    a = 1 - 2 * 1.5 / (2.2 + 2)
    b = 1 - 2 * 0.7 / (1.4 + 1)
    assert blob_only.item() == pytest.approx((a + b) / 2, abs=1e-9)
    main = {"dice": {"activation": "sigmoid", "smooth_nr": 0, "smooth_dr": 0}}
    total = BlobLoss(main=main, blob=inner, connectivity=4)(x, t)
    main_value = 1 - 2 * 2.2 / (2.9 + 3)
    assert total.item() == pytest.approx(0.66 * main_value + 0.33 * (a + b) / 2, abs=1e-9)
    # 8-connectivity in 2D joins nothing here (the voxels are on one row with a gap); 1 x 6 is a row
    assert BlobLoss(blob=inner, alpha=0, beta=1, connectivity=8)(x, t).item() == pytest.approx((a + b) / 2)


def test_blob_bce_hand_value():
    x, t = hand_case()
    loss = BlobLoss(blob={"bce": 1}, alpha=0, beta=1, connectivity=4)(x, t).item()
    nl = [-math.log(v) for v in P]
    nl1m = [-math.log(1 - v) for v in P]
    a = (nl[0] + nl[1] + nl1m[2] + nl1m[4] + nl1m[5]) / 6  # voxel 3 masked: p = 0, y = 0 -> 0
    b = (nl[3] + nl1m[2] + nl1m[4] + nl1m[5]) / 6
    assert loss == pytest.approx((a + b) / 2, abs=1e-9)


def test_connectivity_changes_instances():
    # two voxels touching diagonally: one instance in 8-connectivity, two in 4-connectivity
    t = torch.tensor([[1, 0], [0, 1]]).view(1, 1, 2, 2)
    x = logit([[0.8, 0.3], [0.4, 0.6]]).view(1, 1, 2, 2)
    inner = {"dice": {"smooth_nr": 0, "smooth_dr": 0}}
    one = BlobLoss(blob=inner, alpha=0, beta=1, connectivity=8)(x, t).item()
    two = BlobLoss(blob=inner, alpha=0, beta=1, connectivity=4)(x, t).item()
    assert one == pytest.approx(1 - 2 * 1.4 / (2.1 + 2))
    assert two == pytest.approx(((1 - 1.6 / (1.5 + 1)) + (1 - 1.2 / (1.3 + 1))) / 2)


@pytest.mark.parametrize("spatial,connectivity", [((9, 8), 4), ((9, 8), 8), ((7, 6, 5), 6), ((7, 6, 5), 26)])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_vectorised_equals_loop_sigmoid(spatial, connectivity, squared, fused):
    target = blob_target(3, spatial, n_labels=2, seed=1, p=0.25)
    target[2] = 0  # a sample without instances is left out of the mean
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, *spatial, generator=g, dtype=torch.float64) * 2
    w = torch.tensor([0.7, 1.8], dtype=torch.float64)
    name = "soft_dice" if squared else "dice"
    opts = {"blob": {name: 1.0, "bce": 0.5}, "alpha": 0, "beta": 1, "connectivity": connectivity, "fused": fused}
    loss = BlobLoss(**opts, reduction="none")
    per = loss(x, target, w)
    ref = loop_blob(torch.sigmoid(x), target, [1, 2], connectivity, squared=squared, bce_w=0.5, weights=w)
    for i, r in enumerate(ref):
        assert per[i].item() == pytest.approx(0.0 if r is None else r.item(), abs=1e-10)
    mean = BlobLoss(**opts)(x, target, w)
    assert mean.item() == pytest.approx(sum(r.item() for r in ref if r is not None) / 2, abs=1e-10)


def test_vectorised_equals_loop_softmax_one_vs_rest():
    target = blob_target(2, (6, 6, 4), n_labels=2, seed=3, p=0.3)
    x = torch.randn(2, 3, 6, 6, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3
    per = BlobLoss(alpha=0, beta=1, activation="softmax", connectivity=26, reduction="none")(x, target)
    probs = torch.softmax(x, 1)[:, 1:]
    ref = loop_blob(probs, target, [1, 2], 26)
    torch.testing.assert_close(per, torch.stack(ref), atol=1e-10, rtol=0)


def test_single_channel_sigmoid_treats_any_label_as_foreground():
    target = blob_target(2, (8, 8, 4), n_labels=3, seed=5, p=0.2)
    x = torch.randn(2, 1, 8, 8, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    per = BlobLoss(alpha=0, beta=1, connectivity=18, reduction="none")(x, target)
    ref = loop_blob(torch.sigmoid(x), target, [0], 18)  # label value 0 in the helper: channel = label > 0
    torch.testing.assert_close(per, torch.stack(ref), atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    "activation,k,fused,fast", [("sigmoid", 1, True, False), ("sigmoid", 2, False, True), ("softmax", 3, True, True)]
)
def test_blob_gradcheck_float64(activation, k, fused, fast):
    target = blob_target(2, (5, 4), n_labels=k if activation == "sigmoid" else k - 1, seed=7, p=0.35)
    x = torch.randn(2, k, 5, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    x.requires_grad_(True)
    inner = {"dice": 1.0, "soft_dice": 0.5, "bce": 1.0, "tversky": 0.5, "focal": 0.5}
    loss = BlobLoss(blob=inner, activation=activation, connectivity=4, fused=fused)
    assert torch.autograd.gradcheck(lambda v: loss(v, target), (x,), fast_mode=fast)  # fast: random projections


def test_batch_without_instances_gives_zero_with_gradient_path():
    x = torch.randn(2, 1, 6, 6, 4, requires_grad=True)
    t = torch.zeros(2, 1, 6, 6, 4, dtype=torch.long)
    out = BlobLoss(alpha=0, beta=1)(x, t)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    per = BlobLoss(alpha=0, beta=1, reduction="none")(x, t)
    assert per.shape == (2,) and per.requires_grad


def test_per_sample_mean_equals_batch_when_every_sample_has_instances():
    target = blob_target(3, (8, 8, 5), n_labels=1, seed=9, p=0.2)
    x = torch.randn(3, 1, 8, 8, 5, generator=torch.Generator().manual_seed(10))
    per = BlobLoss(reduction="none")(x, target)
    torch.testing.assert_close(per.mean(), BlobLoss()(x, target))
    for i in range(3):  # batched equals per-sample
        torch.testing.assert_close(per[i], BlobLoss()(x[i : i + 1], target[i : i + 1]))


def test_log1m_softmax_is_exact_and_finite():
    x = torch.randn(3, 4, 7, dtype=torch.float64)
    torch.testing.assert_close(log1m_softmax(x), torch.log1p(-torch.softmax(x, 1)))
    sat = torch.tensor([[[300.0], [0.0], [-5.0]]], requires_grad=True)
    out = log1m_softmax(sat)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(sat.grad).all()


def test_blob_options_are_checked():
    with pytest.raises(ValueError, match="connectivity"):
        BlobLoss(connectivity=5)
    with pytest.raises(ValueError, match="not valid in 2D"):
        BlobLoss(connectivity=26)(torch.randn(1, 1, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="per-instance"):
        BlobLoss(blob={"topk_ce": 1})
    with pytest.raises(ValueError, match="alpha and beta"):
        BlobLoss(alpha=-1)
    with pytest.raises(ValueError, match="reduction"):
        BlobLoss(main=build_loss("dice", reduction="none"))
    assert (BlobLoss().alpha, BlobLoss().beta) == (0.66, 0.33)


@pytest.mark.parametrize("chunk", [16, 1 << 16])
def test_fused_sigmoid_sums_match_autograd(chunk, monkeypatch):
    from focusseg.losses import fused
    from focusseg.losses.fused import SigmoidSums

    monkeypatch.setattr(fused, "CHUNK", chunk)  # 16: several chunks per row
    x = torch.randn(3, 50, dtype=torch.float64, requires_grad=True)
    lin = torch.tensor([0, 7, 61, 149])
    assert torch.autograd.gradcheck(lambda v: SigmoidSums.apply(v, lin), (x,))
    sums, sel = SigmoidSums.apply(x, lin)
    p = torch.sigmoid(x)
    ref = torch.stack([p.sum(1), (p * p).sum(1), torch.nn.functional.softplus(x).sum(1)], 1)
    torch.testing.assert_close(sums, ref)
    torch.testing.assert_close(sel, x.reshape(-1)[lin])
