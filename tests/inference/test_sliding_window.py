from __future__ import annotations

import pytest
import torch
from inference_helpers import (
    CountingNet,
    TinyConvNet,
    reference_gaussian,
    reference_sliding_window,
    reference_starts,
)

from focusseg.inference import (
    BACKGROUND_LOGIT,
    compute_steps,
    gaussian_importance_map,
    mirror_combinations,
    nonzero_mask,
    pad_to_patch,
    sliding_window_predict,
)

torch.manual_seed(0)


@pytest.mark.parametrize(
    "size, patch, overlap, expected",
    [
        (110, 64, 0.5, [0, 23, 46]),  # REFERENCE_FACTS: nnU-Net 0/23/46 (MONAI 0/32/46)
        (64, 64, 0.5, [0]),
        (100, 50, 0.5, [0, 25, 50]),
        (129, 64, 0.5, [0, 22, 43, 65]),
        (97, 64, 0.5, [0, 16, 33]),  # 16.5 rounds half to even, like np.round in nnU-Net
        (110, 64, 0.7, [0, 15, 31, 46]),
        (65, 64, 0.0, [0, 1]),
    ],
)
def test_window_starts_match_nnunet(size, patch, overlap, expected):
    assert compute_steps((size,), (patch,), overlap) == [expected]
    assert reference_starts(size, patch, overlap) == expected


def test_window_starts_per_axis_and_bad_input():
    assert compute_steps((110, 64, 100), (64, 64, 50)) == [[0, 23, 46], [0], [0, 25, 50]]
    with pytest.raises(ValueError):
        compute_steps((10,), (16,))
    with pytest.raises(ValueError):
        compute_steps((20,), (16,), overlap=1.0)


@pytest.mark.parametrize("patch", [(16, 16, 16), (12, 9, 20), (32, 24)])
def test_gaussian_matches_independent_formula(patch):
    g = gaussian_importance_map(patch)
    ref = reference_gaussian(patch)
    assert g.dtype == torch.float32 and tuple(g.shape) == patch
    torch.testing.assert_close(g.double(), ref, atol=1e-6, rtol=1e-5)
    assert g.max() == 1.0 and g[tuple(p // 2 for p in patch)] == 1.0 and (g > 0).all()
    assert gaussian_importance_map(patch) is g  # cached per (patch, sigma, device, dtype)
    assert gaussian_importance_map(patch, dtype=torch.float64) is not g


def test_pad_to_patch_centres_and_unpads():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    padded, region = pad_to_patch(x, (8, 4))
    assert padded.shape == (2, 8, 5)
    torch.testing.assert_close(padded[region], x)
    assert padded[:, :2].abs().sum() == 0 and padded[:, 5:].abs().sum() == 0  # below = 5 // 2, above = 3


@pytest.mark.parametrize(
    "size, sigma_scale", [((9, 11, 7), 1 / 8), ((40, 33, 20), 1 / 8), ((16, 16, 16), 0.5), ((23, 17, 31), 0.05)]
)
def test_linear_network_equals_whole_image(size, sigma_scale):
    net = torch.nn.Conv3d(2, 3, 1)
    x = torch.randn(2, *size)
    out = sliding_window_predict(net, x, (16, 16, 16), overlap=0.5, batch_size=3, sigma_scale=sigma_scale)
    assert out.shape == (3, *size) and out.dtype == torch.float32 and out.device.type == "cpu"
    with torch.no_grad():
        whole = net(x[None])[0]
    torch.testing.assert_close(out, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("patch, sigma_scale", [((64, 64, 64), 1 / 8), ((40, 56, 40), 1 / 8), ((9, 12), 1 / 8),
                                                 ((16, 16, 16), 0.5)])
def test_gaussian_is_outer_product_of_axis_factors(patch, sigma_scale):
    import numpy as np

    from focusseg.inference.windows import gaussian_axis_factors, summed_axis_weights

    # a narrow Gaussian is truncated to zeros that nnU-Net replaces by the minimum: not separable -> None
    assert gaussian_axis_factors((16, 16, 16), 0.05) is None
    factors = gaussian_axis_factors(patch, sigma_scale)
    assert factors is not None and [f.shape for f in factors] == [(p,) for p in patch]
    outer = factors[0]
    for f in factors[1:]:
        outer = np.multiply.outer(outer, f)
    g = gaussian_importance_map(patch, sigma_scale, "cpu", torch.float64).numpy()
    np.testing.assert_allclose(outer, g, rtol=1e-12)
    # the per-axis sums over a window grid multiply to the whole-volume weight map
    size = tuple(p + 13 for p in patch)
    steps = compute_steps(size, patch, 0.5)
    full = np.zeros(size)
    import itertools

    for st in itertools.product(*steps):
        full[tuple(slice(s, s + p) for s, p in zip(st, patch))] += g
    w = summed_axis_weights(size, patch, steps, factors)
    prod = w[0]
    for v in w[1:]:
        prod = np.multiply.outer(prod, v)
    np.testing.assert_allclose(prod, full, rtol=1e-10)


def test_separable_normalisation_equals_whole_weight_map():
    """No mask -> per-axis weights; an all-True mask -> the whole-volume map path: same logits."""
    net = TinyConvNet()
    x = torch.randn(2, 29, 23, 19)
    fast = sliding_window_predict(net, x, (12, 10, 8), overlap=0.5, batch_size=3)
    full = sliding_window_predict(net, x, (12, 10, 8), overlap=0.5, batch_size=3,
                                  mask=torch.ones(x.shape[1:], dtype=torch.bool))
    torch.testing.assert_close(fast, full, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("overlap", [0.5, 0.7])
def test_matches_explicit_loop_reference(overlap):
    net = TinyConvNet()
    x = torch.randn(2, 21, 16, 12)
    out = sliding_window_predict(net, x, (12, 10, 8), overlap=overlap, batch_size=2)
    ref = reference_sliding_window(net, x, (12, 10, 8), overlap)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the windows really matter for this network (zero padding at window borders)
        assert (out - net(x[None])[0]).abs().max() > 1e-3


def test_mirror_tta_matches_explicit_loop_reference():
    net = TinyConvNet()
    x = torch.randn(2, 22, 18, 14)
    out = sliding_window_predict(net, x, (12, 10, 8), mirror_axes=(0, 1, 2), batch_size=5)
    ref = reference_sliding_window(net, x, (12, 10, 8), 0.5, mirror_axes=(0, 1, 2))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_mirror_tta_single_window_is_mean_of_flipped_predictions():
    net = TinyConvNet()
    x = torch.randn(2, 10, 12, 8)
    out = sliding_window_predict(net, x, (10, 12, 8), mirror_axes=(0, 2))
    with torch.no_grad():
        preds = [
            torch.flip(net(torch.flip(x[None], [a + 2 for a in f])), [a + 2 for a in f])[0]
            for f in [(), (0,), (2,), (0, 2)]
        ]
    torch.testing.assert_close(out, torch.stack(preds).mean(0), atol=1e-5, rtol=1e-5)
    assert mirror_combinations((2, 0)) == [(), (0,), (2,), (0, 2)]
    assert len(mirror_combinations((0, 1, 2))) == 8


def test_matches_monai_when_placements_agree():
    monai_inferers = pytest.importorskip("monai.inferers")
    net = TinyConvNet().eval()
    patch = (16, 16, 12)
    x = torch.randn(2, 16 + 2 * 8, 16 + 8, 12 + 6 * 2)  # I = P + k * int(P * (1 - overlap)) on every axis
    assert compute_steps(x.shape[1:], patch) == [[0, 8, 16], [0, 8], [0, 6, 12]]
    ours = sliding_window_predict(net, x, patch, overlap=0.5, batch_size=4)
    with torch.no_grad():
        theirs = monai_inferers.sliding_window_inference(
            x[None],
            patch,
            4,
            net,
            overlap=0.5,
            mode="gaussian",
            roi_weight_map=gaussian_importance_map(patch)[None, None],
        )[0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_2d_image_with_mirroring_and_padding():
    net = TinyConvNet(1, 2, spatial_dims=2)
    x = torch.randn(1, 30, 7)  # second axis smaller than the patch: padded, then cut back
    out = sliding_window_predict(net, x, (16, 12), mirror_axes=(0, 1))
    assert out.shape == (2, 30, 7)
    padded, region = pad_to_patch(x, (16, 12))
    ref = reference_sliding_window(net, padded, (16, 12), 0.5, mirror_axes=(0, 1))
    torch.testing.assert_close(out, ref[region], atol=1e-5, rtol=1e-5)


def test_batching_list_output_and_mode_restored():
    inner = TinyConvNet()
    net = CountingNet(inner, as_list=True).train()
    x = torch.randn(2, 20, 12, 12)
    out = sliding_window_predict(net, x, (12, 12, 12), mirror_axes=(1,), batch_size=3, progress=True)
    n_windows = len(compute_steps((20, 12, 12), (12, 12, 12))[0])  # 3 along x, 1 elsewhere
    assert net.samples == n_windows * 2 and net.calls == 3  # 6 (window, mirror) items: both mirrors of 1 window
    net.calls = net.samples = 0
    sliding_window_predict(net, x, (12, 12, 12), mirror_axes=(1, 2), batch_size=2)
    assert net.samples == n_windows * 4 and net.calls == 8  # 2 windows x 1 mirror, then 1 window x 1 mirror
    assert net.training  # previous mode restored
    ref = sliding_window_predict(inner, x, (12, 12, 12), mirror_axes=(1,), batch_size=1)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


def test_identity_network_with_mirrors_returns_input():
    x = torch.randn(2, 20, 13, 9)
    for bs in (1, 3, 8, 16):
        out = sliding_window_predict(torch.nn.Identity(), x, (8, 8, 8), mirror_axes=(0, 1, 2), batch_size=bs)
        torch.testing.assert_close(out, x, atol=1e-6, rtol=1e-6)


def test_mask_skips_windows_and_fills_background():
    net = CountingNet(torch.nn.Conv3d(1, 3, 1))
    x = torch.zeros(1, 32, 16, 16)
    x[:, 2:6, 2:6, 2:6] = torch.rand(1, 4, 4, 4) + 0.5
    mask = nonzero_mask(x)
    out = sliding_window_predict(net, x, (8, 16, 16), mask=mask, batch_size=1)
    assert net.calls == 2  # windows start at 0, 4, ..., 24 along x; only those starting at 0 and 4 hold mask
    with torch.no_grad():
        whole = net(x[None])[0]
    torch.testing.assert_close(out[:, :12], whole[:, :12], atol=1e-5, rtol=1e-5)
    assert (out[0, 12:] == BACKGROUND_LOGIT).all() and (out[1:, 12:] == 0).all()
    assert out.double().softmax(0)[0, 12:].min() > 1 - 1e-8


def test_empty_mask_gives_background_and_sigmoid_convention():
    x = torch.randn(1, 10, 10, 10)
    mask = torch.zeros(10, 10, 10, dtype=torch.bool)
    out = sliding_window_predict(torch.nn.Conv3d(1, 1, 1), x, (8, 8, 8), mask=mask)
    assert out.shape == (1, 10, 10, 10) and (out == -BACKGROUND_LOGIT).all()
    with pytest.raises(ValueError):
        sliding_window_predict(torch.nn.Conv3d(1, 1, 1), x, (8, 8, 8), mask=mask[0])


def test_bf16_autocast_and_channels_last_close_to_fp32():
    net = TinyConvNet()
    x = torch.randn(2, 20, 16, 16)
    ref = sliding_window_predict(net, x, (12, 12, 12))
    bf16 = sliding_window_predict(net, x, (12, 12, 12), amp_dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, ref, atol=5e-2, rtol=5e-2)
    cl = sliding_window_predict(net, x, (12, 12, 12), channels_last_3d=True)
    torch.testing.assert_close(cl, ref, atol=1e-5, rtol=1e-5)


def test_bad_arguments():
    net = torch.nn.Conv3d(1, 2, 1)
    x = torch.randn(1, 8, 8, 8)
    with pytest.raises(ValueError):
        sliding_window_predict(net, x, (8, 8))
    with pytest.raises(ValueError):
        sliding_window_predict(net, x, (8, 8, 8), mirror_axes=(3,))
    with pytest.raises(ValueError):
        sliding_window_predict(net, x, (8, 8, 8), batch_size=0)


@pytest.mark.slow
def test_torch_compile_flag():
    net = TinyConvNet()
    x = torch.randn(2, 16, 16, 16)
    ref = sliding_window_predict(net, x, (12, 12, 12))
    try:
        out = sliding_window_predict(net, x, (12, 12, 12), compile=True)
    except Exception as e:  # no C++ toolchain for inductor on this machine
        pytest.skip(f"torch.compile unavailable: {type(e).__name__}")
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_float64_image_and_float64_network():
    net = torch.nn.Conv3d(1, 2, 1)
    x = torch.randn(1, 10, 12, 9, dtype=torch.float64)
    out = sliding_window_predict(net, x, (8, 8, 8))  # windows cast to the network's float32
    assert out.dtype == torch.float32
    out64 = sliding_window_predict(net.double(), x, (8, 8, 8))
    with torch.no_grad():
        torch.testing.assert_close(out64, net(x[None])[0].float(), atol=1e-6, rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp_dtype", [None, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(amp_dtype):
    net = TinyConvNet()
    x = torch.randn(2, 20, 16, 16)
    ref = sliding_window_predict(net, x, (12, 12, 12), mirror_axes=(0,))
    out = sliding_window_predict(net, x.cuda(), (12, 12, 12), mirror_axes=(0,), device="cuda", amp_dtype=amp_dtype)
    assert out.device.type == "cpu" and out.dtype == torch.float32
    tol = 1e-4 if amp_dtype is None else 5e-2
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    on_gpu = sliding_window_predict(net, x, (12, 12, 12), out_device="cuda")
    assert on_gpu.device.type == "cuda"
