"""One training run from a raw dataset: fingerprint -> plan -> preprocess -> split -> train -> final validation
(predict the held-out raw cases with the best checkpoint and evaluate them in their original geometry)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from focusseg.io import discover_cases, load_dataset_spec
from focusseg.planning.fingerprint import compute_fingerprint, save_json
from focusseg.planning.planner import deep_merge, make_plan


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(device)


def plan_dataset(data_dir: Path, device: str = "cpu", overrides: dict | None = None,
                 fingerprint_path: Path | None = None, progress: bool = True) -> dict:
    """Fingerprint (cached at ``fingerprint_path`` when given) and plan a dataset."""
    if fingerprint_path is not None and fingerprint_path.is_file():
        fp = json.loads(fingerprint_path.read_text())
    else:
        fp = compute_fingerprint(data_dir, progress=progress)
        if fingerprint_path is not None:
            save_json(fp, fingerprint_path)
    return make_plan(fp, device=device, overrides=overrides)


def apply_normalization_scheme(plan: dict) -> dict:
    """``"normalization_scheme": "quantile"`` (a recipe does not know how many channels a dataset has) sets that
    scheme on every channel."""
    scheme = plan.pop("normalization_scheme", None)
    if scheme:
        plan["normalization"] = [{"scheme": scheme} for _ in plan["normalization"]]
    return plan


def fit_patch_to_network(plan: dict) -> dict:
    """Round the patch up so the plan's network accepts it: each size a multiple of the network's divisor and at
    least twice it (a bottleneck of >= 2 voxels per axis, which instance norm needs). A recipe can name any
    network without knowing the dataset's patch."""
    from focusseg.nets import network_divisors
    from focusseg.registry import split_spec

    name, kwargs = split_spec(plan["network"])
    kwargs.pop("deep_supervision", None)
    divs = network_divisors(name, len(plan["patch_size"]), **kwargs)
    patch = [max(2 * d, -(-int(p) // d) * d) for p, d in zip(plan["patch_size"], divs)]
    if patch != list(plan["patch_size"]):
        plan["patch_size_planned"] = list(plan["patch_size"])
        plan["patch_size"] = patch
    return plan


def run_training(data_dir: str | Path, run_dir: str | Path, fold: str | int = 0, recipe: dict | None = None,
                 overrides: dict | None = None, time_budget_min: float | None = None, device: str | None = None,
                 resume: bool = False, preprocessed_dir: str | Path | None = None, plan_path: str | Path | None = None,
                 final_validation: bool = True, progress: bool = True, callbacks: list[Any] | None = None) -> dict:
    from focusseg.data.splits import fold_cases, load_or_create_splits
    from focusseg.engine.loop import train
    from focusseg.preprocessing import preprocess_dataset

    t_start = time.perf_counter()
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    plan_file = run_dir / "plan.json"
    if resume and plan_file.is_file():
        plan = json.loads(plan_file.read_text())
    else:
        if plan_path is not None:
            plan = json.loads(Path(plan_path).read_text())
        else:
            plan = plan_dataset(data_dir, dev.type, None, run_dir / "fingerprint.json", progress)
        plan = deep_merge(plan, (recipe or {}).get("plan", {}))
        plan = deep_merge(plan, overrides or {})
        plan = apply_normalization_scheme(plan)
        plan = fit_patch_to_network(plan)
        plan["recipe"] = (recipe or {}).get("name", "default")
        save_json(plan, plan_file)
    spec = load_dataset_spec(data_dir)
    case_ids = [c.case_id for c in discover_cases(data_dir, spec) if c.label is not None]
    split_file = data_dir / "splits_final.json"
    splits = load_or_create_splits(split_file if split_file.is_file() else run_dir / "splits_final.json", case_ids)
    train_ids, val_ids = fold_cases(splits, fold)
    store = preprocess_dataset(data_dir, plan, preprocessed_dir or run_dir / "preprocessed", progress=progress,
                               case_ids=train_ids + val_ids)
    budget = None
    if time_budget_min:
        budget = max(1.0, time_budget_min * 60 - (time.perf_counter() - t_start))
    trainer = train(store, plan, run_dir, train_ids, val_ids, dev, time_budget_s=budget, resume=resume,
                    callbacks=callbacks, progress=progress)
    summary: dict[str, Any] = {"run_dir": str(run_dir), "fold": str(fold), "best_val_mean_dice": trainer.best,
                               "epochs": trainer.epoch, "iterations": trainer.iteration,
                               "train_seconds": round(trainer.elapsed, 1)}
    if final_validation and val_ids:
        summary["final_validation"] = validate_raw(run_dir, data_dir, val_ids, dev, progress)
        if plan.get("inference", {}).get("postprocessing", "auto") == "auto":
            summary["postprocessing"] = choose_run_postprocessing(run_dir, spec.foreground_labels)
    summary["total_seconds"] = round(time.perf_counter() - t_start, 1)
    save_json(summary, run_dir / "summary.json")
    return summary


def validate_raw(run_dir: Path, data_dir: Path, val_ids: list[str], device: torch.device, progress: bool = True
                 ) -> dict:
    """Predict the raw held-out cases with the best checkpoint (with the plan's TTA, without post-processing:
    these predictions are what post-processing is chosen on) into ``run_dir/validation`` and evaluate them
    against the raw labels (original geometry)."""
    from focusseg.inference.predictor import Predictor
    from focusseg.io import read_case, write_segmentation
    from focusseg.metrics import evaluate_folders

    spec = load_dataset_spec(data_dir)
    cases = {c.case_id: c for c in discover_cases(data_dir, spec)}
    predictor = Predictor.from_run(run_dir, "best", device)
    out = run_dir / "validation"
    pred_dir, gt_dir = out / "predictions", out / "reference"
    for cid in val_ids:
        image, label, geo = read_case(list(cases[cid].images), cases[cid].label)
        write_segmentation(pred_dir / f"{cid}{spec.file_ending}", predictor.segment(image, geo, postprocess=False), geo)
        link = gt_dir / f"{cid}{spec.file_ending}"
        if not link.exists():
            gt_dir.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(cases[cid].label).resolve())
    summary = evaluate_folders(pred_dir, gt_dir, out, labels=spec.foreground_labels, progress=progress)
    return {"metrics_csv": str(out / "metrics.csv"), "summary_json": str(out / "summary.json"),
            "mean_dice": _mean_dice(summary),
            "dice_per_label": {k: v["dice"]["mean"] for k, v in summary.get("per_label", {}).items()}}


def choose_run_postprocessing(run_dir: Path, labels: list[int]) -> dict:
    """Choose post-processing on the raw validation predictions (``postprocessing.json``) and summarise it."""
    from focusseg.inference.postprocess_selection import choose_postprocessing_for_run

    res = choose_postprocessing_for_run(run_dir, labels)
    return {"steps": res["steps"], "dice_before": res["dice_before"], "dice_after": res["dice_after"]}


def _mean_dice(summary: dict) -> float | None:
    """Mean foreground Dice as nnU-Net reports it: the mean over labels of each label's mean over cases."""
    means = [v["dice"]["mean"] for v in summary.get("per_label", {}).values() if v.get("dice", {}).get("mean")
             is not None]
    return float(sum(means) / len(means)) if means else None
