"""nnU-Net v2 model folders read safely: bounded, checked plans and dataset.json (:mod:`.model_folder`),
checkpoints loaded without executing code (:mod:`.checkpoint`) and nnU-Net's exact networks rebuilt with
dynamic-network-architectures (:mod:`.network`), so focusseg can predict with, fine-tune from or compare against a
model trained by nnU-Net."""

from __future__ import annotations

from focusseg.nnunet.checkpoint import NnunetCheckpoint, load_nnunet_checkpoint
from focusseg.nnunet.model_folder import (
    NnunetConfiguration,
    NnunetDataset,
    NnunetModelFolder,
    read_model_folder,
    read_postprocessing,
)
from focusseg.nnunet.network import build_network, load_fold, load_weights

__all__ = ["NnunetCheckpoint", "NnunetConfiguration", "NnunetDataset", "NnunetModelFolder", "build_network",
           "load_fold", "load_nnunet_checkpoint", "load_weights", "read_model_folder", "read_postprocessing"]
