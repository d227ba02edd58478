"""Segmentation losses: Dice (plain and squared), CE, BCE, TopK CE, focal, Tversky, blob loss, region-based
Dice + BCE (nnU-Net's region training), compounds and deep supervision, all
``loss(logits, target, class_weights=None)`` (docs/CONTRACTS.md).

    >>> import torch
    >>> loss = build_loss({"ce": 1, "soft_dice": 1, "tversky": 1})
    >>> logits, target = torch.randn(2, 3, 8, 8, 8), torch.randint(0, 3, (2, 1, 8, 8, 8))
    >>> loss(logits, target).shape
    torch.Size([])
    >>> build_loss({"name": "topk_ce", "k": 10, "reduction": "none"})(logits, target).shape
    torch.Size([2])
"""

from focusseg.losses import blob, ce, compound, deep_supervision, dice, regions, tversky  # noqa: F401  (registration)
from focusseg.losses._build import LOSSES, build_loss, loss_names
from focusseg.losses.blob import BlobLoss
from focusseg.losses.ce import BCELoss, CELoss, FocalLoss, TopKCELoss
from focusseg.losses.compound import CompoundLoss
from focusseg.losses.deep_supervision import DeepSupervisionLoss, nnunet_weights
from focusseg.losses.dice import DiceLoss
from focusseg.losses.regions import RegionDiceBCELoss
from focusseg.losses.tversky import TverskyLoss

__all__ = [
    "LOSSES",
    "BCELoss",
    "BlobLoss",
    "CELoss",
    "CompoundLoss",
    "DeepSupervisionLoss",
    "DiceLoss",
    "FocalLoss",
    "RegionDiceBCELoss",
    "TopKCELoss",
    "TverskyLoss",
    "build_loss",
    "loss_names",
    "nnunet_weights",
]
