"""Tiny configurations of every registered network, so the whole folder runs in seconds on a CPU."""

from __future__ import annotations

from typing import Any

# name -> (builder kwargs, 2D patch, 3D patch); the patches are non-cubic multiples of the divisor.
TINY: dict[str, tuple[dict[str, Any], tuple[int, ...], tuple[int, ...]]] = {
    "unet": ({"channels": (4, 8, 16), "num_res_units": 1}, (8, 12), (8, 12, 20)),
    "nnunet": ({"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16], "kernel_sizes": 3,
                                "strides": [1, 2, 2], "n_conv_per_stage": 1, "n_conv_per_stage_decoder": 1,
                                "conv_bias": True, "nonlin": "torch.nn.LeakyReLU"},
                "_kw_requires_import": ["nonlin"]}, (8, 12), (8, 12, 20)),
    "basic_unet": ({"features": (4, 4, 8, 8, 16, 4)}, (16, 32), (16, 32, 16)),
    "dynunet": ({"n_stages": 3, "base_features": 4}, (8, 12), (8, 12, 20)),
    "vnet": ({"dropout_prob_down": 0.0, "dropout_prob_up": (0.0, 0.0)}, (16, 32), (16, 32, 16)),
    "unetr": ({"hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "feature_size": 4}, (16, 32), (16, 32, 16)),
    "swin_unetr": (
        {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "window_size": 4},
        (64, 96),
        (64, 64, 64),
    ),
    "lambda3d": (
        {"token_size": 4, "hidden_size": 16, "num_layers": 2, "feature_size": 4, "dim_k": 4, "heads": 2, "r": 3},
        (8, 12),
        (8, 12, 20),
    ),
}
for _size in "sblh":
    TINY[f"stunet_{_size}"] = ({"base_features": 4, "strides": [2, 2, 2, 1, 1]}, (8, 16), (8, 16, 24))
