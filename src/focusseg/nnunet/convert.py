"""An nnU-Net v2 model folder as focusseg plans and weights, so focusseg's whole pipeline (batched sliding window,
probabilities, uncertainty, DICOM, ensembles, export) predicts with it and fine-tunes from it.

:func:`plan_from_nnunet` writes a complete focusseg plan from a checked model folder: labels, channels, regions and
the ignore label from dataset.json; target spacing, patch and batch size from the configuration; each channel's
normalisation mapped onto focusseg's scheme that computes the same numbers (:data:`NORMALIZATION_MAP`); the
network ``"nnunet"`` (:mod:`focusseg.nets.nnunet_dna`) with the configuration's architecture; nnU-Net's sliding
window (overlap 0.5) and mirroring axes.

Axes: nnU-Net's arrays are focusseg's with the spatial axes reversed (its readers give SimpleITK's ``(z, y, x)``
order), then moved by the plans' ``transpose_forward``. The plan is written in focusseg's axis order (spacing,
patch, mirror axes), and the network permutes its input to nnU-Net's order itself (``input_axes``), so any
``transpose_forward`` is supported and the weights load unchanged.

What focusseg does not reproduce is refused in one line: 2D configurations (nnU-Net keeps each case's own spacing
along the slice axis), readers that reorient images (``NibabelIOWithReorient``). Resampling follows nnU-Net's
choice of axes: an anisotropic case (largest / smallest spacing above 3) is resampled in plane with the
configuration's order and along its out-of-plane axis with ``order_z`` (0), and its probabilities go back the
same way (linear in plane, nearest along that axis); the splines are SciPy's, not scikit-image's, so values differ
slightly from nnU-Net's at the same positions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from focusseg.errors import MissingFileError, PlanError, UsageError
from focusseg.nets.nnunet_dna import architecture_spec
from focusseg.nnunet.model_folder import NnunetModelFolder, find_checkpoints, read_model_folder, read_postprocessing
from focusseg.nnunet.network import BATCHNORM_TRAINERS, load_fold_checkpoint

#: nnU-Net's normalisation scheme -> focusseg's scheme computing the same numbers (see :func:`normalization`).
NORMALIZATION_MAP: Mapping[str, str] = {
    "CTNormalization": "ct",
    "ZScoreNormalization": "zscore",
    "NoNormalization": "none",
    "RescaleTo01Normalization": "quantile",
    "RGBTo01Normalization": "ct",
}
#: Image readers whose arrays are the image file's voxel grid with the axes reversed (what the conversion assumes).
READERS = ("SimpleITKIO", "NibabelIO", "SimpleITKIOWithReorient")
#: nnU-Net's sliding-window step (``tile_step_size``) as focusseg's overlap.
OVERLAP = 0.5
#: nnU-Net's default anisotropy threshold for separate-z resampling (largest / smallest spacing).
ANISO_THRESHOLD = 3.0
#: The smallest standard deviation nnU-Net divides by.
EPS = 1e-8
#: The checkpoint choices of ``focusseg predict`` and the nnU-Net file each reads (``best`` falls back to
#: ``checkpoint_final.pth`` for a fold without a best checkpoint, as focusseg's run folders do).
CHECKPOINT_FILES: Mapping[str, str] = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}


def normalization(model: NnunetModelFolder) -> list[dict[str, Any]]:
    """One focusseg normalisation scheme per channel, computing what nnU-Net's scheme computes:

    - ``CTNormalization``: clip to the dataset's foreground ``percentile_00_5``/``percentile_99_5``, then
      ``(x - mean) / max(std, 1e-8)`` -> focusseg's ``ct``.
    - ``ZScoreNormalization``: per image ``(x - mean) / max(std, 1e-8)``; with ``use_mask_for_norm`` over the
      non-zero region with its holes filled (nnU-Net's crop mask), the outside left 0 -> ``zscore`` with
      ``use_mask`` and ``fill_holes``.
    - ``NoNormalization`` -> ``none``.
    - ``RescaleTo01Normalization``: ``(x - min) / max(max - min, 1e-8)`` -> ``quantile`` with lower 0, upper 1.
    - ``RGBTo01Normalization``: ``x / 255`` -> ``ct`` clipped to [0, 255] (nnU-Net refuses values outside),
      mean 0, std 255.
    """
    out: list[dict[str, Any]] = []
    config = model.configuration
    for c, scheme in enumerate(config.normalization_schemes):
        if scheme == "CTNormalization":
            props = model.intensity_properties[str(c)]
            out.append({"scheme": "ct", "clip": [props["percentile_00_5"], props["percentile_99_5"]],
                        "mean": props["mean"], "std": max(props["std"], EPS)})
        elif scheme == "ZScoreNormalization":
            use_mask = bool(config.use_mask_for_norm[c])
            out.append({"scheme": "zscore", "use_mask": use_mask, **({"fill_holes": True} if use_mask else {})})
        elif scheme == "NoNormalization":
            out.append({"scheme": "none"})
        elif scheme == "RescaleTo01Normalization":
            out.append({"scheme": "quantile", "lower": 0.0, "upper": 1.0})
        else:  # RGBTo01Normalization
            out.append({"scheme": "ct", "clip": [0.0, 255.0], "mean": 0.0, "std": 255.0})
    return out


def input_axes(model: NnunetModelFolder) -> list[int]:
    """For each network axis, the focusseg array axis it reads: nnU-Net's axis ``a`` is focusseg's ``2 - a``
    (reversed), and network axis ``n`` is nnU-Net's axis ``transpose_forward[n]``."""
    forward = model.transpose_forward
    return [len(forward) - 1 - int(a) for a in forward]


def _in_focusseg_order(values: Sequence[Any], axes: Sequence[int]) -> list[Any]:
    out: list[Any] = [None] * len(axes)
    for n, a in enumerate(axes):
        out[a] = values[n]
    return out


def _labels(model: NnunetModelFolder) -> dict[str, Any]:
    """``labels``, ``n_classes`` and, where dataset.json has them, ``ignore_label`` or the region fields."""
    ds = model.dataset
    if not ds.has_regions:
        labels = {name: (v[0] if isinstance(v, tuple) else int(v)) for name, v in ds.labels.items()
                  if name != "ignore"}
        out: dict[str, Any] = {"labels": labels, "n_classes": max(labels.values()) + 1}
        if ds.ignore_label is not None:
            out["ignore_label"] = int(ds.ignore_label)
        return out
    if ds.ignore_label is not None:
        raise PlanError("labels: an ignore label with region-based labels is not supported by focusseg",
                        model.path / "dataset.json")
    regions, names = [], []
    background = "background"
    for name, v in ds.labels.items():
        values = list(v) if isinstance(v, tuple) else [int(v)]
        if values == [0]:
            background = name
            continue
        regions.append(values)
        names.append(name)
    every = sorted({x for r in regions for x in r})
    return {"labels": {background: 0, **{f"label_{x}": x for x in every}}, "n_classes": max(every) + 1,
            "regions": regions, "regions_class_order": list(ds.regions_class_order or ()), "region_names": names}


def training_section(deep_supervision: bool) -> dict[str, Any]:
    """nnU-Net's training recipe in focusseg's terms (SGD with Nesterov momentum 0.99, poly schedule, Dice + CE,
    deep supervision with nnU-Net's weights, 250 iterations per epoch): the starting point for fine-tuning."""
    return {
        "loss": {"ce": 1.0, "soft_dice": 1.0},
        "deep_supervision": {"weights": "nnunet"} if deep_supervision else None,
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5},
        "lr_schedule": {"name": "poly", "exponent": 0.9},
        "grad_clip": 12.0,
        "max_epochs": 1000,
        "iterations_per_epoch": 250,
        "foreground_oversampling": 0.33,
        "augmentation": "nnunet",
        "amp": "auto",
        "validation": "patches",
        "val_patches": 32,
        "val_every": 1,
        "val_full_every": 10,
        "val_max_cases": None,
        "sampler": {"name": "foreground"},
        "class_weighter": None,
        "channels_last": False,
        "compile": False,
        "seed": 0,
    }


def plan_from_nnunet(model_folder: NnunetModelFolder | str | Path, configuration: str | None = None,
                     mirror_axes: Sequence[int] | None = None, trainer: str | None = None) -> dict[str, Any]:
    """A complete focusseg plan for an nnU-Net model folder's configuration (module docstring).

    Args:
        model_folder: the checked folder (:func:`~focusseg.nnunet.model_folder.read_model_folder`) or its path.
        configuration: with a path, the plans configuration (default: the folder name's).
        mirror_axes: the checkpoint's ``inference_allowed_mirroring_axes`` in nnU-Net's network axes (default:
            every axis, nnU-Net's default).
        trainer: the trainer that trained the weights (default: the folder's); ``nnUNetTrainerBN`` builds batch
            normalisation, as that trainer does.

    Returns:
        the plan (passes :func:`focusseg.settings.parse_plan_settings`).

    Raises:
        PlanError: a 2D configuration, an image reader that reorients, mirror axes the network does not have, an
            ignore label with regions (one line naming the file).
        MissingFileError / UsageError: as :func:`~focusseg.nnunet.model_folder.read_model_folder` with a path.
    """
    model = model_folder if isinstance(model_folder, NnunetModelFolder) else read_model_folder(model_folder,
                                                                                               configuration)
    config, plans = model.configuration, model.plans_path
    if config.dim != 3:
        raise PlanError(f"configurations.{config.name} is a 2D configuration: focusseg converts 3D configurations "
                        "only (nnU-Net's 2d keeps each case's own spacing along the slice axis)", plans,
                        hint="use the folder of a 3d_fullres or 3d_lowres model")
    if len(model.transpose_forward) != 3:
        raise PlanError(f"transpose_forward {list(model.transpose_forward)} must order 3 axes for a 3D "
                        "configuration", plans)
    reader = model.image_reader_writer
    if reader is not None and reader not in READERS:
        raise PlanError(f"image_reader_writer = {reader!r}: focusseg reads images without reorienting them, as "
                        f"{', '.join(READERS)} do; other readers are not supported", plans)
    axes = input_axes(model)
    mirror = tuple(range(config.dim)) if mirror_axes is None else tuple(int(a) for a in mirror_axes)
    if any(not 0 <= a < config.dim for a in mirror):
        raise PlanError(f"inference_allowed_mirroring_axes {list(mirror)} name an axis the {config.dim}D network "
                        "does not have", plans)
    kwargs = dict(config.arch_kwargs)
    trainer = trainer if trainer is not None else model.trainer
    if trainer in BATCHNORM_TRAINERS:
        kwargs["norm_op"] = "BatchNorm3d"
        kwargs["norm_op_kwargs"] = {"eps": 1e-5, "affine": True}
    network = {"name": "nnunet", **architecture_spec(config.network_class, kwargs), "input_axes": axes,
               "deep_supervision": True}
    data_kwargs = config.resampling.get("resampling_fn_data_kwargs", {})
    order = int(data_kwargs.get("order", 3))
    plan: dict[str, Any] = {
        "version": 1,
        "dataset": model.path.parent.name or model.path.name,
        "channel_names": {str(i): name for i, name in enumerate(model.dataset.channel_names)},
        **_labels(model),
        "target_spacing": [float(s) for s in _in_focusseg_order(config.spacing, axes)],
        "patch_size": [int(p) for p in _in_focusseg_order(config.patch_size, axes)],
        "batch_size": int(config.batch_size),
        "normalization": normalization(model),
        "resample_order_image": order,
        **_separate_z(data_kwargs),
        "network": network,
        "training": training_section(True),
        "inference": {"overlap": OVERLAP, "mirror_axes": sorted(axes[m] for m in mirror), "batch_size": 2},
        "nnunet": {"model_folder": model.path.name, "configuration": config.name, "trainer": trainer,
                   "plans_name": model.plans_name},
    }
    return plan


def _separate_z(data_kwargs: Any) -> dict[str, Any]:
    """nnU-Net's separate-z resampling of the image (``force_separate_z`` None: decided per case above the
    anisotropy threshold, 3 by default; True: always, read as threshold 1; False: never) as the plan's
    ``resample_separate_z`` (:func:`focusseg.preprocessing.transforms.separate_axis`)."""
    force = data_kwargs.get("force_separate_z")
    if force is False:
        return {}
    threshold = 1.0 if force else float(data_kwargs.get("separate_z_anisotropy_threshold", ANISO_THRESHOLD))
    return {"resample_separate_z": {"threshold": threshold, "order": int(data_kwargs.get("order_z", 0))}}


def checkpoint_files(folder: str | Path, checkpoint: str = "final", folds: Sequence[int | str] | None = None
                     ) -> dict[int | str, Path]:
    """Fold -> the checkpoint focusseg loads: ``checkpoint_final.pth`` (``final``) or ``checkpoint_best.pth``
    (``best``; a fold without one falls back to its final checkpoint). By default every ``fold_K`` present, or
    ``fold_all`` when there is no numbered fold (as nnU-Net's ``-f`` default).

    Raises:
        UsageError: a checkpoint choice other than best / final, a malformed fold.
        MissingFileError: a requested fold without the checkpoint, or no fold at all.
    """
    if checkpoint not in CHECKPOINT_FILES:
        raise UsageError(f"an nnU-Net model folder has checkpoint_final.pth and checkpoint_best.pth: checkpoint must "
                         f"be final or best, got {checkpoint!r}", folder)
    folder = Path(folder)
    final = find_checkpoints(folder, "checkpoint_final.pth", folds) if checkpoint == "final" else None
    if final is None:
        found: dict[int | str, Path] = {}
        candidates = folds
        if candidates is None:
            candidates = sorted({k for name in CHECKPOINT_FILES.values()
                                 for k in _present(folder, name)}, key=lambda k: (k == "all", str(k).zfill(4)))
            if not candidates:
                raise MissingFileError("no fold_K/checkpoint_final.pth or checkpoint_best.pth in the nnU-Net model "
                                       "folder", folder)
        for fold in candidates:
            best = folder / f"fold_{fold}" / CHECKPOINT_FILES["best"]
            found.update({fold: best} if best.is_file() else find_checkpoints(folder, "checkpoint_final.pth", [fold]))
        final = found
    if folds is None and any(k != "all" for k in final):
        final = {k: v for k, v in final.items() if k != "all"}
    return final


def _present(folder: Path, name: str) -> list[int | str]:
    try:
        return list(find_checkpoints(folder, name))
    except MissingFileError:
        return []


@dataclass(frozen=True)
class NnunetFold:
    """One fold converted: its focusseg plan and its weights (names as nnU-Net's network has them)."""

    fold: int | str
    path: Path
    plan: dict[str, Any]
    weights: dict[str, torch.Tensor]


def load_fold_plan(model: NnunetModelFolder, fold: int | str, path: str | Path) -> NnunetFold:
    """One fold's checkpoint read safely (:func:`~focusseg.nnunet.checkpoint.load_nnunet_checkpoint`) with the
    focusseg plan for it (its trainer and mirroring axes).

    Raises:
        CheckpointError: the checkpoint is refused, or was trained with another configuration.
        PlanError: as :func:`plan_from_nnunet`.
    """
    ckpt = load_fold_checkpoint(model, path)
    plan = plan_from_nnunet(model, mirror_axes=ckpt.mirror_axes, trainer=ckpt.trainer_name)
    return NnunetFold(fold, ckpt.path, plan, dict(ckpt.network_weights))


def postprocessing_steps(steps: Sequence[tuple[str, Any]] | None) -> list[dict[str, Any]]:
    """nnU-Net's post-processing (:func:`~focusseg.nnunet.model_folder.read_postprocessing`) as focusseg steps:
    each "remove all but the largest component" of a label, a region or a list of them (united into one mask, as
    nnU-Net does) becomes ``keep_largest_component`` of that one region, full connectivity (nnU-Net's)."""
    out: list[dict[str, Any]] = []
    for _, target in steps or ():
        values: set[int] = set()
        for item in (target if isinstance(target, tuple) else (target,)):
            values.update(item if isinstance(item, tuple) else (item,))
        values.discard(0)
        if values:
            out.append({"name": "keep_largest_component", "regions": [sorted(values)], "connectivity": 26})
    return out


def model_postprocessing(model: NnunetModelFolder) -> list[dict[str, Any]]:
    """The folder's post-processing as focusseg steps: ``postprocessing.json`` / ``.pkl`` in the folder, else in its
    ``crossval_results_folds_*`` folder for exactly the folds used; none when neither exists.

    Raises:
        PlanError: a refused or malformed post-processing file.
    """
    steps = read_postprocessing(model.path)
    if steps is None:
        folds = sorted(str(f) for f in model.checkpoints)
        cv = model.path / f"crossval_results_folds_{'_'.join(folds)}"
        steps = read_postprocessing(cv) if cv.is_dir() else None
    return postprocessing_steps(steps)


__all__ = ["CHECKPOINT_FILES", "NORMALIZATION_MAP", "NnunetFold", "OVERLAP", "READERS", "checkpoint_files",
           "input_axes", "load_fold_plan", "model_postprocessing", "normalization", "plan_from_nnunet",
           "postprocessing_steps", "training_section"]
