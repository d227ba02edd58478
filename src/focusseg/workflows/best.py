"""Choosing the best configuration (nnU-Net's ``nnUNetv2_find_best_configuration``).

``focusseg best CV_A CV_B ... --out BEST`` compares cross-validations of the same data and split (other
configurations, recipes or networks) and every pairwise ensemble of them, on pooled validation Dice:

* a single CV's score is its pooled mean Dice (``crossval.json``: every held-out case predicted by the fold that
  did not train on it, scored by the evaluator);
* a pair (A, B) is scored the same way: each held-out case of fold ``k`` is predicted by the ensemble of A's and
  B's fold-``k`` networks (mean of their probabilities, equal weights), written to
  ``BEST/ensembles/A+B/validation/predictions`` and evaluated there; its post-processing is chosen on those pooled
  predictions (``BEST/ensembles/A+B/postprocessing.json``), as nnU-Net does for its ensembles;
* the ranking (highest pooled mean Dice first; a tie keeps the simpler candidate: singles before pairs) is printed
  and written to ``BEST/best.json`` with the exact ``focusseg predict`` command of the winner.

Only the folds finished in every CV are compared, on their common held-out cases; CVs of different data, or
whose folds hold out different cases, are refused.
"""

from __future__ import annotations

import itertools
import shlex
from pathlib import Path
from typing import Any

from focusseg.errors import RunFolderError, UsageError, one_line
from focusseg.inference.postprocess_selection import choose_postprocessing_for_run
from focusseg.inference.predictor import EnsemblePredictor, Predictor, case_named
from focusseg.io import read_case, write_segmentation
from focusseg.io.atomic import save_json
from focusseg.io.dataset import discover_cases, load_dataset_spec
from focusseg.io.jsonfile import read_json
from focusseg.io.paths import is_inside, safe_child
from focusseg.metrics.files import label_files
from focusseg.runfolder import CROSSVAL_JSON, fold_dirs, owned_subfolder, remove_file_or_link, replace_link
from focusseg.workflows.validate import chooses_postprocessing, evaluate_for_plan, mean_foreground_dice

_REBUILD = "rebuild it with: focusseg crossval DATA --out CV (finished folds are kept)"


def _crossval(cv: Path) -> dict[str, Any]:
    """``cv/crossval.json``, read within bounds and checked: ``folds`` an object, ``data_dir`` a folder name,
    ``postprocessing`` absent or an object whose ``steps`` is a list."""
    path = cv / CROSSVAL_JSON
    if not path.is_file():
        raise RunFolderError("not a cross-validation folder (no crossval.json)", cv,
                             hint="make one with: focusseg crossval DATA --out CV")
    try:
        data = read_json(path, RunFolderError, allow_nan=False)
    except RunFolderError as exc:
        raise RunFolderError(exc.problem, path, hint=_REBUILD) from None
    if not isinstance(data, dict) or not isinstance(data.get("folds"), dict):
        raise RunFolderError("not a crossval.json (no folds)", path, hint=_REBUILD)
    if not isinstance(data.get("data_dir"), str) or not data["data_dir"].strip():
        raise RunFolderError("names no data_dir (the dataset its folds were trained on)", path, hint=_REBUILD)
    post = data.get("postprocessing")
    if post is not None and (not isinstance(post, dict) or not isinstance(post.get("steps", []), (list, type(None)))):
        raise RunFolderError("its postprocessing is not an object with a list of steps", path, hint=_REBUILD)
    return data


def _held_out(cv: Path, fold: str) -> list[str]:
    """The case ids fold ``fold`` of ``cv`` held out (its validation predictions)."""
    return sorted(label_files(cv / f"fold_{fold}" / "validation" / "predictions"))


def pooled_dice_on(cv: Path, case_ids: set[str]) -> dict[str, float | None]:
    """Per label, the mean Dice over ``case_ids`` from the CV's pooled evaluation (``validation/metrics.csv``,
    one row per case and label; an empty cell, Dice undefined for that case, does not count)."""
    import csv
    import math

    path = cv / "validation" / "metrics.csv"
    if not path.is_file():
        raise RunFolderError("no pooled evaluation (validation/metrics.csv)", cv,
                             hint="pool it again: focusseg crossval DATA --out CV (finished folds are kept)")
    values: dict[str, list[float]] = {}
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("case") not in case_ids:
                    continue
                label = str(row.get("label"))
                if not label.isdigit():
                    raise ValueError(f"label {label[:40]!r} is not a label value")
                values.setdefault(label, [])
                if row.get("dice") not in (None, "") and math.isfinite(float(row["dice"])):
                    values[label].append(float(row["dice"]))
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise RunFolderError(f"unreadable pooled evaluation ({one_line(exc)[:160]})", path,
                             hint="pool it again: focusseg crossval DATA --out CV (finished folds are kept)") from None
    return {lab: (sum(v) / len(v) if v else None) for lab, v in sorted(values.items(), key=lambda kv: int(kv[0]))}


def _names(cvs: list[Path]) -> list[str]:
    names = [c.resolve().name for c in cvs]
    return names if len(set(names)) == len(names) else [f"{i}_{n}" for i, n in enumerate(names)]


def find_best(cv_dirs: list[str | Path], out_dir: str | Path, pairs: bool = True, device: Any = "cpu",
              progress: bool = True) -> dict[str, Any]:
    """Rank the CVs and their pairwise ensembles (module docstring); returns and writes ``out_dir/best.json``."""
    import torch

    cvs = [Path(c) for c in cv_dirs]
    if not cvs:
        raise UsageError("name at least one cross-validation folder")
    out = Path(out_dir)
    for c in cvs:
        if is_inside(out, c):
            raise UsageError(f"--out lies inside the cross-validation folder {c}: it would write into an input", out,
                             hint="use a folder outside every CV folder")
    infos = [_crossval(c) for c in cvs]
    data_dirs = {i.get("data_dir") for i in infos}
    if len(data_dirs) > 1:
        raise UsageError(f"the cross-validations are of different data: {', '.join(sorted(map(str, data_dirs)))}")
    common = sorted(set.intersection(*[{d.name[5:] for d in fold_dirs(c)} for c in cvs]), key=int)
    if not common:
        raise UsageError("no fold is finished in every cross-validation folder",
                         hint="train the same folds in each (focusseg crossval ... --folds 0-4)")
    cases: dict[str, list[str]] = {}
    for k in common:
        held = {tuple(_held_out(c, k)): c for c in cvs}
        if len(held) > 1:
            raise UsageError(f"fold {k} holds out different cases in {cvs[0]} and {list(held.values())[-1]}: "
                             "the cross-validations use different splits")
        cases[k] = _held_out(cvs[0], k)
    names = _names(cvs)
    dev = torch.device(device) if isinstance(device, str) else device
    candidates: list[dict[str, Any]] = []
    subset = [str(k) for k in common]
    every = {c for v in cases.values() for c in v}
    for name, cv, info in zip(names, cvs, infos):
        per_label = pooled_dice_on(cv, every)  # the CV's pooled evaluation, on the common cases only
        means = [v for v in per_label.values() if v is not None]
        candidates.append({"name": name, "members": [str(cv)],
                           "mean_dice": sum(means) / len(means) if means else None, "dice_per_label": per_label,
                           "cases": len(every), "postprocessing": (info.get("postprocessing") or {}).get("steps")})
    if pairs and len(cvs) > 1:
        data_dir = Path(next(iter(data_dirs)))
        spec = load_dataset_spec(data_dir)
        raw = {c.case_id: c for c in discover_cases(data_dir, spec)}
        for (na, a), (nb, b) in itertools.combinations(zip(names, cvs), 2):
            folder = owned_subfolder(out, "ensembles", f"{na}+{nb}")
            pred_dir = owned_subfolder(folder, "validation", "predictions")
            ref_dir = owned_subfolder(folder, "validation", "reference")
            for k in common:
                ens = EnsemblePredictor([Predictor.from_run(a / f"fold_{k}", "best", dev),
                                         Predictor.from_run(b / f"fold_{k}", "best", dev)], postprocessing=[])
                for cid in cases[k]:  # case ids held out by fold k
                    name = f"{cid}{spec.file_ending}"
                    case = raw.get(cid)
                    if case is None or case.label is None:
                        raise UsageError(f"held-out case {cid!r} is not a labelled case of {data_dir}",
                                         a / f"fold_{k}" / "validation")
                    if (pred_dir / name).is_symlink():  # not one focusseg wrote: the link goes, never its target
                        remove_file_or_link(pred_dir / name)
                    target = safe_child(pred_dir, name)
                    if not target.is_file():  # a pair already scored (an earlier call) is not predicted again
                        image, _, geo = read_case(list(case.images), case.label)
                        with case_named(case.images[0]):
                            seg = ens.segment(image, geo)
                        write_segmentation(target, seg, geo)
                    replace_link(Path(case.label).resolve(), ref_dir / name)
            labels = sorted(int(v) for v in ens.plan["labels"].values() if int(v) != 0)
            summary = evaluate_for_plan(pred_dir, ref_dir, folder / "validation", ens.plan, progress)
            post = None
            if chooses_postprocessing(ens.plan):
                post = choose_postprocessing_for_run(folder, labels, regions=ens.plan.get("regions"))["steps"]
            candidates.append({"name": f"{na}+{nb}", "members": [str(a), str(b)],
                               "mean_dice": mean_foreground_dice(summary),
                               "dice_per_label": {k: v["dice"]["mean"] for k, v in summary["per_label"].items()},
                               "cases": sum(len(v) for v in cases.values()), "postprocessing": post,
                               "postprocessing_file": str(folder / "postprocessing.json") if post is not None
                               else None})
    ranked = sorted(candidates, key=lambda c: (-(c["mean_dice"] if c["mean_dice"] is not None else -1.0),
                                               len(c["members"])))
    winner = ranked[0]
    result = {"ranking": ranked, "best": winner["name"], "folds": subset, "predict": predict_command(winner)}
    save_json(result, out / "best.json")
    return result


def predict_command(candidate: dict[str, Any]) -> str:
    """The exact ``focusseg predict`` command of a candidate (IN_DIR / OUT_DIR left to the user), each path
    quoted for a POSIX shell (:func:`shlex.quote`: spaces, ``;``, ``$`` in a folder name paste as they are)."""
    members = [str(m) for m in candidate["members"]]
    argv = ["focusseg", "predict", members[0], "IN_DIR", "OUT_DIR"]
    for m in members[1:]:
        argv += ["--ensemble", m]
    if candidate.get("postprocessing_file"):
        argv += ["--postprocessing-file", str(candidate["postprocessing_file"])]
    return shlex.join(argv)
