"""Cycle training counts TP/FP/FN from the logits of its own forward pass (issue 13: no second forward of the
three networks), on the device, and :func:`class_counts` handles compact and two-channel label maps."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from focusseg.strategies.cycle import CycleTask, class_counts


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))


def _ce(logits, target):
    return F.cross_entropy(logits, target[:, 0].long(), reduction="none").flatten(1).mean(1)


def reference_counts(logits: torch.Tensor, labels: torch.Tensor, k: int):
    pred, ref = logits.argmax(1).flatten(), labels.flatten().long()
    tp = torch.stack([((pred == c) & (ref == c)).sum() for c in range(k)])
    fp = torch.stack([((pred == c) & (ref != c)).sum() for c in range(k)])
    fn = torch.stack([((pred != c) & (ref == c)).sum() for c in range(k)])
    return tp, fp, fn


def test_class_counts_match_the_definition_for_every_label_layout():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 20, 5, 6, 4, generator=g)
    labels = torch.randint(0, 20, (2, 1, 5, 6, 4), generator=g)
    ref = reference_counts(logits, labels, 20)
    for lab in (labels, labels.to(torch.uint8), labels[:, 0], torch.cat([labels, labels * 0 + 7], 1).short()):
        for a, b in zip(class_counts(logits, lab, 20), ref):  # uint8 * 20 would overflow without widening
            assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(class_counts(logits, labels), ref))  # k from the logits


def test_cycle_step_counts_from_its_forward_pass():
    nets = [_net(s) for s in range(3)]
    before = [copy.deepcopy(n) for n in nets]
    task = CycleTask(nets, [torch.optim.SGD(n.parameters(), lr=0.5) for n in nets], _ce, grad_clip=None)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 6, 6, generator=g)
    y = torch.randint(0, 3, (4, 1, 6, 6), generator=g).to(torch.uint8)
    out = task.step(x, y)
    with torch.no_grad():
        mean_logits = torch.stack([n(x) for n in before]).mean(0)  # the ensemble before the update
    for got, want in zip((out.per_class_tp, out.per_class_fp, out.per_class_fn), reference_counts(mean_logits, y, 3)):
        assert torch.equal(got, want)
    assert int(out.per_class_tp.sum() + out.per_class_fn.sum()) == y.numel()
    assert out.per_sample_loss.shape == (4,) and out.extras["masks"].shape == (3, 4)
