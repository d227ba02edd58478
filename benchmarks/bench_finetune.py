"""Issue 15 part 6's measurement: a fine-tuning run converges faster than training from scratch at the same budget.

    .venv/bin/python benchmarks/bench_finetune.py --minutes 10       # source run + two target runs, 10 min each
    .venv/bin/python benchmarks/bench_finetune.py --source-run runs/hippo_fold0 --minutes 10   # reuse a source run
    .venv/bin/python benchmarks/bench_finetune.py --from-runs        # only the report, from the finished runs

Setup (nnU-Net's pretraining_and_finetuning reading: the plans are aligned first, then the weights transfer):

- source: Dataset004_Hippocampus, fold 0, the default plan (MR, 1 channel, 2 foreground classes), trained for
  ``--source-minutes`` (default: ``--minutes``), or an existing run given with ``--source-run``;
- target: Dataset101_MSLesionLjubljana, fold 0 (another MR dataset: 4 channels FLAIR/T1/T1POST/T2, 1 lesion class),
  trained twice with the same plan -- the source run's network (``--set network=...``, so every tensor but the first
  convolution and the head matches), the lesion benchmark's 64^3 patch and 0.95 foreground oversampling
  (``evidence_lib.py``'s blob comparison), no mirror TTA -- the same seed and the same ``--time-budget``:
  ``scratch`` (random initialisation) and ``finetune`` (``--init-from`` the source run, ``--warmup-epochs``
  (default 1), ``--freeze-encoder-epochs`` (default 0));
- measured: per epoch the training loss and the validation pseudo-Dice (fixed held-out patches), the iteration at
  which each arm first reaches 90 % of the from-scratch arm's best pseudo-Dice, the mean pseudo-Dice over the
  epochs (area under the curve), and the final validation of ``focusseg train`` (the held-out case predicted from
  the raw images with the best checkpoint, scored in its original geometry).

Both target arms pay their own fingerprint and preprocessing inside the budget (``train_seconds`` says how much of
it trained). Writes benchmarks/results/finetune.md and benchmarks/results/finetune_curve.png. Without
../shared/data the script prints why it skips and exits 0.
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
SOURCE_DATA = "Dataset004_Hippocampus"
TARGET_DATA = "Dataset101_MSLesionLjubljana"
#: What both target arms share besides the source's network (the MS-lesion settings of evidence_lib's blob run).
TARGET_SET = ["patch_size=[64,64,64]", "training.foreground_oversampling=0.95", "inference.mirror_axes=[]"]
ARMS = ("scratch", "finetune")


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


def _plot(logs: dict[str, list[dict]], out: Path) -> None:
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
    a2.set_ylabel("validation pseudo-Dice (lesion)")
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
    ap.add_argument("--target", default=TARGET_DATA, help="target dataset under ../shared/data")
    ap.add_argument("--warmup-epochs", type=int, default=1)
    ap.add_argument("--freeze-encoder-epochs", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--from-runs", action="store_true", help="report the runs already in --out")
    ap.add_argument("--note", default="", help="a line about the conditions of the run")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from machine import machine_line

    source_data, target_data = SHARED / SOURCE_DATA, SHARED / args.target
    for d in (source_data, target_data):
        if not d.is_dir() and not args.from_runs:
            print(f"skipped: {d} is absent (this benchmark needs ../shared/data beside the repository)")
            return 0
    source = args.source_run or args.out / "source"
    runs = {arm: args.out / f"{args.target}_{arm}" for arm in ARMS}
    commands: dict[str, str] = {}
    if not args.from_runs:
        if args.source_run is None:
            cmd = _train(source_data, source, args.source_minutes or args.minutes, args.device, ["--overwrite"])
            commands["source"] = shlex.join(cmd[3:])
        network = json.loads((source / "plan.json").read_text())["network"]
        shared = [x for s in TARGET_SET + ["network=" + json.dumps({"_replace": True, **network})]
                  for x in ("--set", s)]
        ft = ["--init-from", str(source), "--warmup-epochs", str(args.warmup_epochs),
              "--freeze-encoder-epochs", str(args.freeze_encoder_epochs)]
        for arm in ARMS:
            cmd = _train(target_data, runs[arm], args.minutes, args.device,
                         ["--overwrite", *shared, *(ft if arm == "finetune" else [])])
            commands[arm] = shlex.join(cmd[3:])
    summaries = {arm: json.loads((runs[arm] / "summary.json").read_text()) for arm in ARMS}
    logs, events = {}, {}
    for arm in ARMS:
        logs[arm], events[arm] = _log(runs[arm])
    plan = json.loads((runs["finetune"] / "plan.json").read_text())
    src_summary = json.loads((source / "summary.json").read_text()) if (source / "summary.json").is_file() else {}
    init = next((e for e in events["finetune"] if e["event"] == "init_from"), {})
    best_scratch = max((r["val_mean_dice"] for r in logs["scratch"] if r.get("val_mean_dice") is not None),
                       default=None)
    level = 0.9 * best_scratch if best_scratch else None

    def row(arm: str) -> str:
        s, log = summaries[arm], logs[arm]
        vals = [r["val_mean_dice"] for r in log if r.get("val_mean_dice") is not None]
        reach = _first_reaching(log, level) if level else None
        fv = (s.get("final_validation") or {}).get("mean_dice")
        first, last = (log[0].get("train_loss"), log[-1].get("train_loss")) if log else (None, None)
        return (f"| {arm} | {s['iterations']} | {s['epochs']} | {s['train_seconds']:.0f} | {_fmt(first)} | "
                f"{_fmt(last)} | {_fmt(max(vals) if vals else None)} | "
                f"{_fmt(sum(vals) / len(vals) if vals else None)} | {_fmt(reach)} | {_fmt(fv)} |")

    n = max(len(logs["scratch"]), len(logs["finetune"]))
    per_epoch = ["| epoch | iteration (scratch / finetune) | train loss scratch | train loss finetune | "
                 "pseudo-Dice scratch | pseudo-Dice finetune |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for e in range(n):
        a = logs["scratch"][e] if e < len(logs["scratch"]) else {}
        b = logs["finetune"][e] if e < len(logs["finetune"]) else {}
        per_epoch.append(f"| {e} | {a.get('iteration', '-')} / {b.get('iteration', '-')} | "
                         f"{_fmt(a.get('train_loss'))} | {_fmt(b.get('train_loss'))} | "
                         f"{_fmt(a.get('val_mean_dice'))} | {_fmt(b.get('val_mean_dice'))} |")
    entry = plan["training"].get("init_from", {})
    share = 100.0 * init.get("loaded_values", 0) / max(1, init.get("total_values", 1))
    mismatched = ", ".join(m["name"] for m in init.get("mismatched_tensors", []))
    lines = [
        "## Fine-tuning vs from scratch at the same budget (issue 15 part 6)",
        "",
        "- Command: `.venv/bin/python benchmarks/bench_finetune.py "
        + (f"--source-run {args.source_run} " if args.source_run else "")
        + f"--minutes {args.minutes:g}"
        + (f" --source-minutes {args.source_minutes:g}" if args.source_minutes else "")
        + f" --warmup-epochs {args.warmup_epochs} --freeze-encoder-epochs {args.freeze_encoder_epochs}`",
        *[f"  - {arm}: `focusseg {c}`" for arm, c in commands.items()],
        f"- Machine: {machine_line()}",
        f"- Source: {SOURCE_DATA} fold 0 ({source}), network {plan['network']}"
        + (f", {src_summary.get('iterations')} iterations, best pseudo-Dice "
           f"{_fmt(src_summary.get('best_val_mean_dice'))}" if src_summary else ""),
        f"- Target: {args.target} fold 0, patch {plan['patch_size']}, batch {plan['batch_size']}, "
        f"{plan['training']['iterations_per_epoch']} iterations/epoch, {args.minutes:g}-minute budget per arm "
        "(fingerprint and preprocessing included), same seed.",
        f"- Fine-tuning: `--init-from` {entry.get('source')} (sha256 {str(entry.get('sha256'))[:12]}...), "
        f"{init.get('loaded')} tensors loaded ({share:.1f} % of the values), {init.get('mismatched')} mismatched "
        f"and re-initialised ({mismatched}); warmup {entry.get('warmup_epochs')} epoch(s), encoder frozen "
        f"{entry.get('freeze_encoder_epochs')} epoch(s).",
        *([f"- Note: {args.note}"] if args.note else []),
        "",
        "| arm | iterations | epochs | train s | first-epoch loss | last-epoch loss | best pseudo-Dice | "
        "mean pseudo-Dice over epochs | iteration reaching 90 % of scratch's best | final validation Dice |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        row("scratch"),
        row("finetune"),
        "",
        f"90 % of the from-scratch arm's best pseudo-Dice = {_fmt(level)}. Pseudo-Dice: fixed validation patches of "
        "the held-out case(s), preprocessed grid; final validation: the raw held-out case(s), best checkpoint, "
        "original geometry, no TTA.",
        "",
        *per_epoch,
        "",
        "![fine-tuning vs scratch](finetune_curve.png)",
        "",
    ]
    _plot(logs, HERE / "results" / "finetune_curve.png")
    out = HERE / "results" / "finetune.md"
    out.write_text("\n".join(lines))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
