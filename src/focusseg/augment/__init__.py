"""Batched, device-side augmentation: nnU-Net's transforms on ``(B, C, *S)`` tensors, parameters drawn first.

>>> import torch
>>> aug = BatchAugmenter(AugmentConfig.from_dict({"preset": "light"}), spatial_dims=3)
>>> x, y = torch.randn(2, 1, 8, 8, 8), torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
>>> xa, ya = aug(x, y, torch.Generator().manual_seed(0))
>>> xa.shape == x.shape and ya.shape == y.shape
True
"""

from .batch import AugmentParams, BatchAugmenter
from .config import AugmentConfig, preset, preset_names
from .spatial import crop_to

__all__ = ["AugmentConfig", "AugmentParams", "BatchAugmenter", "crop_to", "preset", "preset_names"]
