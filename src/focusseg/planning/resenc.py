"""nnU-Net's Residual Encoder presets: the plans of nnU-Net v2's ``nnUNetPlannerResEncM / L / XL`` computed from
the same dataset fingerprint (Isensee et al. 2024, "nnU-Net Revisited").

The planner, re-implemented step by step in nnU-Net's own axis order ((z, y, x) as SimpleITK reads an image, then
transposed so that the coarsest axis comes first):

* **target spacing** (:func:`fullres_target_spacing`): the per-axis median of the cases' spacings; on anisotropic
  data (the coarsest axis > 3x the next and < 1/3 of its voxels) that axis gets the 10th percentile of its
  spacings instead, never finer than the other axes;
* **transpose** (:func:`transpose_order`): the coarsest axis first, the others in order;
* **median shape**: the per-axis median of every case's shape after crop, resampled to the target spacing;
* **topology** (:func:`pool_and_conv_props`): nnU-Net's pooling rule, one stage per pooling step, the patch
  padded to a multiple of each axis's stride product;
* **patch and batch** (:func:`plan_configuration`): start from a patch of the spacing's aspect ratio with
  256^3 voxels (2048^2 in 2D), clipped to the median shape; while the network's conv feature-map elements
  (:func:`conv_feature_map_size`, the count ``dynamic_network_architectures`` computes for a
  ``ResidualEncoderUNet``) exceed the preset's reference, shrink the axis largest relative to the median shape
  by one stride product; batch = reference / elements x the reference batch (2 in 3D, 12 in 2D), rounded, at
  least 2, at most the preset's share of the dataset's voxels;
* **3d_lowres** (:func:`plan_resenc`): while the fullres patch covers less than a quarter of the median image,
  coarsen the spacing by 3 % steps (anisotropic axes first) and plan again; dropped when the images shrink by
  less than half.

The presets differ only in their references (:data:`RESENC_PRESETS`). :func:`focusseg_resenc` turns a focusseg
fingerprint ((x, y, z) arrays) into nnU-Net's axis order, plans, and maps patch and spacing back to focusseg's
order; the architecture stays exactly nnU-Net's plans.json one, with ``input_axes`` (the focusseg axis each
network axis reads, as the ``"nnunet"`` network takes it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from focusseg.errors import PlanError


@dataclass(frozen=True)
class ResEncPreset:
    """One of nnU-Net's Residual Encoder planners.

    Attributes:
        name: focusseg's preset name (``resenc-m`` / ``resenc-l`` / ``resenc-xl``).
        planner: nnU-Net's planner class.
        gpu_memory_gb: the planner's ``gpu_memory_target_in_gb``.
        reference_gb: the memory its references correspond to (``UNet_reference_val_corresp_GB``).
        reference_3d: conv feature-map elements of a 3D network that fill ``reference_gb`` at batch 2.
        reference_2d: the same for a 2D network at batch 12.
        max_dataset_covered: the largest share of the dataset's voxels one batch may hold.
    """

    name: str
    planner: str
    gpu_memory_gb: float
    reference_gb: float
    reference_3d: int
    reference_2d: int
    max_dataset_covered: float = 1.0

    def reference(self, dims: int) -> float:
        """The feature-map elements a ``dims``-D network may reach at the reference batch for this preset's
        memory target."""
        ref = self.reference_2d if dims == 2 else self.reference_3d
        return ref * (self.gpu_memory_gb / self.reference_gb)


#: nnU-Net v2's ``nnUNetPlannerResEncM / L / XL`` (``residual_encoder_unet_planners.py``).
RESENC_PRESETS: Mapping[str, ResEncPreset] = {
    "resenc-m": ResEncPreset("resenc-m", "nnUNetPlannerResEncM", 8.0, 8.0, 680_000_000, 135_000_000),
    "resenc-l": ResEncPreset("resenc-l", "nnUNetPlannerResEncL", 24.0, 24.0, 2_100_000_000, 380_000_000),
    "resenc-xl": ResEncPreset("resenc-xl", "nnUNetPlannerResEncXL", 40.0, 40.0, 3_600_000_000, 560_000_000),
}
#: The network class nnU-Net names in its plans, and the ``arch_kwargs`` it imports by name.
NETWORK_CLASS_NAME = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
REQUIRES_IMPORT = ("conv_op", "norm_op", "dropout_op", "nonlin")
BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
#: Residual blocks per encoder stage and convs per decoder stage (nnU-Net caps the stages at these lengths).
BLOCKS_PER_STAGE_ENCODER = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
CONVS_PER_STAGE_DECODER = (1,) * 12
#: A bottleneck feature map keeps at least this many voxels per pooled axis (``UNet_featuremap_min_edge_length``).
FEATUREMAP_MIN_EDGE = 4
MIN_BATCH = 2
REFERENCE_BATCH = {2: 12, 3: 2}
#: The initial patch holds as many voxels as a 256^3 cube (2048^2 in 2D).
INITIAL_PATCH_VOXELS = {2: 2048.0**2, 3: 256.0**3}
ANISO_THRESHOLD = 3
LOWRES_THRESHOLD = 0.25
LOWRES_SPACING_STEP = 1.03
#: No pooling cap per axis (nnU-Net passes 999999).
NO_POOL_CAP = 999_999
#: Bounds on the fingerprint values read (a fingerprint file may be damaged): voxels per axis and spacing (mm).
MAX_AXIS_VOXELS = 2**20
MAX_SPACING_MM = 1e4
#: The 3d_lowres search stops after this many spacing steps (1.03**2000 coarsens any real spacing enough).
MAX_LOWRES_STEPS = 2000


def preset_of(name: str | None) -> ResEncPreset | None:
    """The ResEnc preset ``name`` names (case-insensitive), or None when it names none."""
    if not isinstance(name, str):
        return None
    return RESENC_PRESETS.get(name.strip().lower())


def fullres_target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """nnU-Net's 3d_fullres target spacing (its axis order) from every case's spacing and shape after crop.

    Args:
        spacings: ``(n_cases, 3)`` spacings.
        shapes: ``(n_cases, 3)`` shapes after crop to non-zero.

    Returns:
        The target spacing: the per-axis median, with the coarsest axis set to the 10th percentile of its
        spacings on anisotropic data (spacing > 3x the next axis's and voxels < 1/3 of the others').
    """
    target = np.percentile(spacings, 50, 0)
    size = np.percentile(shapes, 50, 0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    max_other = max(target[i] for i in others)
    aniso_spacing = target[worst] > ANISO_THRESHOLD * max_other
    aniso_voxels = size[worst] * ANISO_THRESHOLD < min(size[i] for i in others)
    if aniso_spacing and aniso_voxels:
        p10 = np.percentile(spacings[:, worst], 10)
        if p10 < max_other:  # never finer than the other axes
            p10 = max(max_other, p10) + 1e-5
        target[worst] = p10
    return target


def transpose_order(spacing: Sequence[float]) -> tuple[list[int], list[int]]:
    """``(forward, backward)``: nnU-Net moves the coarsest axis (the first on ties) to the front."""
    first = int(np.argmax(spacing))
    forward = [first] + [i for i in range(3) if i != first]
    backward = [forward.index(i) for i in range(3)]
    return forward, backward


def resampled_shape(shape: Sequence[float], spacing: Sequence[float], new_spacing: Sequence[float]) -> list[int]:
    """A shape at ``spacing`` resampled to ``new_spacing``, each axis rounded (half to even, as nnU-Net)."""
    return [int(round(s / n * k)) for s, n, k in zip(spacing, new_spacing, shape)]


def pad_to_multiple(shape: Sequence[float], divisor: Sequence[int]) -> list[int]:
    """Each axis rounded up to a multiple of ``divisor`` (a fractional size first to the multiple above it)."""
    out = []
    for s, d in zip(shape, divisor):
        rem = s % d
        out.append(int(s if rem == 0 else s + d - rem))
    return out


@dataclass(frozen=True)
class Topology:
    """A network topology for one patch (nnU-Net's ``get_pool_and_conv_props`` result).

    Attributes:
        n_pool: poolings per axis.
        strides: per stage (the first is all 1).
        kernel_sizes: per stage.
        patch_size: the patch padded to a multiple of ``divisor``.
        divisor: per axis, ``2 ** n_pool``.
    """

    n_pool: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    patch_size: tuple[int, ...]
    divisor: tuple[int, ...]


def pool_and_conv_props(spacing: Sequence[float], patch: Sequence[float], min_edge: int = FEATUREMAP_MIN_EDGE,
                        max_pool: int = NO_POOL_CAP) -> Topology:
    """nnU-Net's topology rule, one pooling step (one stage) at a time.

    An axis may be pooled while it has >= ``2 * min_edge`` voxels, its spacing is < 2x the finest spacing of
    the poolable axes and it was pooled < ``max_pool`` times; a lone poolable axis needs >= ``3 * min_edge``
    voxels. Pooling doubles its spacing and halves its size (rounded up). A conv kernel is 3 along an axis once
    its spacing is < 2x the finest of all (then it stays 3), else 1; the bottleneck's kernel is 3 everywhere.

    Args:
        spacing: the spacing per patch axis.
        patch: the patch (sizes may be fractional: a median shape).
        min_edge: the smallest bottleneck edge.
        max_pool: the most poolings per axis.

    Returns:
        The :class:`Topology`, its patch padded to the stride products.
    """
    dim = len(spacing)
    cur_spacing = [float(s) for s in spacing]
    cur_size = [float(p) for p in patch]
    n_pool = [0] * dim
    kernel = [1] * dim
    strides: list[tuple[int, ...]] = [(1,) * dim]
    kernels: list[tuple[int, ...]] = []
    while True:
        axes = [i for i in range(dim) if cur_size[i] >= 2 * min_edge]
        if not axes:
            break
        finest = min(cur_spacing[i] for i in axes)
        axes = [i for i in axes if cur_spacing[i] / finest < 2 and n_pool[i] < max_pool]
        if len(axes) == 1 and cur_size[axes[0]] < 3 * min_edge:
            break
        if not axes:
            break
        finest_all = min(cur_spacing)
        kernel = [3 if kernel[d] == 3 or cur_spacing[d] / finest_all < 2 else 1 for d in range(dim)]
        for a in axes:
            n_pool[a] += 1
            cur_spacing[a] *= 2
            cur_size[a] = math.ceil(cur_size[a] / 2)
        strides.append(tuple(2 if d in axes else 1 for d in range(dim)))
        kernels.append(tuple(kernel))
    kernels.append((3,) * dim)
    divisor = tuple(2**n for n in n_pool)
    return Topology(tuple(n_pool), tuple(strides), tuple(kernels), tuple(pad_to_multiple(patch, divisor)), divisor)


def features_per_stage(n_stages: int, dims: int) -> list[int]:
    """``min(32 * 2**s, cap)`` per stage, cap 320 in 3D and 512 in 2D."""
    return [min(MAX_FEATURES[dims], BASE_FEATURES * 2**s) for s in range(n_stages)]


def conv_feature_map_size(patch: Sequence[int], features: Sequence[int], strides: Sequence[Sequence[int]],
                          n_blocks: Sequence[int], n_conv_decoder: Sequence[int], n_outputs: int,
                          deep_supervision: bool = False) -> int:
    """Elements of every conv output of one sample of a ``ResidualEncoderUNet`` (basic residual blocks, strided
    convs): the count ``compute_conv_feature_map_size`` makes, which nnU-Net compares with its references.

    Encoder: the stem conv (``f_0`` channels at the patch size); per stage, each residual block's two convs at the
    stage's size, plus a 1x1 skip conv in a stage's first block when it changes the size or the channels.
    Decoder, per stage from the bottom up: its convs and the transposed conv at the skip's size, and the
    segmentation conv (``n_outputs`` channels) at the last stage only (every stage with deep supervision;
    nnU-Net's planner sizes the network without it).

    Args:
        patch: the patch size.
        features: channels per stage.
        strides: per stage.
        n_blocks: residual blocks per encoder stage.
        n_conv_decoder: convs per decoder stage (bottom up, ``n_stages - 1`` of them).
        n_outputs: the segmentation channels (nnU-Net: the number of dataset.json labels).
        deep_supervision: whether every decoder stage has a segmentation conv.

    Returns:
        The number of elements.
    """
    sizes = []
    size = [int(p) for p in patch]
    for st in strides:
        size = [s // k for s, k in zip(size, st)]
        sizes.append(size)
    total = features[0] * math.prod(int(p) for p in patch)  # the stem
    prev_size, prev_ch = [int(p) for p in patch], features[0]
    for s, (f, sz) in enumerate(zip(features, sizes)):
        vox = math.prod(sz)
        total += 2 * f * vox * n_blocks[s]
        if prev_ch != f or prev_size != sz:
            total += f * vox
        prev_size, prev_ch = sz, f
    n = len(features)
    for s in range(n - 1):
        level = n - 2 - s  # the encoder stage whose skip this decoder stage joins
        vox = math.prod(sizes[level])
        total += n_conv_decoder[s] * features[level] * vox + features[level] * vox
        if deep_supervision or s == n - 2:
            total += n_outputs * vox
    return int(total)


def arch_kwargs(topology: Topology, dims: int) -> dict[str, Any]:
    """nnU-Net's plans.json ``arch_kwargs`` of a ResEnc U-Net with ``topology`` (``dims``-D)."""
    n = len(topology.strides)
    if n > len(BLOCKS_PER_STAGE_ENCODER):
        raise PlanError(f"a ResEnc U-Net has at most {len(BLOCKS_PER_STAGE_ENCODER)} stages; the patch "
                        f"{list(topology.patch_size)} needs {n}")
    return {
        "n_stages": n,
        "features_per_stage": features_per_stage(n, dims),
        "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
        "kernel_sizes": [list(k) for k in topology.kernel_sizes],
        "strides": [list(s) for s in topology.strides],
        "n_blocks_per_stage": list(BLOCKS_PER_STAGE_ENCODER[:n]),
        "n_conv_per_stage_decoder": list(CONVS_PER_STAGE_DECODER[: n - 1]),
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


def plan_configuration(spacing: Sequence[float], median_shape: Sequence[float], dataset_voxels: float,
                       n_outputs: int, preset: ResEncPreset) -> dict[str, Any]:
    """One configuration (nnU-Net's ``get_plans_for_configuration`` of a ResEnc planner), in nnU-Net's
    (transposed) axis order.

    Args:
        spacing: the configuration's spacing (2 or 3 values).
        median_shape: the median resampled image shape.
        dataset_voxels: the dataset's voxels at this spacing (median image x number of training cases).
        n_outputs: the segmentation channels nnU-Net sizes the network with (dataset.json's label count).
        preset: the ResEnc preset.

    Returns:
        ``patch_size``, ``batch_size``, ``spacing``, ``median_image_size_in_voxels``, ``architecture``
        (``network_class_name``, ``arch_kwargs``, ``_kw_requires_import``) and ``feature_map_size`` (the final
        network's conv feature-map elements per sample).
    """
    dims = len(spacing)
    sp = np.array(spacing, dtype=float)
    median = list(median_shape)[:dims]
    inv = 1 / sp
    initial = [round(v) for v in inv * (INITIAL_PATCH_VOXELS[dims] / np.prod(inv)) ** (1 / dims)]
    initial = [min(i, m) for i, m in zip(initial, median)]
    topo = pool_and_conv_props(sp.tolist(), initial)

    def estimate(t: Topology) -> int:
        kw = arch_kwargs(t, dims)
        return conv_feature_map_size(t.patch_size, kw["features_per_stage"], t.strides, kw["n_blocks_per_stage"],
                                     kw["n_conv_per_stage_decoder"], n_outputs)

    reference = preset.reference(dims)
    elements = estimate(topo)
    while elements > reference:
        ratios = [p / m for p, m in zip(topo.patch_size, median)]
        axis = int(np.argsort(ratios)[-1])  # nnU-Net's choice, ties included
        # one stride product less, the product of the smaller patch (224 is valid under 256 when 256 pools 6x)
        trial = list(topo.patch_size)
        trial[axis] -= topo.divisor[axis]
        step = pool_and_conv_props(sp.tolist(), trial).divisor[axis]
        patch = list(topo.patch_size)
        patch[axis] -= step
        if patch[axis] < 1:
            raise PlanError(f"no patch fits the {preset.name} preset's memory target (axis {axis} reached "
                            f"{patch[axis]})")
        topo = pool_and_conv_props(sp.tolist(), patch)
        elements = estimate(topo)
    batch = round(reference / elements * REFERENCE_BATCH[dims])
    cap = round(dataset_voxels * preset.max_dataset_covered / np.prod(topo.patch_size, dtype=np.float64))
    batch = max(min(batch, cap), MIN_BATCH)
    return {
        "patch_size": [int(p) for p in topo.patch_size],
        "batch_size": int(batch),
        "spacing": [float(s) for s in sp],
        "median_image_size_in_voxels": [float(m) for m in median],
        "architecture": {"network_class_name": NETWORK_CLASS_NAME, "arch_kwargs": arch_kwargs(topo, dims),
                         "_kw_requires_import": list(REQUIRES_IMPORT)},
        "feature_map_size": int(elements),
    }


def plan_resenc(spacings: Sequence[Sequence[float]], shapes_after_crop: Sequence[Sequence[int]], n_training: int,
                n_outputs: int, preset: str | ResEncPreset, configurations: Sequence[str] = ("2d", "3d_fullres",
                                                                                             "3d_lowres")
                ) -> dict[str, Any]:
    """nnU-Net's ResEnc plans (``plan_experiment``) from the fingerprint fields it reads, in nnU-Net's axis order.

    Args:
        spacings: every case's spacing (nnU-Net's (z, y, x) order).
        shapes_after_crop: every case's shape after crop to non-zero (same order).
        n_training: dataset.json's ``numTraining``.
        n_outputs: dataset.json's number of labels.
        preset: a :data:`RESENC_PRESETS` name or preset.
        configurations: which of ``2d``, ``3d_fullres``, ``3d_lowres`` to plan (3d_lowres needs 3d_fullres).

    Returns:
        ``transpose_forward``, ``transpose_backward``, ``fullres_spacing`` (untransposed) and ``configurations``
        (name -> :func:`plan_configuration`'s dict, in the transposed order; 3d_lowres only where nnU-Net makes
        one, 3d configurations only for 3D data).

    Raises:
        PlanError: an unknown preset, malformed fingerprint fields, or no patch fitting the preset.
    """
    p = preset if isinstance(preset, ResEncPreset) else preset_of(preset)
    if p is None:
        raise PlanError(f"preset {preset!r} is not one of {', '.join(RESENC_PRESETS)}")
    sp, shapes = checked_cases(spacings, shapes_after_crop)
    if not isinstance(n_training, int) or isinstance(n_training, bool) or n_training < 1:
        raise PlanError(f"the number of training cases {n_training!r} must be a positive integer")
    if not isinstance(n_outputs, int) or isinstance(n_outputs, bool) or n_outputs < 1:
        raise PlanError(f"the number of labels {n_outputs!r} must be a positive integer")
    fullres = fullres_target_spacing(sp, shapes)
    forward, backward = transpose_order(fullres)
    fullres_t = fullres[forward]
    new_shapes = [resampled_shape(s, c, fullres) for s, c in zip(shapes.tolist(), sp.tolist())]
    median_t = np.median(new_shapes, 0)[forward]
    if (median_t <= 0).any():
        raise PlanError(f"the median resampled shape {median_t.tolist()} has an empty axis")
    dataset_voxels = float(np.prod(median_t, dtype=np.float64) * n_training)
    out: dict[str, Any] = {}
    if median_t[0] != 1 and ("3d_fullres" in configurations or "3d_lowres" in configurations):
        full = plan_configuration(fullres_t, median_t, dataset_voxels, n_outputs, p)
        if "3d_fullres" in configurations:
            out["3d_fullres"] = full
        if "3d_lowres" in configurations:
            low = plan_lowres(full, median_t, n_training, n_outputs, p)
            if low is not None:
                out["3d_lowres"] = low
    if "2d" in configurations:
        out["2d"] = plan_configuration(fullres_t[1:], median_t[1:], dataset_voxels, n_outputs, p)
    return {"transpose_forward": forward, "transpose_backward": backward,
            "fullres_spacing": [float(s) for s in fullres], "configurations": out}


def plan_lowres(full: dict[str, Any], median_t: np.ndarray, n_training: int, n_outputs: int,
                preset: ResEncPreset) -> dict[str, Any] | None:
    """nnU-Net's 3d_lowres configuration: while the patch covers < 25 % of the median image's voxels, coarsen
    the spacing by 3 % (only the axes finer than half the coarsest, while any are) and plan again; None when the
    fullres patch already covers enough, or when the lowres images have more than half the fullres voxels."""
    full_spacing = np.array(full["spacing"], dtype=float)
    spacing = full_spacing.copy()
    median_voxels = float(np.prod(median_t, dtype=np.float64))
    patch_voxels = float(np.prod(full["patch_size"], dtype=np.float64))
    low = None
    steps = 0
    while patch_voxels / median_voxels < LOWRES_THRESHOLD:
        steps += 1
        if steps > MAX_LOWRES_STEPS:
            raise PlanError(f"no 3d_lowres spacing within {MAX_LOWRES_STEPS} steps")
        coarse = spacing.max()
        finer = coarse / spacing > 2
        if finer.any():
            spacing[finer] *= LOWRES_SPACING_STEP
        else:
            spacing *= LOWRES_SPACING_STEP
        shape = full_spacing / spacing * median_t
        median_voxels = float(np.prod(shape, dtype=np.float64))
        low = plan_configuration(spacing.copy(), tuple(round(v) for v in shape), median_voxels * n_training,
                                 n_outputs, preset)
        patch_voxels = float(np.prod(low["patch_size"], dtype=np.int64))
    if np.prod(median_t, dtype=np.float64) / median_voxels < 2:
        return None
    return low


def checked_cases(spacings: Any, shapes: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(spacings, shapes)`` as ``(n_cases, 3)`` arrays, refused (:class:`PlanError`) unless every spacing is a
    finite number in ``(0, 1e4]`` mm and every shape entry an integer in ``[1, 2**20]``."""
    try:
        sp = np.array(spacings, dtype=float)
        sh = np.array(shapes, dtype=float)
    except (TypeError, ValueError) as exc:
        raise PlanError("fingerprint: per-case spacings and shapes must be lists of 3 numbers") from exc
    if sp.ndim != 2 or sp.shape[1] != 3 or sp.shape[0] < 1 or sh.shape != sp.shape:
        raise PlanError(f"fingerprint: per-case spacings {list(sp.shape)} and shapes {list(sh.shape)} must both be "
                        "(cases, 3)")
    if not np.isfinite(sp).all() or (sp <= 0).any() or (sp > MAX_SPACING_MM).any():
        raise PlanError(f"fingerprint: a case spacing is not a finite number in (0, {MAX_SPACING_MM:g}] mm")
    if not np.isfinite(sh).all() or (sh < 1).any() or (sh > MAX_AXIS_VOXELS).any() or (sh != np.round(sh)).any():
        raise PlanError(f"fingerprint: a case shape is not integers in [1, {MAX_AXIS_VOXELS}]")
    return sp, sh.astype(np.int64)


# --------------------------------------------------------------------------------------------------------------
# focusseg's axis order
# --------------------------------------------------------------------------------------------------------------


def focusseg_axes(transpose_forward: Sequence[int], dims: int) -> list[int]:
    """For each axis of a focusseg patch, the index of the nnU-Net configuration axis that holds it.

    focusseg arrays are (x, y, z), nnU-Net's (z, y, x) then transposed by ``transpose_forward``: focusseg axis
    ``a`` is nnU-Net axis ``2 - a``, at position ``transpose_forward.index(2 - a)``. In 2D the slice axis is the
    transposed first one; the two in-plane axes, in focusseg's increasing order, are the configuration's axes in
    reverse."""
    forward = list(transpose_forward)
    if dims == 3:
        return [forward.index(2 - a) for a in range(3)]
    return [1, 0]


def to_focusseg(config: Mapping[str, Any], transpose_forward: Sequence[int]) -> dict[str, Any]:
    """An nnU-Net configuration (:func:`plan_configuration`) with ``patch_size``, ``spacing`` and
    ``median_image_size_in_voxels`` in focusseg's axis order, the ``architecture`` unchanged (nnU-Net's axis
    order) and ``input_axes``: the focusseg patch axis each network axis reads (the inverse of
    :func:`focusseg_axes`)."""
    dims = len(config["patch_size"])
    order = focusseg_axes(transpose_forward, dims)
    out = dict(config)
    for key in ("patch_size", "spacing", "median_image_size_in_voxels"):
        out[key] = [config[key][i] for i in order]
    out["input_axes"] = [order.index(n) for n in range(dims)]
    return out


def focusseg_resenc(fp: Mapping[str, Any], preset: str, configuration: str = "3d_fullres") -> dict[str, Any]:
    """One ResEnc configuration of a focusseg fingerprint, in focusseg's axis order.

    Args:
        fp: the fingerprint (:func:`focusseg.planning.fingerprint.compute_fingerprint`): its per-case ``spacing``
            and ``shape_after_crop`` ((x, y, z)), ``n_cases`` (nnU-Net's ``numTraining``) and ``labels`` (the
            label count sizes nnU-Net's network estimate).
        preset: a :data:`RESENC_PRESETS` name.
        configuration: ``3d_fullres`` or ``2d``.

    Returns:
        :func:`to_focusseg` of the configuration (patch, spacing and median shape in focusseg's order, nnU-Net's
        architecture, ``input_axes``), plus ``target_spacing`` (the 3D fullres target spacing, (x, y, z)),
        ``slice_axis`` (2D only: focusseg's axis nnU-Net slices along), ``transpose_forward`` and ``planner``
        (nnU-Net's planner class).

    Raises:
        PlanError: a fingerprint without per-case fields or with malformed ones, an unknown preset or
            configuration, or 2D data asked for ``3d_fullres``.
    """
    p = preset_of(preset)
    if p is None:
        raise PlanError(f"preset {preset!r} is not one of {', '.join(RESENC_PRESETS)}")
    if configuration not in ("3d_fullres", "2d"):
        raise PlanError(f"ResEnc configuration {configuration!r} is not 3d_fullres or 2d")
    cases = fp.get("cases")
    if not isinstance(cases, list) or not cases or not all(isinstance(c, Mapping) for c in cases):
        raise PlanError("fingerprint has no per-case 'cases' list (the ResEnc presets need every case's spacing "
                        "and shape)", hint="recompute the fingerprint")
    try:
        spacings = [list(c["spacing"])[::-1] for c in cases]
        shapes = [list(c["shape_after_crop"])[::-1] for c in cases]
    except (KeyError, TypeError) as exc:
        raise PlanError("fingerprint: a case has no 'spacing' or 'shape_after_crop' list") from exc
    labels = fp.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise PlanError("fingerprint field 'labels' must be a non-empty mapping")
    plans = plan_resenc(spacings, shapes, fp.get("n_cases"), len(labels), p, configurations=(configuration,))
    if configuration not in plans["configurations"]:
        raise PlanError(f"nnU-Net plans no {configuration} configuration for this data (its median shape has a "
                        "single slice)", hint="plan the 2d configuration")
    forward = plans["transpose_forward"]
    out = to_focusseg(plans["configurations"][configuration], forward)
    out["target_spacing"] = plans["fullres_spacing"][::-1]
    out["planner"], out["transpose_forward"] = p.planner, forward
    if configuration == "2d":
        out["slice_axis"] = 2 - forward[0]
    return out


__all__ = [
    "RESENC_PRESETS",
    "ResEncPreset",
    "Topology",
    "arch_kwargs",
    "checked_cases",
    "conv_feature_map_size",
    "focusseg_axes",
    "focusseg_resenc",
    "fullres_target_spacing",
    "pad_to_multiple",
    "plan_configuration",
    "plan_lowres",
    "plan_resenc",
    "pool_and_conv_props",
    "preset_of",
    "resampled_shape",
    "to_focusseg",
    "transpose_order",
]
