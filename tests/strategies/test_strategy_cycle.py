"""Cycle training (paper 004 eq. 1): committee selection, the ramp, and one three-network step on tiny nets."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from strategy_helpers import through_torch_save
from torch import nn

from focusseg.roles import PatchRequest
from focusseg.strategies import CycleTask, cycle_select, ensemble_logits, keep_schedule


def test_agreement_keeps_the_75_percent_smallest_differences() -> None:
    lb = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    lc = lb + torch.tensor([0.5, -3.0, 0.1, 0.0, 2.0, -0.2, 0.3, 0.4])  # |diff| ranks: 3,2,5,6,7,0 smallest
    mask = cycle_select(lb, lc, keep=0.75)
    assert mask.tolist() == [True, False, True, True, False, True, True, True]
    assert cycle_select(lb, lc, keep=0.25).nonzero().flatten().tolist() == [2, 3]  # int(0.25 * 8) = 2


def test_small_loss_and_intersection() -> None:
    lb = torch.tensor([0.1, 0.2, 5.0, 0.3])
    lc = torch.tensor([4.0, 0.1, 0.2, 0.3])
    assert cycle_select(lb, lc, keep=0.5, criterion="small_loss").tolist() == [False, True, False, True]
    # B's two smallest {0, 1}, C's two smallest {1, 2}: both -> {1}
    assert cycle_select(lb, lc, keep=0.5, criterion="intersection").tolist() == [False, True, False, False]
    # disjoint small-loss sets: fall back to the single smallest sum
    lb2, lc2 = torch.tensor([0.0, 9.0]), torch.tensor([9.5, 0.0])
    assert cycle_select(lb2, lc2, keep=0.5, criterion="intersection").tolist() == [False, True]


def test_keep_counts_and_errors() -> None:
    assert int(cycle_select(torch.ones(1), torch.ones(1)).sum()) == 1
    assert int(cycle_select(torch.zeros(3), torch.ones(3)).sum()) == 2  # int(2.25)
    assert cycle_select(torch.zeros(4), torch.zeros(4)).tolist() == [True, True, True, False]  # stable ties
    with pytest.raises(ValueError):
        cycle_select(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError):
        cycle_select(torch.ones(3), torch.ones(3), criterion="big_loss")
    with pytest.raises(ValueError):
        cycle_select(torch.ones(3), torch.ones(3), keep=0.0)


def test_keep_ramp_follows_coteaching() -> None:
    assert keep_schedule(0, 0.75, 10) == 1.0
    assert keep_schedule(3, 0.75, 10) == pytest.approx(1 - 0.25 * 3 / 9)
    assert keep_schedule(9, 0.75, 10) == pytest.approx(0.75)
    assert keep_schedule(50, 0.75, 10) == pytest.approx(0.75)
    assert keep_schedule(0, 0.75, 0) == 0.75


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))


def _per_sample_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target[:, 0], reduction="none").flatten(1).mean(1)


def _task(**kw: object) -> CycleTask:
    nets = [_net(s) for s in range(3)]
    opts = [torch.optim.SGD(n.parameters(), lr=0.1) for n in nets]
    return CycleTask(nets, opts, _per_sample_ce, grad_clip=None, **kw)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 6, 6, generator=g)
    y = (torch.rand(8, 1, 6, 6, generator=g) > 0.5).long()
    return x, y


def test_step_trains_each_network_on_its_committee_selection_only() -> None:
    task = _task()
    x, y = _batch()
    before = [copy.deepcopy(n) for n in task.networks]
    reqs = [PatchRequest("c", (i, 0), i) for i in range(8)]
    out = task.step(x, y, reqs)
    masks = out.extras["masks"]
    assert masks.shape == (3, 8) and masks.sum(1).tolist() == [6, 6, 6]
    peer_losses = torch.stack([_per_sample_ce(b(x), y) for b in before]).detach()
    assert torch.allclose(out.extras["per_network_loss"], peer_losses, atol=1e-6)
    assert torch.allclose(out.per_sample_loss, peer_losses.mean(0), atol=1e-6)
    assert out.requests == reqs
    for i, (net, ref) in enumerate(zip(task.networks, before)):
        expected = cycle_select(peer_losses[(i + 1) % 3], peer_losses[(i + 2) % 3], 0.75)
        assert torch.equal(masks[i], expected)
        # gradient of the network == gradient of the mean loss over the selected samples only
        _per_sample_ce(ref(x[expected]), y[expected]).mean().backward()
        for p, q in zip(net.parameters(), ref.parameters()):
            assert torch.allclose(p.grad, q.grad, atol=1e-6)
            assert not torch.allclose(p.detach(), q.detach())  # every network moved
        # and != the gradient over the whole batch (so the masking matters)
        full = copy.deepcopy(before[i])
        _per_sample_ce(full(x), y).mean().backward()
        assert not torch.allclose(next(full.parameters()).grad, next(net.parameters()).grad)


def test_ramp_in_task_and_state_round_trip() -> None:
    task = _task(ramp_epochs=5)
    x, y = _batch()
    assert int(task.step(x, y).extras["masks"].sum()) == 24  # keep 1.0 at epoch 0
    task.set_epoch(4)
    assert task.keep_now == pytest.approx(0.75)
    other = _task(ramp_epochs=5)
    other.load_state_dict(through_torch_save(task.state_dict()))
    assert other.epoch == 4
    a, b = task.step(x, y), other.step(x, y)
    assert torch.equal(a.per_sample_loss, b.per_sample_loss) and a.loss == b.loss
    for n1, n2 in zip(task.networks, other.networks):
        for p, q in zip(n1.parameters(), n2.parameters()):
            assert torch.equal(p, q)


def test_ensemble_logits_is_the_mean_and_takes_deep_supervision_lists() -> None:
    nets = [_net(s) for s in range(3)]
    x, _ = _batch()
    expected = torch.stack([n(x) for n in nets]).mean(0)
    assert torch.allclose(ensemble_logits(nets, x), expected, atol=1e-6)

    class DS(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, t: torch.Tensor) -> list[torch.Tensor]:
            out = self.inner(t)
            return [out, out[..., ::2, ::2]]

    assert torch.allclose(ensemble_logits([DS(n) for n in nets], x), expected, atol=1e-6)


def test_task_validates_inputs() -> None:
    with pytest.raises(ValueError):
        CycleTask([_net(0)] * 2, [], _per_sample_ce)
    task = CycleTask(
        [_net(s) for s in range(3)],
        [torch.optim.SGD(_net(0).parameters(), lr=0.1) for _ in range(3)],
        lambda logits, target: F.cross_entropy(logits, target[:, 0]),
    )
    x, y = _batch()
    with pytest.raises(ValueError):
        task.step(x, y)
