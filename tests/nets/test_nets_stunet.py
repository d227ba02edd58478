"""STU-Net: parameter counts of the paper (within 2 %), block structure, strides and divisors."""

from __future__ import annotations

import pytest
import torch

from focusseg.nets import build_network, network_divisors
from focusseg.nets.stunet import STUNET_PAPER_PARAMS, BasicResBlock
from focusseg.planning.profile import count_parameters


@pytest.mark.parametrize("size", ["s", "b", "l", "h"])
def test_parameter_count_matches_paper(size: str) -> None:
    # TotalSegmentator (pre-training data of the paper): 104 structures + background = 105 outputs.
    with torch.device("meta"):  # L and H have 0.44 G / 1.46 G parameters: never allocate them
        net = build_network(f"stunet_{size}", 1, 105)
    n = count_parameters(net)
    assert abs(n / STUNET_PAPER_PARAMS[size] - 1) < 0.02, (size, n)


def test_blocks_per_stage_and_projection() -> None:
    with torch.device("meta"):
        net = build_network("stunet_l", 1, 2)
    assert [len(stage) for stage in net.encoder] == [2] * 6
    assert [len(stage) for stage in net.decoder] == [2] * 5
    assert [stage[0].conv1.out_channels for stage in net.encoder] == [64, 128, 256, 512, 1024, 1024]
    # first block of every stage projects (even 1024 -> 1024), the others are identity residuals
    assert all(stage[0].proj is not None and stage[1].proj is None for stage in [*net.encoder, *net.decoder])
    assert net.decoder[0][0].conv1.in_channels == 2 * 1024


def test_res_block_formula() -> None:
    torch.manual_seed(0)
    blk = BasicResBlock(3, 2, 2).eval()
    x = torch.randn(1, 2, 4, 4, 4)
    act = torch.nn.functional.leaky_relu
    y = act(blk.norm1(blk.conv1(x)), 0.01)
    expected = act(blk.norm2(blk.conv2(y)) + x, 0.01)
    torch.testing.assert_close(blk(x), expected)
    with pytest.raises(ValueError):
        BasicResBlock(3, 2, 4)  # a shape change needs the projection


def test_anisotropic_strides_are_padded_to_five() -> None:
    kw = {"strides": [[1, 2, 2], 2, 2]}
    assert network_divisors("stunet_s", 3, **kw) == (4, 8, 8)
    net = build_network("stunet_s", 1, 2, deep_supervision=True, base_features=2, **kw).train()
    outs = net(torch.randn(1, 1, 8, 16, 16))
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 16, 16), (8, 8, 8), (4, 4, 4), (2, 2, 2), (2, 2, 2)]
