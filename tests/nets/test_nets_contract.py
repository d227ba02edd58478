"""Every registered network: output shapes in 2D and 3D, deep supervision lists, a short overfit."""

from __future__ import annotations

import pytest
import torch
from nets_helpers import TINY
from torch.nn import functional as F

from focusseg.nets import build_network, network_divisors, network_names, supports_deep_supervision


def test_every_registered_network_has_a_tiny_config() -> None:
    assert sorted(TINY) == network_names()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_output_shape(tiny_name: str, spatial_dims: int) -> None:
    kwargs, patch2, patch3 = TINY[tiny_name]
    patch = patch2 if spatial_dims == 2 else patch3
    assert all(p % d == 0 for p, d in zip(patch, network_divisors(tiny_name, spatial_dims, **kwargs)))
    torch.manual_seed(0)
    net = build_network(tiny_name, 1, 3, spatial_dims=spatial_dims, patch_size=patch, **kwargs).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, *patch))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, *patch)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", [n for n in sorted(TINY) if n.startswith(("dynunet", "stunet"))])
def test_deep_supervision_list_highest_resolution_first(name: str) -> None:
    kwargs, _, patch = TINY[name]
    kwargs = {k: v for k, v in kwargs.items() if k != "strides"}  # default strides: all stride 2
    if name.startswith("stunet"):
        patch = (64, 64, 32)  # 5 poolings: 2x2x1 at the bottom
    else:
        kwargs["n_stages"] = 4
        patch = (16, 16, 8)
    assert supports_deep_supervision(name)
    net = build_network(name, 2, 3, deep_supervision=True, **kwargs).train()
    outs = net(torch.randn(1, 2, *patch))
    assert isinstance(outs, list) and len(outs) >= 2
    for i, o in enumerate(outs):
        assert o.shape == (1, 3, *(p // 2**i for p in patch))
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, *patch)).shape == (1, 3, *patch)


def test_overfit_one_batch(tiny_name: str) -> None:
    """A few Adam steps on one tiny batch must lower the cross-entropy clearly."""
    kwargs, patch2, patch3 = TINY[tiny_name]
    heavy = tiny_name in ("vnet", "swin_unetr")  # fixed 16-256 channels / slow window attention in 3D
    patch = patch2 if heavy else patch3
    torch.manual_seed(0)
    net = build_network(tiny_name, 1, 2, spatial_dims=len(patch), patch_size=patch, **kwargs).train()
    x = torch.randn(2, 1, *patch)
    y = (x > 0.5).long()[:, 0]  # learnable from the voxel's own intensity
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
