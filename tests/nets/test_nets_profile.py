"""Cost tools: FLOPs, saved activations, step time and describe_networks; build_network validation."""

from __future__ import annotations

import pytest
import torch

from focusseg.nets import build_network
from focusseg.planning.profile import count_parameters, describe_networks, estimate_activation_bytes, estimate_flops


def test_flops_on_meta_equal_flops_on_cpu() -> None:
    kw = {"channels": (4, 8, 16), "num_res_units": 1}
    cpu = build_network("unet", 1, 2, **kw)
    with torch.device("meta"):
        meta = build_network("unet", 1, 2, **kw)
    assert count_parameters(meta) == count_parameters(cpu)
    assert estimate_flops(meta, (16, 16, 16), 1) == estimate_flops(cpu, (16, 16, 16), 1) > 0


def test_activation_bytes_scale_with_batch() -> None:
    with torch.device("meta"):
        net = build_network("dynunet", 1, 2, n_stages=3, base_features=4)
    one = estimate_activation_bytes(net, (16, 16, 16), 1, batch_size=1)
    two = estimate_activation_bytes(net, (16, 16, 16), 1, batch_size=2)
    assert one > 4 * 16**3 * 4  # at least the first feature map, in float32
    assert two == 2 * one


def test_describe_networks_rows() -> None:
    rows = describe_networks(
        ["unet", "lambda3d"],
        (16, 16, 16),
        1,
        3,
        repeats=1,
        network_kwargs={
            "unet": {"channels": (4, 8, 16)},
            "lambda3d": {"token_size": 4, "hidden_size": 8, "num_layers": 2, "feature_size": 4, "dim_k": 4},
        },
    )
    assert [r["name"] for r in rows] == ["unet", "lambda3d"]
    for r in rows:
        assert r["params"] > 0 and r["gflops"] > 0 and r["activation_gib"] > 0 and r["step_s"] > 0
        assert r["device"] == "cpu"


def test_build_network_validates_the_patch() -> None:
    with pytest.raises(ValueError, match="divisible"):
        build_network("unet", 1, 2, patch_size=(24, 24, 20))
    with pytest.raises(ValueError, match="patch_size"):
        build_network("unetr", 1, 2)
    with pytest.raises(ValueError, match="spatial_dims"):
        build_network("stunet_s", 1, 2, spatial_dims=1)
    with pytest.raises(KeyError, match="known"):
        build_network("no_such_net", 1, 2)
