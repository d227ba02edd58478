"""Tiny runs and cross-validation folders for the export tests (reusing ``inference.run_helpers``), and a reader
of prediction folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from inference.run_helpers import make_run, tiny_plan

#: Post-processing chosen "on validation" for the tiny runs: erode class 1 (changes the tiny predictions, so a
#: bundle that dropped it would not match).
STEPS = [{"name": "keep_largest_component", "labels": [1]}, {"name": "erode", "labels": [2], "iterations": 1}]


def auto_plan() -> dict:
    """The tiny plan with post-processing chosen on validation (``postprocessing.json``), as a trained run."""
    plan = tiny_plan()
    plan["inference"]["postprocessing"] = "auto"
    return plan


def make_tiny_run(run_dir: Path, seed: int = 0) -> Path:
    """An (untrained, seeded) run folder with ``postprocessing.json`` holding :data:`STEPS`."""
    make_run(run_dir, auto_plan(), seed=seed)
    (run_dir / "postprocessing.json").write_text(json.dumps({"steps": STEPS}))
    return run_dir


def make_tiny_crossval(cv_dir: Path, n_folds: int = 2) -> Path:
    """A cross-validation folder as ``focusseg crossval`` leaves it: ``crossval.json``, the pool's
    ``postprocessing.json`` and ``fold_K`` runs (plan, ``checkpoint_best.pt``, ``summary.json``)."""
    plan = auto_plan()
    for k in range(n_folds):
        fold = make_run(cv_dir / f"fold_{k}", plan, seed=k + 1)
        (fold / "summary.json").write_text(json.dumps({"final_validation": {"mean_dice": 0.5}}))
    (cv_dir / "crossval.json").write_text(json.dumps({"folds": {}, "pooled": {"cases": 0}}))
    (cv_dir / "postprocessing.json").write_text(json.dumps({"steps": STEPS[:1]}))
    return cv_dir


def read_predictions(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{file name: (voxels, affine)}`` of every prediction in ``folder``."""
    import nibabel as nib

    out = {}
    for p in sorted(folder.glob("*.nii.gz")):
        img = nib.load(str(p))
        out[p.name] = (np.asarray(img.dataobj), img.affine)
    return out
