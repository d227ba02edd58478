"""Lambda layer: translation equivariance of its position part, linear cost, formula on a hand case."""

from __future__ import annotations

import pytest
import torch

from focusseg.nets.lambda3d import LambdaLayer
from focusseg.planning.profile import estimate_flops


def test_position_lambdas_are_translation_equivariant() -> None:
    """Shift the input (circularly): content lambdas are permutation invariant, position lambdas are a
    zero-padded local conv, so outputs agree away from the borders and the wrapped slab."""
    torch.manual_seed(0)
    r, s = 3, 2
    layer = LambdaLayer(4, 8, dim_k=4, heads=2, dim_u=2, r=r).eval()
    x = torch.randn(1, 4, 12, 10, 11)
    with torch.no_grad():
        y = layer(x)
        y_shift = layer(torch.roll(x, shifts=s, dims=2))
    m = r // 2
    # y_shift[i] == y[i - s] wherever neither receptive field touches the border or the wrapped slab
    torch.testing.assert_close(y_shift[:, :, s + m : 12 - m], y[:, :, m : 12 - m - s], rtol=1e-4, atol=1e-5)
    # and the position part really matters: without it the layer is shift-invariant in a different way
    assert not torch.allclose(y_shift[:, :, s + m : 12 - m], y[:, :, s + m : 12 - m], atol=1e-3)


def test_position_part_alone_is_equivariant() -> None:
    torch.manual_seed(1)
    layer = LambdaLayer(3, 6, dim_k=2, heads=3, dim_u=1, r=5)
    v = torch.randn(2, 1, 2, 9 * 9 * 9)
    lam = layer.position_lambdas(v, [9, 9, 9]).reshape(2, 2, 2, 9, 9, 9)
    lam_s = layer.position_lambdas(torch.roll(v.reshape(2, 1, 2, 9, 9, 9), 1, dims=-1).reshape(2, 1, 2, -1),
                                   [9, 9, 9]).reshape(2, 2, 2, 9, 9, 9)  # fmt: skip
    torch.testing.assert_close(lam_s[..., 3:7], lam[..., 2:6])


def test_cost_is_linear_in_voxels() -> None:
    layer = LambdaLayer(16, 16, dim_k=8, heads=4, dim_u=1, r=5)
    small = estimate_flops(layer, (8, 8, 8), 16)
    large = estimate_flops(layer, (16, 16, 16), 16)
    assert large / small == pytest.approx(8.0, rel=0.02)


def test_content_lambda_formula_on_uniform_keys() -> None:
    """Constant keys -> softmax = 1/n, content lambda = mean value; r=None -> y = q^T lambda_c."""
    layer = LambdaLayer(2, 2, dim_k=1, heads=1, dim_u=1, r=None).eval()
    with torch.no_grad():
        layer.to_k.weight.zero_()
        for m in (layer.to_q, layer.to_v):
            m.weight.copy_(torch.eye(2)[: m.weight.shape[0]].reshape(m.weight.shape))
    x = torch.randn(1, 2, 3, 3, 3)
    q = layer.norm_q(x[:, :1]).flatten(2)  # (1, 1, n)
    v = layer.norm_v(x).flatten(2)  # (1, 2, n)
    expected = q * v.mean(-1, keepdim=True)  # y_{v,n} = q_n * mean_m v_m
    torch.testing.assert_close(layer(x).flatten(2), expected)


def test_bad_options() -> None:
    with pytest.raises(ValueError):
        LambdaLayer(4, 6, heads=4)
    with pytest.raises(ValueError):
        LambdaLayer(4, 4, r=4)
