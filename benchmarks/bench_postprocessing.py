"""Post-processing measured on validation, never applied blindly (issue 8).

    .venv/bin/python benchmarks/bench_postprocessing.py [RUN_DIR ...] [--write]

For every run folder given (default: ``runs/hippo_fold0`` and ``runs/ms_fold0`` when present, written by
``bench_train_hippocampus.py`` and the MS-lesion CLI run) the candidates of
``focusseg.inference.postprocess_selection.DEFAULT_CANDIDATES`` are tried per class on the run's held-out
predictions (``validation/predictions`` vs ``validation/reference``, original geometry) exactly as
``focusseg train`` / ``focusseg postprocess`` do, and the table of trials is reported. The real automatic spleen
prediction of ``../shared/data/LabelsOnly_SpleenPredictionPair`` (one case) is scored the same way. The run
folders' ``postprocessing.json`` are not touched (the choice is recomputed in memory).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results" / "postprocessing.md"
SPLEEN = ROOT / ".." / "shared" / "data" / "LabelsOnly_SpleenPredictionPair"


def table(name: str, res: dict, n: int, seconds: float) -> list[str]:
    lines = [f"### {name} ({n} case(s); {seconds:.1f} s for all trials)", "",
             "| class | candidate | mean Dice before | after | kept |", "| --- | --- | ---: | ---: | --- |"]
    for t in res["trials"]:
        step = ", ".join(f"{k}={v}" for k, v in t["step"].items() if k != "name")
        lines.append(f"| {t['label']} | {t['step']['name']}{f' ({step})' if step else ''} | {t['dice_before']:.4f} | "
                     f"{t['dice_after']:.4f} | {'**yes**' if t['accepted'] else ''} |")
    chosen = ", ".join(f"class {s['labels'][0]}: {s['name']}" for s in res["steps"]) or "none"
    lines += ["", f"Chosen: {chosen}.", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    from machine import machine_line

    from focusseg.inference.postprocess_selection import choose_postprocessing, read_prediction_pairs

    runs = args.runs or [p for p in (ROOT / "runs" / "hippo_fold0", ROOT / "runs" / "ms_fold0") if p.is_dir()]
    cmd = "python benchmarks/bench_postprocessing.py " + " ".join(str(a) for a in sys.argv[1:])
    lines = ["## Post-processing chosen on validation (issue 8)", "", f"- Command: `{cmd.strip()}`",
             f"- Machine: {machine_line()}",
             "- Rule (`focusseg.inference.postprocess_selection`): per class, each candidate is applied to that class "
             "in every held-out prediction; the best is kept only if it raises the class's mean Dice (any strict "
             "gain, as nnU-Net). `focusseg train` does this after its final validation and writes "
             "`postprocessing.json`; `focusseg predict` applies it (`--no-postprocess` to skip).", ""]
    sources = []
    for run in runs:
        plan = json.loads((run / "plan.json").read_text())
        labels = sorted(int(v) for v in plan["labels"].values() if int(v) != 0)
        sources.append((f"`{run.relative_to(ROOT) if run.is_relative_to(ROOT) else run}` held-out fold "
                        f"({plan['dataset']})", run / "validation" / "predictions", run / "validation" / "reference",
                        labels))
    if SPLEEN.is_dir():
        sources.append(("LabelsOnly_SpleenPredictionPair (a real automatic spleen prediction vs its ground truth)",
                        SPLEEN / "pred", SPLEEN / "gt", [1]))
    for name, pred_dir, ref_dir, labels in sources:
        _, preds, refs, spacings = read_prediction_pairs(pred_dir, ref_dir)
        if not preds:
            print(f"skip {name}: no predictions in {pred_dir}")
            continue
        t0 = time.perf_counter()
        res = choose_postprocessing(preds, refs, labels, spacings=spacings)
        lines += table(name, res, len(preds), time.perf_counter() - t0)
    text = "\n".join(lines)
    print(text)
    if args.write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
