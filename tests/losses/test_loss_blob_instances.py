"""Blob loss with instances labelled by the loader (issue 13): the two-channel target ``(labels, instance map)``
gives the same values and gradients as labelling in the loss, and its indexing needs no host sync."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from loss_helpers import blob_target

from focusseg.data.loader import label_patch_instances
from focusseg.losses import BlobLoss, DeepSupervisionLoss


def with_instances(target: torch.Tensor, connectivity: int, binary: bool = False,
                   dtype: torch.dtype = torch.int16) -> torch.Tensor:
    """``(B, 1, *S)`` -> ``(B, 2, *S)``: the loader's labelling of every patch (before augmentation)."""
    maps = [label_patch_instances(t[0].numpy(), connectivity, binary)[0].astype(np.int64) for t in target]
    inst = torch.from_numpy(np.stack(maps))[:, None]
    return torch.cat([target, inst], 1).to(dtype)


CASES = [  # activation, channels, label values, spatial, connectivity
    ("sigmoid", 1, 1, (9, 8, 6), 26),
    ("sigmoid", 1, 2, (9, 8, 6), 6),  # one sigmoid channel: label > 0, different labels join
    ("sigmoid", 2, 2, (9, 8, 6), 18),
    ("softmax", 2, 1, (9, 8, 6), 26),
    ("softmax", 3, 2, (12, 10), 4),
    ("softmax", 3, 2, (12, 10), 8),
]


@pytest.mark.parametrize("activation, k, n_labels, spatial, conn", CASES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_loader_instances_equal_in_loss_labelling(activation, k, n_labels, spatial, conn, reduction):
    target = blob_target(3, spatial, n_labels=n_labels, seed=k + n_labels + len(spatial))
    target[2] = 0  # a sample without any instance
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, k, *spatial, generator=g, dtype=torch.float64)
    w = torch.tensor([0.5, 1.5, 2.0][:k], dtype=torch.float64)
    binary = activation == "sigmoid" and k == 1
    pair = with_instances(target, conn, binary)
    for fused, compact in ((True, False), (False, False), (True, True), (False, True)):
        loss = BlobLoss(connectivity=conn, activation=activation, reduction=reduction, fused=fused,
                        compact_instances=compact)  # compact: the CPU default; dense: the sync-free GPU form
        x1, x2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
        ref = loss(x1, target, w)
        got = loss(x2, pair, w)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
        ref.sum().backward()
        got.sum().backward()
        torch.testing.assert_close(x2.grad, x1.grad, atol=1e-6, rtol=0)


def test_loader_instances_equal_for_every_map_dtype():
    target = blob_target(2, (8, 8, 6), n_labels=1, seed=3)
    logits = torch.randn(2, 2, 8, 8, 6, generator=torch.Generator().manual_seed(0))
    ref = BlobLoss(activation="softmax")(logits, target)
    for compact in (True, False):
        loss = BlobLoss(activation="softmax", compact_instances=compact)
        for dtype in (torch.int16, torch.uint8, torch.int64):
            got = loss(logits, with_instances(target, 26, dtype=dtype))
            torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_vanished_and_sparse_ids_leave_no_trace():
    """Ids that are missing (an instance rotated out of the patch) or sparse change nothing."""
    target = blob_target(2, (8, 8, 6), n_labels=1, seed=4)
    pair = with_instances(target, 26)
    logits = torch.randn(2, 1, 8, 8, 6, generator=torch.Generator().manual_seed(2))
    loss = BlobLoss(connectivity=26, compact_instances=False)
    sparse = pair.clone()
    sparse[:, 1] = torch.where(pair[:, 1] > 0, pair[:, 1] * 7 + 100, 0)
    torch.testing.assert_close(loss(logits, sparse), loss(logits, pair), atol=1e-6, rtol=0)
    # remove one instance from both the labels and the map: same as labelling the reduced target
    drop = pair.clone()
    gone = (pair[:, 1] == 1)
    drop[:, 0][gone] = 0
    drop[:, 1][gone] = 0
    reduced = target.clone()
    reduced[:, 0][gone] = 0
    torch.testing.assert_close(loss(logits, drop), loss(logits, reduced), atol=1e-6, rtol=0)
    compact = BlobLoss(connectivity=26, compact_instances=True)
    torch.testing.assert_close(compact(logits, sparse), loss(logits, pair), atol=1e-6, rtol=0)


def test_deep_supervision_carries_the_instance_map():
    target = blob_target(2, (8, 8, 8), n_labels=1, seed=5, p=0.3)
    pair = with_instances(target, 26)
    x = torch.randn(2, 2, 8, 8, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
    outs = [x, x[:, :, ::2, ::2, ::2]]
    ds = DeepSupervisionLoss(BlobLoss(activation="softmax"), weights=[1.0, 0.0])
    torch.testing.assert_close(ds(outs, pair), ds(outs, target), atol=1e-6, rtol=0)  # level 2 weight 0
    value = DeepSupervisionLoss(BlobLoss(activation="softmax"), weights=[0.5, 0.5])(outs, pair)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()


def test_validate_labels_checks_the_instance_map():
    target = blob_target(1, (6, 6, 4), n_labels=1, seed=6, p=0.3)
    pair = with_instances(target, 26)
    logits = torch.randn(1, 2, 6, 6, 4)
    loss = BlobLoss(activation="softmax", validate_labels=True)
    loss(logits, pair)
    bad = pair.clone()
    bad[:, 1][target[:, 0] == 0] = 1  # an instance on background voxels
    with pytest.raises(ValueError, match="background"):
        loss(logits, bad)
    with pytest.raises(ValueError, match="labels must lie"):
        loss(logits, torch.cat([pair[:, :1] + 4, pair[:, 1:]], 1))
