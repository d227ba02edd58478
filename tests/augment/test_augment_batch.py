"""BatchAugmenter: batched == per-sample, label values, identity, mirroring, probabilities, determinism, dtypes."""

from __future__ import annotations

import math

import pytest
import torch
from augment_helpers import ALL_ON, HALF, make_batch

from focusseg.augment import AugmentConfig, AugmentParams, BatchAugmenter, preset

SHAPES = {2: (24, 20), 3: (16, 20, 12)}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("config", [ALL_ON, HALF, AugmentConfig()], ids=["all_on", "half", "default"])
def test_batched_equals_per_sample(dims: int, config: AugmentConfig, gen: torch.Generator) -> None:
    """torchio's vectorisation fixture: the same drawn parameters on one sample alone give the same result."""
    aug = BatchAugmenter(config, spatial_dims=dims)
    images, labels = make_batch(4, 2, SHAPES[dims])
    params = aug.draw(4, SHAPES[dims], gen, n_channels=2)
    out_x, out_y = aug.apply(images, labels, params)
    for b in range(4):
        xb, yb = aug.apply(images[b:b + 1], labels[b:b + 1], params.select([b]))
        torch.testing.assert_close(xb, out_x[b:b + 1], rtol=1e-4, atol=1e-4)
        assert torch.equal(yb, out_y[b:b + 1])


@pytest.mark.parametrize("dims", [2, 3])
def test_shapes_dtypes_and_input_untouched(dims: int, gen: torch.Generator) -> None:
    images, labels = make_batch(3, 1, SHAPES[dims])
    before_x, before_y = images.clone(), labels.clone()
    out_x, out_y = BatchAugmenter(ALL_ON, spatial_dims=dims)(images, labels, gen)
    assert out_x.shape == images.shape and out_y.shape == labels.shape
    assert out_x.dtype == torch.float32 and out_y.dtype == torch.int64
    assert torch.isfinite(out_x).all()
    assert torch.equal(images, before_x) and torch.equal(labels, before_y)
    assert not torch.equal(out_x, images)


@pytest.mark.parametrize("dims", [2, 3])
def test_labels_keep_their_values(dims: int, gen: torch.Generator) -> None:
    aug = BatchAugmenter(ALL_ON, spatial_dims=dims)
    images, labels = make_batch(4, 1, SHAPES[dims], n_labels=4)
    labels[labels == 2] = 7  # non-consecutive values must survive nearest-neighbour resampling
    _, out = aug(images, labels, gen)
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())
    assert (out == 7).any()


@pytest.mark.parametrize("dims", [2, 3])
def test_identity_params_are_exact(dims: int, gen: torch.Generator) -> None:
    images, labels = make_batch(3, 2, SHAPES[dims])
    aug = BatchAugmenter(ALL_ON, spatial_dims=dims)
    x, y = aug.apply(images, labels, AugmentParams.identity(3, 2, SHAPES[dims]))
    assert torch.equal(x, images) and torch.equal(y, labels)
    x, y = BatchAugmenter(preset("none"), spatial_dims=dims)(images, labels, gen)
    assert torch.equal(x, images) and torch.equal(y, labels)


@pytest.mark.parametrize("dims", [2, 3])
def test_mirroring_twice_is_identity_and_matches_flip(dims: int, gen: torch.Generator) -> None:
    images, labels = make_batch(6, 1, SHAPES[dims])
    aug = BatchAugmenter(ALL_ON.replace(p_mirror=0.5), spatial_dims=dims)
    params = aug.draw(6, SHAPES[dims], gen).with_only("mirror")
    assert params.mirror.any() and not params.mirror.all()
    x1, y1 = aug.apply(images, labels, params)
    x2, y2 = aug.apply(x1, y1, params)
    assert torch.equal(x2, images) and torch.equal(y2, labels)
    for b in range(6):
        axes = [2 + d for d in range(dims) if params.mirror[b, d]]
        assert torch.equal(x1[b:b + 1], images[b:b + 1].flip(axes) if axes else images[b:b + 1])
        assert torch.equal(y1[b:b + 1], labels[b:b + 1].flip(axes) if axes else labels[b:b + 1])


def test_mirror_axes_restricts_flips(gen: torch.Generator) -> None:
    params = BatchAugmenter(AugmentConfig(p_mirror=1.0, mirror_axes=(1,))).draw(8, (4, 4, 4), gen)
    assert params.mirror[:, 1].all() and not params.mirror[:, [0, 2]].any()
    with pytest.raises(ValueError):
        BatchAugmenter(AugmentConfig(mirror_axes=(2,)), spatial_dims=2)


def test_probabilities_match_config() -> None:
    """Over many draws, the fraction of samples (or channels) with each transform is near its probability."""
    n = 20000
    cfg = AugmentConfig()
    params = BatchAugmenter(cfg).draw(n, (8, 8, 8), torch.Generator().manual_seed(7), n_channels=2)
    expected = {
        "mirror": cfg.p_mirror, "rotate": cfg.p_rotation, "scale_on": cfg.p_scaling, "noise": cfg.p_noise,
        "blur": cfg.p_blur * cfg.p_blur_per_channel, "bright": cfg.p_brightness, "contrast": cfg.p_contrast,
        "lowres": cfg.p_lowres * cfg.p_lowres_per_channel, "gamma_inv": cfg.p_gamma_inverted, "gamma": cfg.p_gamma,
    }
    for name, p in expected.items():
        mask = getattr(params, name).float()
        tol = 5 * math.sqrt(p * (1 - p) / mask.numel())
        assert abs(mask.mean().item() - p) < tol, name
    # a sample blurs at least one channel with p_blur * (1 - (1 - p_blur_per_channel)^C)
    frac = params.blur.any(1).float().mean().item()
    assert abs(frac - cfg.p_blur * 0.75) < 0.02
    # drawn values lie in their ranges; untransformed samples carry neutral values
    deg = params.angles[params.rotate].abs().max().item() * 180 / math.pi
    assert 25 < deg <= 30 and params.angles[~params.rotate].abs().max() == 0
    s = params.scale[params.scale_on]
    assert 0.7 <= s.min() and s.max() <= 1.4 and (params.scale[~params.scale_on] == 1).all()
    assert 0.5 <= params.blur_sigma.min() and params.blur_sigma.max() <= 1.0
    assert 0.5 <= params.lowres_zoom.min() and params.lowres_zoom.max() <= 1.0
    assert 0.0 <= params.noise_std.min() and params.noise_std.max() <= 0.1
    for name, lo, hi in [("contrast_factor", 0.75, 1.25), ("gamma_value", 0.7, 1.5), ("bright_factor", 0.75, 1.25)]:
        v = getattr(params, name)
        assert lo <= v.min() and v.max() <= hi, name
    # batchgenerators' split draw: half of the gammas below 1
    assert abs((params.gamma_value < 1).float().mean().item() - 0.5) < 0.02


def test_disabled_flags_and_stable_stream() -> None:
    """A disabled transform never fires, and switching it off leaves the other draws unchanged."""
    a = BatchAugmenter(AugmentConfig()).draw(64, (8, 8, 8), torch.Generator().manual_seed(3))
    b = BatchAugmenter(AugmentConfig(rotation=False, noise=False)).draw(64, (8, 8, 8), torch.Generator().manual_seed(3))
    assert not b.rotate.any() and not b.noise.any() and a.rotate.any()
    assert torch.equal(a.mirror, b.mirror) and torch.equal(a.gamma, b.gamma) and torch.equal(a.scale, b.scale)
    light = BatchAugmenter(preset("light")).draw(256, (8, 8, 8), torch.Generator().manual_seed(3))
    assert not (light.rotate.any() or light.scale_on.any() or light.lowres.any()) and light.mirror.any()


@pytest.mark.parametrize("dims", [2, 3])
def test_determinism(dims: int) -> None:
    images, labels = make_batch(3, 1, SHAPES[dims])
    aug = BatchAugmenter(HALF, spatial_dims=dims)
    x1, y1 = aug(images, labels, torch.Generator().manual_seed(11))
    x2, y2 = aug(images, labels, torch.Generator().manual_seed(11))
    x3, _ = aug(images, labels, torch.Generator().manual_seed(12))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


def test_bfloat16_input(gen: torch.Generator) -> None:
    images, labels = make_batch(2, 1, SHAPES[3])
    aug = BatchAugmenter(ALL_ON)
    params = aug.draw(2, SHAPES[3], gen)
    ref, ref_y = aug.apply(images, labels, params)
    out, out_y = aug.apply(images.to(torch.bfloat16), labels, params)
    assert out.dtype == torch.bfloat16 and torch.equal(out_y, ref_y)
    assert (out.float() - ref).abs().mean() < 0.05 * ref.abs().mean()


def test_labels_optional_and_bad_shapes(gen: torch.Generator) -> None:
    images, labels = make_batch(2, 1, SHAPES[3])
    aug = BatchAugmenter(ALL_ON)
    x, y = aug(images, None, gen)
    assert y is None and x.shape == images.shape
    params = aug.draw(2, SHAPES[3], gen)
    with pytest.raises(ValueError):
        aug.apply(images[:1], labels[:1], params)
    with pytest.raises(ValueError):
        aug.apply(images.repeat(1, 2, 1, 1, 1), labels, params)
    with pytest.raises(ValueError):
        aug.draw(2, (8, 8), gen)
    with pytest.raises(ValueError):
        BatchAugmenter(spatial_dims=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda(gen: torch.Generator) -> None:
    images, labels = make_batch(2, 1, SHAPES[3])
    aug = BatchAugmenter(ALL_ON)
    params = aug.draw(2, SHAPES[3], gen)
    x, y = aug.apply(images.cuda(), labels.cuda(), params)
    assert x.is_cuda and y.is_cuda
    ref_x, ref_y = aug.apply(images, labels, params.with_only("mirror", "rotate", "scale_on", "contrast", "gamma"))
    xc, yc = aug.apply(images.cuda(), labels.cuda(), params.with_only("mirror", "rotate", "scale_on", "contrast",
                                                                         "gamma"))
    torch.testing.assert_close(xc.cpu(), ref_x, rtol=1e-3, atol=1e-3)
    assert (yc.cpu() != ref_y).float().mean() < 1e-3
