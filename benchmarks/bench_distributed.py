"""Issue 14's measurements: training on several processes (torchrun, DDP).

    .venv/bin/python benchmarks/bench_distributed.py                     # all three parts
    .venv/bin/python benchmarks/bench_distributed.py --part comm         # communication table only (no training)
    .venv/bin/python benchmarks/bench_distributed.py --part recipes --minutes 1.5

Parts:

- ``throughput``: Dataset004_Hippocampus fold 0, the default CPU plan (same global batch), a fixed number of
  iterations (``--iterations`` per epoch, 3 epochs, the first one not counted: warm-up), once as one process with 2
  torch threads and once as ``torchrun --nproc_per_node=2`` with 1 thread per rank (Gloo). Reported: seconds per
  iteration (median over the timed epochs) and samples/s. On this 2-core machine this is for the record only: the
  two ranks share the two cores that the one process uses.
- ``recipes``: ``torchrun --standalone --nproc_per_node=2 -m focusseg train`` on Hippocampus with the default, fp-pet
  (Focused Practice), runtime-freezing (CBS class weights) and cycle-flare21 (cycle training) recipes, each with a
  ``--time-budget`` of ``--minutes``: every run must end with rank 0's summary (world size 2), one log line per epoch
  and a final validation (the held-out fold predicted from the raw images like any run).
- ``comm``: per recipe's GPU (paper) form, planned for an 80 GB card on a fingerprint shaped like its paper's data
  (tests/spine/test_recipe_forms.py), the trainable parameters (networks built on the meta device; cycle training
  has three), the bytes DDP all-reduces per step (fp32 gradients: 4 B per parameter, whatever the autocast dtype)
  and, on paper, the time of a ring all-reduce on 8 GPUs, ``2 (N-1)/N * bytes / bus bandwidth``, with NCCL bus
  bandwidths assumed at 400 GB/s (NVLink 4, H100/H200 SXM) and 22 GB/s (PCIe 4.0 x16 through the host). DDP overlaps
  this with the backward pass (25 MB buckets), so it costs time only where it exceeds the backward.

Writes benchmarks/results/distributed.md. Without ../shared/data the training parts print why they skip.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = (REPO / ".." / "shared" / "data").resolve()
DATA = SHARED / "Dataset004_Hippocampus"
RECIPES = ("default", "fp-pet", "runtime-freezing", "cycle-flare21")
#: Which paper-shaped fingerprint each recipe's GPU form is planned on (tests/spine/test_recipe_forms.py).
RECIPE_DATA = {"default": "abdomen_ct", "fp-pet": "pet_ct", "runtime-freezing": "abdomen_ct",
               "cycle-flare21": "abdomen_ct", "flare21-fast": "abdomen_ct", "blob-valdo": "brain_mr3"}
BUS_GBPS = {"NVLink 4 (400 GB/s)": 400.0, "PCIe 4.0 x16 (22 GB/s)": 22.0}
GPUS = 8


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


def _run(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, float]:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    return rc, time.perf_counter() - t0


def _epochs(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in lines if "epoch" in r and "event" not in r]


def throughput(out: Path, iterations: int) -> list[str]:
    sets = ["--set", f"training.iterations_per_epoch={iterations}", "--set", "training.max_epochs=3",
            "--set", "training.val_patches=8", "--set", "training.val_full_every=0"]
    train = ["-m", "focusseg", "train", str(DATA), "--fold", "0", "--no-progress", "--device", "cpu", *sets]
    rows = []
    for name, launcher, threads in (("1 process x 2 threads", [], 2),
                                    ("2 processes x 1 thread (Gloo)",
                                     ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], 1)):
        run = out / ("tp_" + name.split()[0])
        cmd = [sys.executable, *launcher, *train, "--out", str(run), "--overwrite"]
        if launcher:  # torchrun takes the module after its own flags
            cmd = [sys.executable, *launcher, "-m", "focusseg", *train[2:], "--out", str(run), "--overwrite"]
        rc, wall = _run(cmd, _env(threads), out / f"{run.name}.log")
        if rc != 0:
            rows.append(f"| {name} | failed (rc {rc}, see {run.name}.log) | | |")
            continue
        plan = json.loads((run / "plan.json").read_text())
        timed = [r["train_time_s"] / iterations for r in _epochs(run)[1:]]
        s_it = statistics.median(timed)
        rows.append(f"| {name} | {plan['batch_size']} | {s_it:.3f} | {plan['batch_size'] / s_it:.2f} |")
    return ["## CPU throughput: 1 process x 2 threads vs 2 processes x 1 thread", "",
            f"Hippocampus fold 0, default CPU plan, {iterations} iterations per epoch, epochs 1-2 timed (epoch 0 is "
            "warm-up), the same global batch.", "",
            "| configuration | global batch | s / iteration | samples / s |", "|---|---|---|---|", *rows, ""]


def recipes(out: Path, minutes: float) -> list[str]:
    rows = []
    for name in RECIPES:
        run = out / f"ddp_{name}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "focusseg",
               "train", str(DATA), "--out", str(run), "--fold", "0", "--recipe", name, "--time-budget",
               f"{minutes:g}", "--no-progress", "--device", "cpu", "--overwrite"]
        rc, wall = _run(cmd, _env(1), out / f"{run.name}.log")
        if rc != 0 or not (run / "summary.json").is_file():
            tail = (out / f"{run.name}.log").read_text().strip().splitlines()[-1:] or ["?"]
            rows.append(f"| {name} | failed (rc {rc}): {tail[0][:120]} | | | | |")
            continue
        s = json.loads((run / "summary.json").read_text())
        epochs = [r["epoch"] for r in _epochs(run)]
        one_writer = epochs == list(range(len(epochs)))
        fv = (s.get("final_validation") or {}).get("mean_dice")
        rows.append(f"| {name} | {s.get('world_size')} | {s['iterations']} | {len(epochs)} "
                    f"({'one line each' if one_writer else 'DUPLICATES'}) | "
                    f"{'n/a' if fv is None else f'{fv:.4f}'} | {wall:.0f} |")
    return ["## The recipes on 2 CPU processes (torchrun, Gloo), Hippocampus fold 0", "",
            f"`torchrun --standalone --nproc_per_node=2 -m focusseg train ... --recipe R --time-budget {minutes:g}`, "
            "1 thread per rank. The final validation predicts the held-out raw cases with the best checkpoint "
            "(rank 0). Dice after so short a budget says only that the run learns, not how well the recipe does.", "",
            "| recipe | world size | iterations | epochs logged | final validation mean Dice | wall s |",
            "|---|---|---|---|---|---|", *rows, ""]


def comm() -> list[str]:
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from spine.test_recipe_forms import SYNTHETIC, gpu_plan

    from focusseg.nets.from_plan import build_network_from_plan

    rows = []
    for name, fp_name in RECIPE_DATA.items():
        plan = gpu_plan(SYNTHETIC[fp_name], name)
        with torch.device("meta"):
            net = build_network_from_plan(plan)
        n_nets = 3 if ((plan["training"].get("task") or {}) or {}).get("name") == "cycle" else 1
        params = n_nets * sum(p.numel() for p in net.parameters() if p.requires_grad)
        bytes_ = 4 * params
        times = [2 * (GPUS - 1) / GPUS * bytes_ / (bw * 1e9) * 1e3 for bw in BUS_GBPS.values()]
        rows.append(f"| {name} | {fp_name} | {plan['network']['name']}{' x3' if n_nets == 3 else ''} | "
                    f"{params / 1e6:.1f} M | {bytes_ / 2**20:.0f} MiB | "
                    + " | ".join(f"{t:.1f}" for t in times) + " |")
    head = " | ".join(f"ring all-reduce on {GPUS} GPUs, {k}: ms / step" for k in BUS_GBPS)
    return ["## Communication per step of each recipe's GPU form (on paper)", "",
            "Gradients all-reduced once per step by DDP (fp32, 4 B per trainable parameter). Ring all-reduce time "
            f"`2 (N-1)/N x bytes / bus bandwidth`, N = {GPUS}; bus bandwidths are assumptions (NCCL all-reduce bus "
            "bandwidth typically measured on such links), not measured here: no GPU was lent to this session.", "",
            f"| recipe | planned on | network | parameters | all-reduce per step | {head} |",
            "|---|---|---|---|---|" + "---|" * len(BUS_GBPS), *rows, ""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("all", "throughput", "recipes", "comm"), default="all")
    ap.add_argument("--minutes", type=float, default=1.5, help="time budget per recipe run")
    ap.add_argument("--iterations", type=int, default=20, help="iterations per epoch in the throughput part")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_distributed")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "distributed.md")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from machine import machine_line

    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["# Training on several processes (torchrun, DDP)", "",
             f"Command: `.venv/bin/python benchmarks/bench_distributed.py {' '.join(sys.argv[1:])}`".rstrip(), "",
             f"Machine: {machine_line()}", ""]
    parts = ("throughput", "recipes", "comm") if args.part == "all" else (args.part,)
    if any(p != "comm" for p in parts) and not DATA.is_dir():
        print(f"skip: {DATA} not found (the training parts need ../shared/data)")
        parts = tuple(p for p in parts if p == "comm")
    if "throughput" in parts:
        lines += throughput(args.out, args.iterations)
    if "recipes" in parts:
        lines += recipes(args.out, args.minutes)
    if "comm" in parts:
        lines += comm()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.results.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(args.results)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
