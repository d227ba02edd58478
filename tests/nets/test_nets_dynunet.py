"""Shapes, deep supervision and divisors of the U-Net family (unet, basic_unet, dynunet)."""

from __future__ import annotations

import pytest
import torch

from focusseg.nets import build_network, network_divisor, supports_deep_supervision
from focusseg.planning.profile import estimate_flops


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dynunet_deep_supervision_native_resolution(spatial_dims: int) -> None:
    net = build_network("dynunet", 2, 3, spatial_dims=spatial_dims, deep_supervision=True, n_stages=4, base_features=4)
    x = torch.randn(2, 2, *([16] * spatial_dims))
    net.train()
    outs = net(x)
    assert isinstance(outs, list) and len(outs) == 3  # full + n_stages - 2 heads
    for i, o in enumerate(outs):
        assert o.shape == (2, 3, *([16 // 2**i] * spatial_dims))
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 3, *([16] * spatial_dims))


def test_dynunet_anisotropic_strides_and_divisor() -> None:
    kw = {"kernel_sizes": [[1, 3, 3], 3, 3], "strides": [1, [1, 2, 2], 2], "base_features": 4}
    assert network_divisor("dynunet", **kw) == 4
    net = build_network("dynunet", 1, 2, deep_supervision=True, **kw).train()
    outs = net(torch.randn(1, 1, 6, 8, 12))
    assert [tuple(o.shape[2:]) for o in outs] == [(6, 8, 12), (6, 4, 6)]


def test_dynunet_rejects_bad_options() -> None:
    with pytest.raises(ValueError):
        build_network("dynunet", 1, 2, kernel_sizes=[3, 3])
    with pytest.raises(ValueError):
        build_network("dynunet", 1, 2, deep_supervision=True, n_stages=4, deep_supr_num=3)
    with pytest.raises(ValueError):
        build_network("unet", 1, 2, deep_supervision=True)
    assert supports_deep_supervision("dynunet") and not supports_deep_supervision("unet")


def test_estimate_flops_counts_one_conv_exactly() -> None:
    conv = torch.nn.Conv3d(2, 4, 3, padding=1, bias=False)
    # 2 FLOPs per multiply-add: 2 * C_out * C_in * k^3 * voxels
    assert estimate_flops(conv, (8, 8, 8), 2) == 2 * 4 * 2 * 27 * 8**3
