"""AugmentConfig: nnU-Net defaults, JSON round trip, presets, validation."""

from __future__ import annotations

import json

import pytest

from focusseg.augment import AugmentConfig, preset, preset_names


def test_defaults_are_nnunet_v2() -> None:
    c = AugmentConfig()
    assert c.enabled and c.mirror and c.mirror_axes is None and c.p_mirror == 0.5
    assert (c.p_rotation, c.rotation_deg) == (0.2, (-30.0, 30.0))
    assert (c.p_scaling, c.scale_range) == (0.2, (0.7, 1.4))
    assert (c.p_noise, c.noise_variance) == (0.1, (0.0, 0.1))
    assert (c.p_blur, c.p_blur_per_channel, c.blur_sigma) == (0.2, 0.5, (0.5, 1.0))
    assert (c.p_brightness, c.brightness_range) == (0.15, (0.75, 1.25))
    assert (c.p_contrast, c.contrast_range) == (0.15, (0.75, 1.25))
    assert (c.p_lowres, c.p_lowres_per_channel, c.lowres_zoom) == (0.25, 0.5, (0.5, 1.0))
    assert (c.p_gamma, c.p_gamma_inverted, c.gamma_range) == (0.3, 0.1, (0.7, 1.5))
    assert preset("nnunet") == c


def test_json_round_trip() -> None:
    c = AugmentConfig(p_noise=0.3, mirror_axes=(0, 2), scale_range=(0.8, 1.2), gamma=False)
    text = json.dumps(c.to_dict())
    back = AugmentConfig.from_dict(json.loads(text))
    assert back == c
    assert back.mirror_axes == (0, 2) and isinstance(back.scale_range, tuple)


def test_presets() -> None:
    assert preset_names() == ["light", "nnunet", "none"]
    assert not preset("none").enabled
    light = preset("light")
    assert light.mirror and light.noise and light.gamma and light.contrast and light.brightness and light.blur
    assert not (light.rotation or light.scaling or light.lowres)
    c = AugmentConfig.from_dict({"preset": "light", "p_noise": 0.25})
    assert c.p_noise == 0.25 and not c.rotation
    assert AugmentConfig.from_dict(None) == AugmentConfig()
    with pytest.raises(KeyError, match="unknown augmentation preset"):
        preset("heavy")


@pytest.mark.parametrize(
    "bad",
    [{"p_noise": 1.5}, {"p_mirror": -0.1}, {"scale_range": (1.4, 0.7)}, {"lowres_zoom": (0.5, 1.5)},
     {"mirror_axes": (0, 0)}, {"mirror_axes": (3,)}, {"gamma_range": (0.0, 1.0)}, {"blur_sigma": (-1.0, 1.0)}],
)
def test_invalid_values_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        AugmentConfig(**bad)


def test_unknown_key_raises() -> None:
    with pytest.raises(ValueError, match="p_nosie"):
        AugmentConfig.from_dict({"p_nosie": 0.2})


def test_replace_validates() -> None:
    assert AugmentConfig().replace(p_blur=0.4).p_blur == 0.4
    with pytest.raises(ValueError):
        AugmentConfig().replace(p_blur=2.0)
