"""Test helpers for the loss library: random inputs and a straightforward loop implementation of blob loss."""

from __future__ import annotations

import cc3d
import numpy as np
import torch
from monai.losses import DiceLoss as MonaiDice


def random_case(b=2, k=3, spatial=(6, 5, 4), seed=0, dtype=torch.float32, high=None):
    """Random logits (B, K, *spatial) and an int64 label map (B, 1, *spatial) with labels in [0, high)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, *spatial, generator=g, dtype=dtype) * 2
    target = torch.randint(0, high or k, (b, 1, *spatial), generator=g)
    return logits, target


def blob_target(b=2, spatial=(8, 8, 6), n_labels=1, seed=0, p=0.15):
    """A sparse label map with several separated blobs per class (voxels drawn with probability p)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((b, 1, *spatial), dtype=np.int64)
    draw = rng.random(lab.shape)
    cls = rng.integers(1, n_labels + 1, size=lab.shape)
    lab[draw < p] = cls[draw < p]
    return torch.from_numpy(lab)


def loop_blob(probs, target, channel_labels, connectivity, squared=False, dice_w=1.0, bce_w=1.0, weights=None):
    """Blob term by the definition: a python loop over samples, channels and instances.

    probs: (B, C, *spatial) probabilities of the channels that have instances; channel_labels[c] is the label
    value of channel c. Inner loss = dice_w * MONAI Dice (single channel, include_background) + bce_w * BCE, on
    the masked prediction p * [(g_c == 0) | (inst == u)].
    """
    dice = MonaiDice(include_background=True, squared_pred=squared, smooth_nr=1e-5, smooth_dr=1e-5)
    bce = torch.nn.BCELoss()
    per_sample = []
    for i in range(probs.shape[0]):
        class_losses = []
        for c, label_value in enumerate(channel_labels):
            gc = (target[i, 0] == label_value).numpy() if label_value > 0 else (target[i, 0] > 0).numpy()
            inst = cc3d.connected_components(gc.astype(np.uint8), connectivity=connectivity)
            inst_t = torch.from_numpy(inst.astype(np.int64))
            losses = []
            for u in range(1, int(inst.max()) + 1):
                mask = (inst_t == 0) | (inst_t == u)  # everything but the other instances of class c
                m = probs[i, c] * mask
                y = (inst_t == u).to(probs.dtype)
                loss = dice_w * dice(m[None, None], y[None, None]) + bce_w * bce(m, y)
                losses.append(loss)
            if losses:
                w = 1.0 if weights is None else weights[c]
                class_losses.append(w * sum(losses) / len(losses))
        if class_losses:
            per_sample.append(sum(class_losses) / len(class_losses))
        else:
            per_sample.append(None)
    return per_sample
