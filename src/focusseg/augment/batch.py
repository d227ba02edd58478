"""Batched augmentation on the training device: draw every random parameter first, then apply them.

``draw`` uses a CPU ``torch.Generator`` and returns an :class:`AugmentParams` (CPU tensors), so a batch's
augmentation is reproducible and equals augmenting each sample alone with its row of the parameters (torchio's
split of ``get_params`` from ``apply_transform``). ``apply`` runs vectorised on the images' device, in nnU-Net v2's
order: rotation+scaling -> noise -> blur -> brightness -> contrast -> low resolution -> gamma (inverted) -> gamma
-> mirroring.

Every parameter is drawn, in a fixed order, whether its transform is enabled or not, so switching one transform
off does not change the draws of the others. Images are processed in float32 and returned in their input dtype;
labels keep theirs. Details: ``docs/augmentation.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from . import intensity as I
from .config import AugmentConfig
from .spatial import mirror, resample, rotation_matrices


@dataclass(frozen=True)
class AugmentParams:
    """Every random choice for one batch; masks are bool, ``B`` samples, ``C`` channels, ``D`` spatial axes.

    Spatial: ``mirror (B, D)``, ``rotate (B,)``, ``angles (B, 3 | 1)`` radians, ``scale_on (B,)``,
    ``scale (B,)``. Intensity: ``noise (B,)``, ``noise_std (B,)``, ``noise_seed (B,)`` int64; per channel
    ``(B, C)``: ``blur``/``blur_sigma``, ``bright``/``bright_factor``, ``contrast``/``contrast_factor``,
    ``lowres``/``lowres_zoom``, ``gamma_inv``/``gamma_inv_value``, ``gamma``/``gamma_value``.
    """

    spatial_shape: tuple[int, ...]
    mirror: Tensor
    rotate: Tensor
    angles: Tensor
    scale_on: Tensor
    scale: Tensor
    noise: Tensor
    noise_std: Tensor
    noise_seed: Tensor
    blur: Tensor
    blur_sigma: Tensor
    bright: Tensor
    bright_factor: Tensor
    contrast: Tensor
    contrast_factor: Tensor
    lowres: Tensor
    lowres_zoom: Tensor
    gamma_inv: Tensor
    gamma_inv_value: Tensor
    gamma: Tensor
    gamma_value: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.rotate.shape[0])

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "spatial_shape"}

    def select(self, index: Sequence[int] | Tensor) -> AugmentParams:
        """The parameters of the samples in ``index`` (to replay them on a sub-batch or on one sample)."""
        idx = torch.as_tensor(index, dtype=torch.long).flatten()
        return dataclasses.replace(self, **{k: v[idx] for k, v in self.tensors().items()})

    def with_only(self, *names: str) -> AugmentParams:
        """A copy where every mask not named is cleared (e.g. ``with_only("mirror")``)."""
        masks = ("mirror", "rotate", "scale_on", "noise", "blur", "bright", "contrast", "lowres", "gamma_inv",
                 "gamma")
        return dataclasses.replace(
            self, **{m: torch.zeros_like(getattr(self, m)) for m in masks if m not in names})

    @classmethod
    def identity(cls, batch_size: int, n_channels: int, spatial_shape: Sequence[int]) -> AugmentParams:
        """Parameters that change nothing."""
        b, c, d = batch_size, n_channels, len(spatial_shape)
        f = torch.zeros(b, dtype=torch.bool)
        fc = torch.zeros(b, c, dtype=torch.bool)
        one, onec = torch.ones(b), torch.ones(b, c)
        return cls(tuple(int(s) for s in spatial_shape), torch.zeros(b, d, dtype=torch.bool), f,
                   torch.zeros(b, 3 if d == 3 else 1), f, one, f, torch.zeros(b), torch.zeros(b, dtype=torch.long),
                   fc, onec, fc, onec, fc, onec, fc, onec, f, onec, f, onec)


def _uniform(g: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _coin(g: torch.Generator, shape: tuple[int, ...], p: float, on: bool) -> Tensor:
    return (torch.rand(shape, generator=g) < p) & on


def _split_range(g: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
    """batchgenerators' draw for contrast and gamma: with p 0.5 (if lo < 1) from [lo, 1), else [max(lo, 1), hi)."""
    low = _uniform(g, shape, lo, 1.0) if lo < 1 else torch.zeros(shape)
    high = _uniform(g, shape, max(lo, 1.0), hi)
    pick_low = (torch.rand(shape, generator=g) < 0.5) & (lo < 1)
    return torch.where(pick_low, low, high)


class BatchAugmenter:
    """nnU-Net-style augmentation of ``images (B, C, *S)`` float and ``labels (B, 1, *S)`` int on their device.

    ``spatial_dims`` is 2 or 3. Call it as ``augmenter(images, labels, generator)`` or split the two steps:
    ``params = augmenter.draw(B, S, generator, n_channels=C)``; ``augmenter.apply(images, labels, params)``.
    """

    def __init__(self, config: AugmentConfig | None = None, spatial_dims: int = 3) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.config = config if config is not None else AugmentConfig()
        self.spatial_dims = spatial_dims
        axes = self.config.mirror_axes if self.config.mirror_axes is not None else tuple(range(spatial_dims))
        if any(a >= spatial_dims for a in axes):
            raise ValueError(f"mirror_axes {axes} do not exist in {spatial_dims}D")
        self.mirror_axes = axes

    def draw(self, batch_size: int, spatial_shape: Sequence[int], generator: torch.Generator,
             n_channels: int = 1) -> AugmentParams:
        """All random parameters for a batch, drawn from a CPU ``generator`` (see the module docstring)."""
        cfg, g, d = self.config, generator, self.spatial_dims
        if len(spatial_shape) != d:
            raise ValueError(f"spatial_shape {tuple(spatial_shape)} is not {d}D")
        b, bc = (batch_size,), (batch_size, n_channels)
        on = cfg.enabled
        axis_on = torch.tensor([a in self.mirror_axes for a in range(d)])
        mirror_mask = _coin(g, (batch_size, d), cfg.p_mirror, on and cfg.mirror) & axis_on
        rotate = _coin(g, b, cfg.p_rotation, on and cfg.rotation)
        lo, hi = (math.radians(v) for v in cfg.rotation_deg)
        angles = _uniform(g, (batch_size, 3 if d == 3 else 1), lo, hi) * rotate[:, None]
        scale_on = _coin(g, b, cfg.p_scaling, on and cfg.scaling)
        scale = torch.where(scale_on, _uniform(g, b, *cfg.scale_range), torch.ones(b))
        noise = _coin(g, b, cfg.p_noise, on and cfg.noise)
        noise_std = _uniform(g, b, *cfg.noise_variance)
        noise_seed = torch.randint(0, 2**62, b, generator=g)
        blur = _coin(g, b, cfg.p_blur, on and cfg.blur)[:, None] & _coin(g, bc, cfg.p_blur_per_channel, True)
        blur_sigma = _uniform(g, bc, *cfg.blur_sigma)
        bright = _coin(g, b, cfg.p_brightness, on and cfg.brightness)[:, None].expand(bc).clone()
        bright_factor = _uniform(g, bc, *cfg.brightness_range)
        contrast = _coin(g, b, cfg.p_contrast, on and cfg.contrast)[:, None].expand(bc).clone()
        contrast_factor = _split_range(g, bc, *cfg.contrast_range)
        lowres = _coin(g, b, cfg.p_lowres, on and cfg.lowres)[:, None] & _coin(g, bc, cfg.p_lowres_per_channel, True)
        lowres_zoom = _uniform(g, bc, *cfg.lowres_zoom)
        gamma_inv = _coin(g, b, cfg.p_gamma_inverted, on and cfg.gamma)
        gamma_inv_value = _split_range(g, bc, *cfg.gamma_range)
        gamma = _coin(g, b, cfg.p_gamma, on and cfg.gamma)
        gamma_value = _split_range(g, bc, *cfg.gamma_range)
        return AugmentParams(
            tuple(int(s) for s in spatial_shape), mirror_mask, rotate, angles, scale_on, scale, noise, noise_std,
            noise_seed, blur, blur_sigma, bright, bright_factor, contrast, contrast_factor,
            lowres, lowres_zoom, gamma_inv, gamma_inv_value, gamma, gamma_value)

    def apply(self, images: Tensor, labels: Tensor | None, params: AugmentParams) -> tuple[Tensor, Tensor | None]:
        """Apply drawn ``params`` to ``images (B, C, *S)`` and ``labels (B, 1, *S)`` (or ``None``); shapes kept."""
        bsz, nch, shape = images.shape[0], images.shape[1], tuple(images.shape[2:])
        if len(shape) != self.spatial_dims or shape != params.spatial_shape or bsz != params.batch_size:
            raise ValueError(f"images {tuple(images.shape)} do not match params for batch {params.batch_size} "
                             f"and shape {params.spatial_shape}")
        if params.blur.shape[1] != nch:
            raise ValueError(f"params drawn for {params.blur.shape[1]} channels, images have {nch}")
        if labels is not None and (labels.shape[0] != bsz or tuple(labels.shape[2:]) != shape):
            raise ValueError(f"labels {tuple(labels.shape)} do not match images {tuple(images.shape)}")
        dtype = images.dtype
        x = images.to(torch.float32, copy=True)
        y = labels
        spatial = params.rotate | params.scale_on
        if bool(spatial.any()):
            idx = spatial.nonzero().flatten()
            angles = params.angles[idx].to(torch.float64) * params.rotate[idx, None]
            scale = torch.where(params.scale_on[idx], params.scale[idx].to(torch.float64), 1.0)
            mats = rotation_matrices(angles, self.spatial_dims) * scale[:, None, None]
            if idx.numel() == bsz:
                x, y = resample(x, y, mats)
            else:
                idx_dev = idx.to(x.device, non_blocking=True)
                xs, ys = resample(x.index_select(0, idx_dev), None if y is None else y.index_select(0, idx_dev),
                                  mats)
                x.index_copy_(0, idx_dev, xs)
                y = None if y is None else y.index_copy(0, idx_dev, ys)
        I.add_noise(x, params.noise, params.noise_std, params.noise_seed)
        x = I.apply_rows(x, params.blur, I.gaussian_blur, params.blur_sigma)
        x = I.apply_rows(x, params.bright, I.brightness, params.bright_factor)
        x = I.apply_rows(x, params.contrast, I.contrast, params.contrast_factor)
        x = I.apply_rows(x, params.lowres, I.lowres, params.lowres_zoom)
        inv = params.gamma_inv[:, None].expand(bsz, nch)
        x = I.apply_rows(x, inv, lambda r, v: I.gamma(r, v, invert=True), params.gamma_inv_value)
        x = I.apply_rows(x, params.gamma[:, None].expand(bsz, nch), I.gamma, params.gamma_value)
        if bool(params.mirror.any()):
            x = mirror(x, params.mirror)
            y = None if y is None else mirror(y, params.mirror)
        return x.to(dtype), y

    def __call__(self, images: Tensor, labels: Tensor | None, generator: torch.Generator
                 ) -> tuple[Tensor, Tensor | None]:
        params = self.draw(images.shape[0], tuple(images.shape[2:]), generator, n_channels=images.shape[1])
        return self.apply(images, labels, params)
