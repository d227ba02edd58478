"""``focusseg export RUN_OR_CV --format nnunet --out FOLDER``: a run (or every finished fold of a cross-validation)
as an nnU-Net v2 model folder, what nnU-Net's training writes into ``<trainer>__<plans>__<configuration>/``:

- ``dataset.json`` and ``plans.json`` (one configuration, reconstructed from the focusseg plan:
  :func:`focusseg.nnunet.export.nnunet_plans`);
- ``fold_K/checkpoint_final.pth`` per fold (the run's ``fold``; a cross-validation's ``fold_K``), holding what
  nnU-Net's predictor reads and nothing else (:func:`focusseg.nnunet.export.checkpoint_payload`);
- ``postprocessing.json`` (nnU-Net's ``postprocessing_fns`` / ``postprocessing_kwargs``) when the run's chosen
  post-processing is made of "keep the largest component" steps with full connectivity, the one step nnU-Net has.

The folder is written next to ``FOLDER`` under a temporary name and renamed into place when complete; an existing
``FOLDER`` is refused (nothing is deleted). Only runs whose network is ``"nnunet"`` can be exported (others are
refused in one line naming the run and why). Both focusseg (``focusseg predict FOLDER IN OUT``) and nnU-Net
(``nnUNetv2_predict_from_modelfolder -m FOLDER``) predict with the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from focusseg.errors import UsageError
from focusseg.export.bundle import load_source, portable
from focusseg.io.atomic import fsync_dir
from focusseg.nnunet.export import (
    TRAINER,
    checkpoint_payload,
    dataset_json,
    mirror_axes,
    nnunet_plans,
)
from focusseg.runfolder import read_run_info

#: nnU-Net's post-processing function (the name its postprocessing.json gives).
LARGEST_COMPONENT = "remove_all_but_largest_component_from_segmentation"


def nnunet_postprocessing(steps: Sequence[Mapping[str, Any]], labels: Sequence[int]
                          ) -> dict[str, list[Any]] | None:
    """The focusseg post-processing as nnU-Net's ``postprocessing.json`` content, or None when a step has no
    nnU-Net equivalent (only "keep the largest component" of a label or a region, full connectivity, has one)."""
    fns: list[str] = []
    kwargs: list[dict[str, Any]] = []
    for step in steps:
        if not isinstance(step, Mapping) or step.get("name") != "keep_largest_component" \
                or step.get("connectivity") not in (None, 26) or set(step) - {"name", "labels", "regions",
                                                                                "connectivity"}:
            return None
        targets: list[Any] = []
        if step.get("regions"):
            targets = [[int(v) for v in r] if len(r) > 1 else int(r[0]) for r in step["regions"]]
        else:
            targets = [int(v) for v in (step.get("labels") or [v for v in labels if int(v) != 0])]
        for target in targets:
            fns.append(LARGEST_COMPONENT)
            kwargs.append({"labels_or_regions": target})
    return {"postprocessing_fns": fns, "postprocessing_kwargs": kwargs}


def _fold_of_run(run_dir: Path) -> int | str:
    info = read_run_info(run_dir) or {}
    fold = str(info.get("fold", "0"))
    return "all" if fold == "all" else int(fold) if fold.isdigit() and int(fold) <= 999 else 0


def export_nnunet(source: str | Path, out: str | Path, checkpoint: str = "best") -> dict[str, Any]:
    """Write the run or cross-validation ``source`` as the nnU-Net model folder ``out`` (module docstring).

    Args:
        source: a run folder or a cross-validation folder.
        out: the folder to create (must not exist).
        checkpoint: the run's checkpoint to export (``best``, ``final`` or ``latest``); nnU-Net's folder names
            it ``checkpoint_final.pth``.

    Returns:
        a summary: ``{"folder", "configuration", "folds", "postprocessing"}``.

    Raises:
        UsageError: ``out`` exists, or a run that cannot be exported (its network, its normalisation).
        MissingFileError / CheckpointError / RunFolderError: as loading the run for prediction.
    """
    source, out = Path(source), Path(out)
    if out.exists() or out.is_symlink():
        raise UsageError("already exists: the nnU-Net export is a new folder (nothing is replaced)", out,
                         hint="choose another --out, e.g. nnUNetTrainer__nnUNetPlans__3d_fullres")
    src = load_source(source, checkpoint)
    if src.kind == "nnunet":
        raise UsageError("this is already an nnU-Net model folder: copy it, or export it as a bundle or ONNX",
                         Path(source))
    first = portable(src.members[0]["plan"])
    plans, configuration, axes = nnunet_plans(first, source)
    dataset = dataset_json(first)
    folds: list[int | str] = []
    payloads = []
    for m in src.members:
        plan = portable(m["plan"])
        member_plans, member_cfg, member_axes = nnunet_plans(plan, source)
        if member_plans != plans or member_cfg != configuration:
            raise UsageError(f"{m['name']} was trained with another plan than the first fold: one nnU-Net folder "
                             "holds folds of one plan", source)
        fold = _fold_of_run(source) if src.kind == "run" else int(m["name"].split("_", 1)[1])
        folds.append(fold)
        payloads.append(checkpoint_payload(m["state_dict"], plans, configuration, fold, dataset,
                                           mirror_axes(plan, member_axes)))
    labels = [int(v) for v in first["labels"].values()]
    post = nnunet_postprocessing(src.postprocessing, labels)
    if post is None:
        print(f"warning: {source}: its post-processing {src.postprocessing} has no nnU-Net equivalent and is not "
              "exported (nnU-Net keeps the largest component only)", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / "dataset.json").write_text(json.dumps(dataset, indent=2, allow_nan=False) + "\n")
        (tmp / "plans.json").write_text(json.dumps(plans, indent=2, allow_nan=False) + "\n")
        if post is not None and post["postprocessing_fns"]:
            (tmp / "postprocessing.json").write_text(json.dumps(post, indent=2) + "\n")
        for fold, payload in zip(folds, payloads):
            (tmp / f"fold_{fold}").mkdir()
            torch.save(payload, tmp / f"fold_{fold}" / "checkpoint_final.pth")
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists() or out.is_symlink():
            raise UsageError("appeared while exporting: not replaced", out)
        os.rename(tmp, out)
        fsync_dir(out.parent)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp)
    return {"folder": str(out), "configuration": configuration, "trainer": TRAINER, "folds": folds,
            "postprocessing": post is not None and bool(post["postprocessing_fns"])}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["LARGEST_COMPONENT", "export_nnunet", "nnunet_postprocessing"]
