"""Shared configurations and batches for the augmentation tests (imported by the test modules)."""

from __future__ import annotations

import torch

from focusseg.augment import AugmentConfig

ALL_ON = AugmentConfig(
    p_mirror=1.0, p_rotation=1.0, p_scaling=1.0, p_noise=1.0, p_blur=1.0, p_blur_per_channel=1.0,
    p_brightness=1.0, p_contrast=1.0, p_lowres=1.0, p_lowres_per_channel=1.0, p_gamma=1.0, p_gamma_inverted=1.0,
)
"""Every transform on every sample and channel: the strictest case for the vectorisation tests."""

HALF = AugmentConfig(
    p_mirror=0.5, p_rotation=0.5, p_scaling=0.5, p_noise=0.5, p_blur=0.5, p_brightness=0.5, p_contrast=0.5,
    p_lowres=0.5, p_gamma=0.5, p_gamma_inverted=0.5,
)
"""Mixed masks inside one batch (some samples transformed, some not)."""


def make_batch(b: int, c: int, shape: tuple[int, ...], seed: int = 0, n_labels: int = 4
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth-ish random images and blocky label maps (labels contain 0..n_labels-1)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn((b, c, *shape), generator=g) + torch.linspace(0, 2, shape[0]).view(-1, *[1] * (len(shape) - 1))
    coarse = torch.randint(0, n_labels, (b, 1, *[max(1, s // 4) for s in shape]), generator=g).float()
    labels = torch.nn.functional.interpolate(coarse, size=shape, mode="nearest").long()
    labels[:, :, 0] = 0
    return images, labels

