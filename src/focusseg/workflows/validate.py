"""The final validation of a run and the choice of its post-processing: predict the held-out raw cases with the
best checkpoint, score them in their original geometry (per label, or per region for region-based plans), and
choose post-processing on those predictions."""

from __future__ import annotations

from pathlib import Path

import torch

from focusseg.inference.postprocess_selection import choose_postprocessing_for_run
from focusseg.inference.predictor import Predictor, case_named
from focusseg.io import discover_cases, load_dataset_spec, read_case, write_segmentation
from focusseg.io.paths import safe_child
from focusseg.metrics import evaluate_folders
from focusseg.runfolder import clear_stale, owned_subfolder, remove_file_or_link, replace_link
from focusseg.settings import inference_settings


def validate_raw(run_dir: Path, data_dir: Path, val_ids: list[str], device: torch.device, progress: bool = True
                 ) -> dict:
    """Predict the raw held-out cases with the best checkpoint (with the plan's TTA, without post-processing:
    these predictions are what post-processing is chosen on) into ``run_dir/validation`` and evaluate them
    against the raw labels (original geometry). ``validation/`` holds only these cases: predictions and
    references of any other case (another fold, an earlier run) are removed first.

    Raises:
        RunFolderError: ``validation/`` or a folder in it is a symlink (nothing is removed or written through it).
        FocussegError: a case whose normalised input or logits are not finite (naming its image file).
    """
    spec = load_dataset_spec(data_dir)
    cases = {c.case_id: c for c in discover_cases(data_dir, spec)}
    out = owned_subfolder(run_dir, "validation")
    pred_dir, gt_dir = owned_subfolder(out, "predictions"), owned_subfolder(out, "reference")
    predictor = Predictor.from_run(run_dir, "best", device)
    names = {f"{cid}{spec.file_ending}" for cid in val_ids}
    clear_stale(pred_dir, names)
    clear_stale(gt_dir, names)
    for cid in val_ids:
        image, label, geo = read_case(list(cases[cid].images), cases[cid].label)
        name = f"{cid}{spec.file_ending}"
        if (pred_dir / name).is_symlink():  # a stale link of that name goes itself; its target is never written
            remove_file_or_link(pred_dir / name)
        with case_named(cases[cid].images[0]):
            seg = predictor.segment(image, geo, postprocess=False)
        write_segmentation(safe_child(pred_dir, name), seg, geo)
        replace_link(Path(cases[cid].label).resolve(), gt_dir / name)
    if spec.regions:  # region-based labels: Dice per region (focusseg.regions), rows labelled 1..R
        summary = evaluate_folders(pred_dir, gt_dir, out, progress=progress, regions=spec.region_list,
                                   region_names=list(spec.regions))
    else:
        summary = evaluate_folders(pred_dir, gt_dir, out, labels=spec.foreground_labels, progress=progress,
                                   ignore_label=spec.ignore_label)
    return {"metrics_csv": str(out / "metrics.csv"), "summary_json": str(out / "summary.json"),
            "mean_dice": mean_foreground_dice(summary),
            "dice_per_label": {k: v["dice"]["mean"] for k, v in summary.get("per_label", {}).items()}}


def evaluate_for_plan(pred_dir: Path, ref_dir: Path, out: Path, plan: dict, progress: bool = True) -> dict:
    """Score a folder of predictions as the plan trains: per region for a region-based plan (``regions``,
    :mod:`focusseg.regions`), else per foreground label with the plan's ignore label. Cross-validation and
    ``best`` pool their validation with it."""
    if plan.get("regions"):
        return evaluate_folders(pred_dir, ref_dir, out, progress=progress, regions=plan["regions"],
                                region_names=plan.get("region_names"))
    labels = sorted(int(v) for v in plan["labels"].values() if int(v) != 0)
    return evaluate_folders(pred_dir, ref_dir, out, labels=labels, progress=progress,
                            ignore_label=plan.get("ignore_label"))


def chooses_postprocessing(plan: dict) -> bool:
    """Whether post-processing is chosen on validation for this plan: ``inference.postprocessing`` "auto" (per
    label, or per region when the plan has regions: :mod:`focusseg.inference.postprocess_selection`)."""
    return inference_settings(plan).postprocessing == "auto"


def choose_run_postprocessing(run_dir: Path, labels: list[int], regions: list[list[int]] | None = None) -> dict:
    """Choose post-processing on the raw validation predictions (``postprocessing.json``) and summarise it."""
    res = choose_postprocessing_for_run(run_dir, labels, regions=regions)
    return {"steps": res["steps"], "dice_before": res["dice_before"], "dice_after": res["dice_after"]}


def mean_foreground_dice(summary: dict) -> float | None:
    """Mean foreground Dice as nnU-Net reports it: the mean over labels of each label's mean over cases."""
    means = [v["dice"]["mean"] for v in summary.get("per_label", {}).values() if v.get("dice", {}).get("mean")
             is not None]
    return float(sum(means) / len(means)) if means else None

