"""Spatial transforms on batches: rotation + scaling in one resampling, mirroring, centre crop.

Rotation and scaling (nnU-Net's ``SpatialTransform`` without elastic deformation) map every output voxel
``p`` (voxel coordinates relative to the patch centre) to the input position

    q = s * R(a) p,        R = R_x(a_0) R_y(a_1) R_z(a_2)   (3D),   R = R(a_0) in the X-Y plane (2D)

so ``s > 1`` samples a larger region (zooms out), as batchgenerators does. The map is built in *voxel* units
(``theta = S^-1 P A P S`` with ``S = diag(n)/2`` and ``P`` the axis reversal that ``affine_grid`` expects), so
a rotation of a non-cubic patch stays a rotation instead of becoming a shear in normalised coordinates.
One ``affine_grid`` per batch feeds two ``grid_sample`` calls: trilinear for images, nearest for labels,
``align_corners=False``, zeros outside (nnU-Net pads images with 0 and labels with -1 -> 0, i.e. background).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def rotation_matrices(angles: Tensor, spatial_dims: int) -> Tensor:
    """Rotation matrices ``(B, D, D)`` in voxel axis order from angles in radians.

    3D: ``angles`` is ``(B, 3)``, the angles about axes X, Y, Z; ``R = R_x R_y R_z``.
    2D: ``angles`` is ``(B, 1)``, the in-plane angle.
    """
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    if spatial_dims == 2:
        return torch.stack([torch.stack([c[:, 0], -s[:, 0]], -1), torch.stack([s[:, 0], c[:, 0]], -1)], -2)
    rx = torch.stack(
        [torch.stack([one, zero, zero], -1), torch.stack([zero, c[:, 0], -s[:, 0]], -1),
         torch.stack([zero, s[:, 0], c[:, 0]], -1)], -2)
    ry = torch.stack(
        [torch.stack([c[:, 1], zero, s[:, 1]], -1), torch.stack([zero, one, zero], -1),
         torch.stack([-s[:, 1], zero, c[:, 1]], -1)], -2)
    rz = torch.stack(
        [torch.stack([c[:, 2], -s[:, 2], zero], -1), torch.stack([s[:, 2], c[:, 2], zero], -1),
         torch.stack([zero, zero, one], -1)], -2)
    return rx @ ry @ rz


def affine_theta(matrices: Tensor, spatial_shape: Sequence[int]) -> Tensor:
    """``affine_grid``'s ``theta (B, D, D+1)`` for voxel-space matrices ``(B, D, D)`` about the patch centre."""
    d = len(spatial_shape)
    half = torch.tensor([n / 2.0 for n in reversed(spatial_shape)], dtype=matrices.dtype, device=matrices.device)
    a = matrices.flip(-1).flip(-2)  # voxel order (X, Y, Z) -> grid order (W, H, D) = (Z, Y, X)
    a = a * half[None, None, :] / half[None, :, None]  # S^-1 A S
    return torch.cat([a, torch.zeros(a.shape[0], d, 1, dtype=a.dtype, device=a.device)], dim=-1)


def resample(images: Tensor, labels: Tensor | None, matrices: Tensor) -> tuple[Tensor, Tensor | None]:
    """Resample a batch with voxel-space matrices ``(B, D, D)`` (output -> input), keeping the shape.

    ``images`` float ``(B, C, *S)`` (trilinear), ``labels`` integer ``(B, 1, *S)`` (nearest; values stay in
    the input set plus 0 for voxels mapped outside the patch).
    """
    shape = images.shape[2:]
    theta = affine_theta(matrices.to(device=images.device, dtype=torch.float32, non_blocking=True), shape)
    grid = F.affine_grid(theta, [images.shape[0], 1, *shape], align_corners=False)
    out = F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    if labels is None:
        return out, None
    lab = F.grid_sample(labels.to(torch.float32), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out, lab.round_().to(labels.dtype)


def mirror(x: Tensor, flips: Tensor) -> Tensor:
    """Flip sample ``b`` along spatial axis ``d`` where ``flips[b, d]`` (``(B, D)`` bool, CPU); exact.

    Per axis: the whole batch is flipped when every sample drew it, otherwise only the selected samples are
    gathered, flipped and written back (a new tensor; the input is not modified).
    """
    for d in range(flips.shape[1]):
        idx = flips[:, d].nonzero().flatten()
        if idx.numel() == x.shape[0]:
            x = x.flip(2 + d)
        elif idx.numel() > 0:
            idx_dev = idx.to(x.device, non_blocking=True)
            x = x.index_copy(0, idx_dev, x.index_select(0, idx_dev).flip(2 + d))
    return x


def crop_to(x: Tensor, shape: Sequence[int]) -> Tensor:
    """Centre crop of the last ``len(shape)`` axes to ``shape``; the start on each axis is ``(n - m) // 2``.

    Used by the trainer when it augments a larger patch (so rotations do not bring zeros into the corners)
    and cuts the network patch out of its centre afterwards.
    """
    shape = tuple(int(s) for s in shape)
    have = x.shape[x.ndim - len(shape):]
    if any(m > n for m, n in zip(shape, have)):
        raise ValueError(f"cannot crop {tuple(have)} to a larger {shape}")
    index = [slice(None)] * (x.ndim - len(shape))
    index += [slice((n - m) // 2, (n - m) // 2 + m) for m, n in zip(shape, have)]
    return x[tuple(index)]

