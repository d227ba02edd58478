"""Tiny nnU-Net v2 model folders written the way nnU-Net writes them: dataset.json, plans.json with one small
configuration, and fold_K/checkpoint_final.pth saved with ``torch.save`` holding numpy scalars (logging,
``_best_ema``, the epoch) beside the weights, optimizer state and init_args.

The reference network is built the way nnU-Net's ``get_network_from_plans`` builds it (``pydoc.locate`` on the
plans' names -- acceptable here: the test writes those names itself), so focusseg's builder is checked against an
independent construction."""

from __future__ import annotations

import copy
import json
import pydoc
from pathlib import Path
from typing import Any

import numpy as np
import torch

PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def arch(cls: str = PLAIN, dim: int = 3) -> dict[str, Any]:
    """A 3-stage architecture with few features, as nnU-Net's planner writes it."""
    per_stage = "n_conv_per_stage" if cls == PLAIN else "n_blocks_per_stage"
    return {
        "network_class_name": cls,
        "arch_kwargs": {
            "n_stages": 3,
            "features_per_stage": [4, 8, 16],
            "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
            "kernel_sizes": [[3] * dim] * 3,
            "strides": [[1] * dim, [2] * dim, [2] * dim],
            per_stage: [2, 2, 2] if cls == PLAIN else [1, 2, 2],
            "n_conv_per_stage_decoder": [2, 2] if cls == PLAIN else [1, 1],
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def plans(cls: str = PLAIN) -> dict[str, Any]:
    """plans.json with a 3d_fullres configuration (patch 16^3) and a 2d one."""
    resampling = {"resampling_fn_data": "resample_data_or_seg_to_shape",
                  "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_seg": "resample_data_or_seg_to_shape",
                  "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                  "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                         "force_separate_z": None}}
    return {
        "dataset_name": "Dataset999_Tiny",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [2.0, 1.0, 1.0],
        "original_median_shape_after_transp": [20, 24, 24],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "2d": {"data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor",
                   "batch_size": 12, "patch_size": [24, 24], "median_image_size_in_voxels": [24.0, 24.0],
                   "spacing": [1.0, 1.0], "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
                   **resampling, "architecture": arch(cls, 2), "batch_dice": True},
            "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                           "batch_size": 2, "patch_size": [16, 16, 16],
                           "median_image_size_in_voxels": [20.0, 24.0, 24.0], "spacing": [2.0, 1.0, 1.0],
                           "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
                           **resampling, "architecture": arch(cls, 3), "batch_dice": False},
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 1200.0, "mean": 95.5, "median": 90.0, "min": -1000.0, "percentile_00_5": -80.0,
                  "percentile_99_5": 310.0, "std": 61.25}},
    }


def dataset_json() -> dict[str, Any]:
    return {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
            "numTraining": 4, "file_ending": ".nii.gz"}


def reference_network(plans_dict: dict, configuration: str, in_ch: int, out_ch: int,
                      deep_supervision: bool) -> torch.nn.Module:
    """The network as nnU-Net's get_network_from_plans builds it (names located with pydoc, initialised)."""
    a = plans_dict["configurations"][configuration]["architecture"]
    kwargs = dict(a["arch_kwargs"])
    for k in a["_kw_requires_import"]:
        if kwargs[k] is not None:
            kwargs[k] = pydoc.locate(kwargs[k])
    cls = pydoc.locate(a["network_class_name"])
    net = cls(input_channels=in_ch, num_classes=out_ch, deep_supervision=deep_supervision, **kwargs)
    net.apply(net.initialize)
    return net


def checkpoint_dict(network: torch.nn.Module, plans_dict: dict, configuration: str, ds: dict,
                    trainer: str = "nnUNetTrainer", mirror: Any = (0, 1, 2)) -> dict[str, Any]:
    """What nnUNetTrainer.save_checkpoint writes: numpy scalars in logging and _best_ema, an optimizer state."""
    opt = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    return {
        "network_weights": network.state_dict(),
        "optimizer_state": opt.state_dict(),
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.41), np.float64(0.52)],
                    "ema_fg_dice": [np.float64(0.41), np.float64(0.42)],
                    "dice_per_class_or_region": [[np.float64(0.5), np.float64(0.3)]] * 2,
                    "train_losses": [np.float32(-0.2), np.float32(-0.3)],
                    "val_losses": [np.float32(-0.1), np.float32(-0.2)],
                    "lrs": [0.01, 0.0099],
                    "epoch_start_timestamps": [1.7e9, 1.7e9 + 60], "epoch_end_timestamps": [1.7e9 + 59, 1.7e9 + 119]},
        "_best_ema": np.float64(0.42),
        "current_epoch": np.int64(2),
        "init_args": {"plans": copy.deepcopy(plans_dict), "configuration": configuration, "fold": 0,
                      "dataset_json": copy.deepcopy(ds), "device": torch.device("cpu")},
        "trainer_name": trainer,
        "inference_allowed_mirroring_axes": mirror,
    }


def write_model_folder(root: Path, cls: str = PLAIN, configuration: str = "3d_fullres",
                       trainer: str = "nnUNetTrainer", folds: tuple = (0,), plans_dict: dict | None = None,
                       ds: dict | None = None) -> tuple[Path, dict[Any, torch.nn.Module]]:
    """``root/<trainer>__nnUNetPlans__<configuration>/`` with dataset.json, plans.json and a trained-looking
    checkpoint per fold. Returns the folder and fold -> the reference network (deep supervision on, as trained)."""
    plans_dict = plans(cls) if plans_dict is None else plans_dict
    ds = dataset_json() if ds is None else ds
    folder = root / f"{trainer}__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans_dict, indent=2))
    (folder / "dataset.json").write_text(json.dumps(ds, indent=2))
    nets = {}
    for fold in folds:
        torch.manual_seed(hash(str(fold)) % 1000)
        net = reference_network(plans_dict, configuration, len(ds["channel_names"]), 3, deep_supervision=True)
        (folder / f"fold_{fold}").mkdir()
        mirror = tuple(range(len(plans_dict["configurations"][configuration].get("patch_size", [0] * 3))))
        torch.save(checkpoint_dict(net, plans_dict, configuration, ds, trainer, mirror),
                   folder / f"fold_{fold}" / "checkpoint_final.pth")
        nets[fold] = net
    return folder, nets


def edit_plans(folder: Path, edit) -> None:
    """Apply ``edit(plans_dict)`` to the folder's plans.json."""
    p = folder / "plans.json"
    data = json.loads(p.read_text())
    edit(data)
    p.write_text(json.dumps(data, indent=2))
