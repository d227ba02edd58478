"""A tiny run folder without training (an untrained, seeded network with a complete plan, saved as focusseg saves
checkpoints) and input cases for predict tests. Imported as ``inference.run_helpers`` (tests/ is on sys.path)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

SPACING = (1.5, 1.0, 2.0)
SHAPE = (20, 24, 16)

TINY_PLAN = {
    "version": 1,
    "dataset": "Tiny",
    "device_profile": "cpu",
    "channel_names": {"0": "MR"},
    "labels": {"background": 0, "sphere": 1, "cube": 2},
    "n_classes": 3,
    "target_spacing": list(SPACING),
    "patch_size": [16, 16, 16],
    "batch_size": 2,
    "normalization": [{"scheme": "zscore", "use_mask": False}],
    "resample_order_image": 3,
    "network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
    "training": {"amp": "none", "task": None},
    "inference": {"overlap": 0.5, "mirror_axes": [0], "batch_size": 2, "postprocessing": "none"},
}


def tiny_plan(n_channels: int = 1) -> dict:
    """The tiny plan with ``n_channels`` input channels."""
    plan = copy.deepcopy(TINY_PLAN)
    plan["channel_names"] = {str(c): "MR" for c in range(n_channels)}
    plan["normalization"] = [{"scheme": "zscore", "use_mask": False}] * n_channels
    return plan


def tiny_weights(plan: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random weights of the plan's network; the last layer's bias favours no class, so argmax varies."""
    from focusseg.nets.from_plan import build_inference_module

    torch.manual_seed(seed)
    return build_inference_module(plan).state_dict()


def make_run(run_dir: Path, plan: dict | None = None, seed: int = 0, checkpoint: str = "best",
             state: dict | None = None) -> Path:
    """A run folder (``plan.json`` + ``checkpoint_<checkpoint>.pt``) as ``focusseg train`` leaves it."""
    from focusseg.io.checkpoint import save_atomic

    plan = plan or tiny_plan()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.json").write_text(json.dumps(plan, indent=1))
    if state is None:
        state = {"plan": plan, "network": tiny_weights(plan, seed), "epoch": 1, "best": 0.5, "iteration": 3}
    save_atomic(state, run_dir / f"checkpoint_{checkpoint}.pt")
    return run_dir


def blob_image(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A bright sphere in noise with a zero border (as the tiny training dataset)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    centre = np.array(shape) / 2 + rng.integers(-2, 3, 3)
    lab = (np.linalg.norm(grid - centre, axis=-1) < min(shape) / 4).astype(np.float32)
    img = (3.0 * lab + rng.normal(0, 0.3, shape) + 1.0).astype(np.float32)
    img[:1] = 0
    return img


def affine(spacing: tuple[float, ...] = SPACING, shift: float = 0.0) -> np.ndarray:
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = [-10.0 + shift, 5.0, 3.0]
    return a


def write_inputs(folder: Path, n_cases: int = 3, n_channels: int = 1, ending: str = ".nii.gz",
                 first: int = 0) -> list[str]:
    """``case<i>_<CCCC><ending>`` images; returns the case ids."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(first, first + n_cases):
        for ch in range(n_channels):
            write_array(folder / f"case{i:03d}_{ch:04d}{ending}", blob_image(seed=10 * i + ch))
        ids.append(f"case{i:03d}")
    return ids


def write_array(path: Path, data: np.ndarray, aff: np.ndarray | None = None) -> Path:
    """Write ``data`` as NIfTI (by nibabel) or any other format (by SimpleITK, through focusseg's writer)."""
    aff = affine() if aff is None else aff
    if path.name.endswith((".nii.gz", ".nii")):
        nib.save(nib.Nifti1Image(data, aff), str(path))
    else:
        from focusseg.io import Geometry, write_image, write_segmentation

        geo = Geometry(aff, tuple(data.shape[:3]))
        if np.issubdtype(data.dtype, np.integer):
            write_segmentation(path, data, geo)
        else:
            write_image(path, data, geo)
    return path


def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> hex digest), following no links."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def visible_files(folder: Path) -> list[str]:
    """Names in ``folder`` that are not dot files / temporaries."""
    from focusseg.io.atomic import is_temp_name

    return sorted(p.name for p in folder.iterdir() if not is_temp_name(p.name))
