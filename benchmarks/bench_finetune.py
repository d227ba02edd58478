"""Issue 15 part 6's measurement: a fine-tuning run converges faster than training from scratch at the same budget.

    .venv/bin/python benchmarks/bench_finetune.py --minutes 4 --source-minutes 8     # pair hippocampus-parts
    .venv/bin/python benchmarks/bench_finetune.py --pair ms --source-run runs/hippo_fold0 --minutes 5
    .venv/bin/python benchmarks/bench_finetune.py --source-run runs/finetune/hippocampus-parts/source --seed 1
    .venv/bin/python benchmarks/bench_finetune.py --from-runs        # only the report, from the finished runs

Two pairs (nnU-Net's pretraining_and_finetuning reading: the plans are aligned first, then the weights transfer):

- ``--pair hippocampus-parts`` (default; the textbook pretraining case: a large source with a coarse label, a small
  target with finer classes, same modality). Dataset004_Hippocampus's 208 cases are split once with a fixed seed:
  56 target cases, 152 source cases (disjoint). The source dataset ``HippocampusWhole`` holds the 152 cases with the
  two labels merged into one (``hippocampus`` = anterior | posterior; labels rewritten under ``--out``, images are
  symlinks: the shared data are read, never copied or modified); the target dataset ``HippocampusParts16`` holds
  the 56 cases with the original anterior / posterior labels and a ``splits_final.json`` whose fold 0 trains on 16
  cases and validates on the other 40. The head (3 classes vs 2) is re-initialised, every other tensor loads.
- ``--pair ms``: source Dataset004_Hippocampus fold 0 (MR, 1 channel, 2 classes); target
  Dataset101_MSLesionLjubljana fold 0 (4 channels FLAIR/T1/T1POST/T2, 1 lesion class) with the source run's
  network, the lesion benchmark's 64^3 patch, 0.95 foreground oversampling and no mirror TTA. The first convolution
  and the head are re-initialised.

All target arms use the same plan, seed and ``--time-budget``: ``scratch`` (random initialisation) and
``finetune`` (``--init-from`` the source run, ``--warmup-epochs``, ``--freeze-encoder-epochs`` (default 0));
several warm-up values give one fine-tuning arm each (default ``0 1``: ``finetune_w0``, ``finetune_w1``).
Measured: per epoch the training loss and the validation pseudo-Dice (fixed held-out patches), the iteration at
which each arm first reaches 90 % of the from-scratch arm's best pseudo-Dice and the one at which it first reaches
that best itself (the convergence figure, also as a share of scratch's iterations), the mean pseudo-Dice over the
epochs (area under the curve), and the final validation of ``focusseg train`` (the held-out cases
predicted from the raw images with the best checkpoint, scored in their original geometry).

All target arms pay their own fingerprint and preprocessing inside the budget (``train_seconds`` says how much of
it trained). Writes benchmarks/results/finetune.md (hippocampus-parts) or finetune_ms.md (ms) and the curve beside
it. Without ../shared/data the script prints why it skips and exits 0.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = (REPO / ".." / "shared" / "data").resolve()
HIPPOCAMPUS = "Dataset004_Hippocampus"
#: pair -> (what both target arms share besides the source's network, result file stem, what the Dice is of).
PAIRS = {
    "hippocampus-parts": ([], "finetune", "anterior, posterior"),
    # the MS-lesion settings of evidence_lib's blob run
    "ms": (["patch_size=[64,64,64]", "training.foreground_oversampling=0.95", "inference.mirror_axes=[]"],
           "finetune_ms", "lesion"),
}
N_TARGET, N_TARGET_TRAIN, SPLIT_SEED = 56, 16, 15


def _symlink(src: Path, dst: Path) -> None:
    if not dst.exists():
        dst.symlink_to(src)


def build_hippocampus_pair(out: Path) -> tuple[Path, Path]:
    """The source (152 cases, one merged label) and target (56 cases, two labels, fold 0 = 16 train / 40 val)
    datasets of ``--pair hippocampus-parts`` under ``out``; rebuilt only where absent. Images (and the target's
    labels) are symlinks to ../shared/data; the source's merged labels are written here."""
    import random

    import nibabel as nib
    import numpy as np

    raw = SHARED / HIPPOCAMPUS
    meta = json.loads((raw / "dataset.json").read_text())
    cases = sorted(f.name[: -len(".nii.gz")] for f in (raw / "labelsTr").glob("*.nii.gz"))
    rng = random.Random(SPLIT_SEED)
    picked = rng.sample(cases, N_TARGET)
    target, target_train = sorted(picked), sorted(picked[:N_TARGET_TRAIN])
    source = [c for c in cases if c not in set(target)]
    src_dir, tgt_dir = out / "Dataset904_HippocampusWhole", out / "Dataset905_HippocampusParts16"
    for d, ids in ((src_dir, source), (tgt_dir, target)):
        (d / "imagesTr").mkdir(parents=True, exist_ok=True)
        (d / "labelsTr").mkdir(parents=True, exist_ok=True)
        for c in ids:
            _symlink(raw / "imagesTr" / f"{c}_0000.nii.gz", d / "imagesTr" / f"{c}_0000.nii.gz")
    for c in target:
        _symlink(raw / "labelsTr" / f"{c}.nii.gz", tgt_dir / "labelsTr" / f"{c}.nii.gz")
    for c in source:
        dst = src_dir / "labelsTr" / f"{c}.nii.gz"
        if dst.exists():
            continue
        img = nib.load(raw / "labelsTr" / f"{c}.nii.gz")
        merged = (np.asarray(img.dataobj) > 0).astype(np.uint8)
        tmp = dst.with_name(dst.name.replace(".nii.gz", ".tmp.nii.gz"))
        nib.save(nib.Nifti1Image(merged, img.affine, img.header), tmp)
        tmp.replace(dst)
    base = {k: v for k, v in meta.items() if k not in ("labels", "numTraining", "name", "description")}
    (src_dir / "dataset.json").write_text(json.dumps({
        **base, "name": "HippocampusWhole", "labels": {"background": 0, "hippocampus": 1},
        "numTraining": len(source),
        "description": f"{len(source)} cases of {HIPPOCAMPUS}, anterior and posterior merged (bench_finetune.py)"},
        indent=2))
    (tgt_dir / "dataset.json").write_text(json.dumps({
        **base, "name": "HippocampusParts16", "labels": meta["labels"], "numTraining": len(target),
        "description": f"{len(target)} other cases of {HIPPOCAMPUS}; fold 0 trains on {N_TARGET_TRAIN}"},
        indent=2))
    (tgt_dir / "splits_final.json").write_text(json.dumps(
        [{"train": target_train, "val": [c for c in target if c not in set(target_train)]}], indent=1))
    return src_dir, tgt_dir


def _train(data: Path, out: Path, minutes: float, device: str, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "focusseg.cli", "train", str(data), "--out", str(out), "--fold", "0",
           "--time-budget", f"{minutes:g}", "--device", device, "--no-progress", *extra]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    print(f"wall time {time.time() - t0:.0f} s", flush=True)
    return cmd


def _log(run: Path) -> tuple[list[dict], list[dict]]:
    """(epoch records, event records) of a run's log.jsonl."""
    epochs, events = [], []
    for line in (run / "log.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        (events if "event" in rec else epochs).append(rec)
    return epochs, events


def _first_reaching(log: list[dict], level: float) -> int | None:
    for r in log:
        if r.get("val_mean_dice") is not None and r["val_mean_dice"] >= level:
            return int(r["iteration"])
    return None


def _fmt(v: object, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _plot(logs: dict[str, list[dict]], out: Path, classes: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for arm, log in logs.items():
        a1.plot([r["iteration"] for r in log], [r.get("train_loss") for r in log], label=arm)
        val = [r for r in log if r.get("val_mean_dice") is not None]
        a2.plot([r["iteration"] for r in val], [r["val_mean_dice"] for r in val], marker=".", label=arm)
    a1.set_xlabel("iteration")
    a1.set_ylabel("training loss")
    a2.set_xlabel("iteration")
    a2.set_ylabel(f"validation pseudo-Dice ({classes})")
    a2.set_ylim(0, 1)
    for a in (a1, a2):
        a.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10, help="time budget of each target run (and the source run)")
    ap.add_argument("--source-minutes", type=float, default=None, help="time budget of the source run")
    ap.add_argument("--source-run", type=Path, default=None, help="a trained source run to reuse")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "finetune")
    ap.add_argument("--pair", choices=sorted(PAIRS), default="hippocampus-parts")
    ap.add_argument("--warmup-epochs", type=int, nargs="+", default=[0, 1],
                    help="one fine-tuning arm per value (arms finetune_wN when more than one)")
    ap.add_argument("--freeze-encoder-epochs", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0,
                    help="training seed of every target arm (not 0: runs <arm>_seedN, report <stem>_seedN.md)")
    ap.add_argument("--from-runs", action="store_true", help="report the runs already in --out")
    ap.add_argument("--note", default="", help="a line about the conditions of the run")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from machine import machine_line

    target_set, stem, classes = PAIRS[args.pair]
    suffix = f"_seed{args.seed}" if args.seed else ""
    stem += suffix
    needed = [SHARED / HIPPOCAMPUS] + ([SHARED / "Dataset101_MSLesionLjubljana"] if args.pair == "ms" else [])
    for d in needed:
        if not d.is_dir() and not args.from_runs:
            print(f"skipped: {d} is absent (this benchmark needs ../shared/data beside the repository)")
            return 0
    out = args.out / args.pair
    if args.pair == "ms":
        source_data, target_data = SHARED / HIPPOCAMPUS, SHARED / "Dataset101_MSLesionLjubljana"
    else:
        source_data, target_data = build_hippocampus_pair(out / "data")
    source = args.source_run or out / "source"
    tuned = {("finetune" if len(args.warmup_epochs) == 1 else f"finetune_w{w}"): w for w in args.warmup_epochs}
    arms = ["scratch", *tuned]
    runs = {arm: out / f"{arm}{suffix}" for arm in arms}
    commands: dict[str, str] = {}
    if not args.from_runs:
        if args.source_run is None:
            cmd = _train(source_data, source, args.source_minutes or args.minutes, args.device, ["--overwrite"])
            commands["source"] = shlex.join(cmd[3:])
        network = json.loads((source / "plan.json").read_text())["network"]
        shared = [x for s in target_set + ["network=" + json.dumps({"_replace": True, **network}),
                                           f"training.seed={args.seed}"]
                  for x in ("--set", s)]
        for arm in arms:
            ft = [] if arm == "scratch" else [
                "--init-from", str(source), "--warmup-epochs", str(tuned[arm]),
                "--freeze-encoder-epochs", str(args.freeze_encoder_epochs)]
            cmd = _train(target_data, runs[arm], args.minutes, args.device, ["--overwrite", *shared, *ft])
            commands[arm] = shlex.join(cmd[3:])
        (out / f"commands{suffix}.json").write_text(json.dumps(commands, indent=1))
    elif (out / f"commands{suffix}.json").is_file():
        commands = json.loads((out / f"commands{suffix}.json").read_text())
    summaries = {arm: json.loads((runs[arm] / "summary.json").read_text()) for arm in arms}
    logs, events = {}, {}
    for arm in arms:
        logs[arm], events[arm] = _log(runs[arm])
    first_tuned = arms[1]
    plan = json.loads((runs[first_tuned] / "plan.json").read_text())
    src_summary = json.loads((source / "summary.json").read_text()) if (source / "summary.json").is_file() else {}
    init = next((e for e in events[first_tuned] if e["event"] == "init_from"), {})
    best_scratch = max((r["val_mean_dice"] for r in logs["scratch"] if r.get("val_mean_dice") is not None),
                       default=None)
    level = 0.9 * best_scratch if best_scratch else None

    def row(arm: str) -> str:
        s, log = summaries[arm], logs[arm]
        vals = [r["val_mean_dice"] for r in log if r.get("val_mean_dice") is not None]
        reach = _first_reaching(log, level) if level else None
        match = _first_reaching(log, best_scratch) if best_scratch else None
        of_scratch = f" ({100.0 * match / summaries['scratch']['iterations']:.0f} %)" if match else ""
        fv = (s.get("final_validation") or {}).get("mean_dice")
        first, last = (log[0].get("train_loss"), log[-1].get("train_loss")) if log else (None, None)
        return (f"| {arm} | {s['iterations']} | {s['epochs']} | {s['train_seconds']:.0f} | {_fmt(first)} | "
                f"{_fmt(last)} | {_fmt(max(vals) if vals else None)} | "
                f"{_fmt(sum(vals) / len(vals) if vals else None)} | {_fmt(reach)} | {_fmt(match)}{of_scratch} | "
                f"{_fmt(fv)} |")

    n = max(len(logs[a]) for a in arms)
    per_epoch = ["| epoch | iteration (" + " / ".join(arms) + ") | " + " | ".join(f"train loss {a}" for a in arms)
                 + " | " + " | ".join(f"pseudo-Dice {a}" for a in arms) + " |",
                 "| ---: | ---: |" + " ---: |" * (2 * len(arms))]
    for e in range(n):
        recs = [logs[a][e] if e < len(logs[a]) else {} for a in arms]
        per_epoch.append(f"| {e} | " + " / ".join(str(r.get("iteration", "-")) for r in recs) + " | "
                         + " | ".join(_fmt(r.get("train_loss")) for r in recs) + " | "
                         + " | ".join(_fmt(r.get("val_mean_dice")) for r in recs) + " |")
    entry = plan["training"].get("init_from", {})
    share = 100.0 * init.get("loaded_values", 0) / max(1, init.get("total_values", 1))
    mismatched = ", ".join(m["name"] for m in init.get("mismatched_tensors", []))
    lines = [
        f"## Fine-tuning vs from scratch at the same budget (issue 15 part 6): {source_data.name} -> "
        f"{target_data.name}" + (f", training seed {args.seed}" if args.seed else ""),
        "",
        f"- Command: `.venv/bin/python benchmarks/bench_finetune.py --pair {args.pair} "
        + (f"--source-run {args.source_run} " if args.source_run else "")
        + f"--minutes {args.minutes:g}"
        + (f" --source-minutes {args.source_minutes:g}" if args.source_minutes else "")
        + (f" --seed {args.seed}" if args.seed else "")
        + f" --warmup-epochs {' '.join(map(str, args.warmup_epochs))} "
        f"--freeze-encoder-epochs {args.freeze_encoder_epochs}`",
        *[f"  - {arm}: `focusseg {c}`" for arm, c in commands.items()],
        f"- Machine: {machine_line()}",
        f"- Source: {source_data.name} fold 0 ({source}), network {plan['network']}"
        + (f", {src_summary.get('iterations')} iterations, best pseudo-Dice "
           f"{_fmt(src_summary.get('best_val_mean_dice'))}" if src_summary else ""),
        f"- Target: {target_data.name} fold 0, patch {plan['patch_size']}, batch {plan['batch_size']}, "
        f"{plan['training']['iterations_per_epoch']} iterations/epoch, {args.minutes:g}-minute budget per arm "
        "(fingerprint and preprocessing included), "
        f"same training seed ({args.seed}) in every arm.",
        f"- Fine-tuning: `--init-from` {entry.get('source')} (sha256 {str(entry.get('sha256'))[:12]}...), "
        f"{init.get('loaded')} tensors loaded ({share:.1f} % of the values), {init.get('mismatched')} mismatched "
        f"and re-initialised ({mismatched}); warmup "
        + ", ".join(f"{tuned[a]} epoch(s) ({a})" for a in tuned)
        + f", encoder frozen {entry.get('freeze_encoder_epochs')} epoch(s).",
        *([f"- Note: {args.note}"] if args.note else []),
        "",
        "| arm | iterations | epochs | train s | first-epoch loss | last-epoch loss | best pseudo-Dice | "
        "mean pseudo-Dice over epochs | iteration reaching 90 % of scratch's best | "
        "iteration reaching scratch's best (share of scratch's iterations) | final validation Dice |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *[row(a) for a in arms],
        "",
        f"90 % of the from-scratch arm's best pseudo-Dice = {_fmt(level)}. Pseudo-Dice: fixed validation patches of "
        "the held-out case(s), preprocessed grid; final validation: the raw held-out case(s), best checkpoint, "
        f"original geometry, mirror TTA over axes {plan['inference'].get('mirror_axes')}.",
        "",
        *per_epoch,
        "",
        f"![fine-tuning vs scratch](benchmarks/results/{stem}_curve.png)",
        "",
    ]
    _plot(logs, HERE / "results" / f"{stem}_curve.png", classes)
    report = HERE / "results" / f"{stem}.md"
    report.write_text("\n".join(lines))
    print(report.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
