"""Forward + backward time of blob loss vs Dice + BCE on a 2 x 2 x 128^3 batch with ~50 instances per sample.

    .venv/bin/python benchmarks/bench_losses.py [--size 128] [--repeats 5] [--out benchmarks/results/losses.md]

Blob loss = 0.66 (Dice + BCE) + 0.33 blob(Dice + BCE), sigmoid, 26-connectivity. The target for the library is
blob <= 1.5 x (Dice + BCE). For context the script also times one pass of the per-instance python loop (one
masked full-volume Dice + BCE per instance, as the reference implementation does) unless ``--no-loop``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import cc3d
import monai
import numpy as np
import torch
import torch.nn.functional as F

from focusseg.losses import BlobLoss, build_loss


def make_batch(size: int, n_blobs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (2, 2, S, S, S) and labels with ``n_blobs`` random balls (radius 2-7, labels 1/2) per sample."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1).astype(np.float32)
    labels = np.zeros((2, size, size, size), dtype=np.int64)
    for b in range(2):
        for _ in range(n_blobs):
            r = rng.uniform(2, 7)
            c = rng.uniform(r, size - r, 3)
            lo, hi = np.maximum((c - r).astype(int), 0), np.minimum((c + r).astype(int) + 2, size)
            sub = grid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
            inside = ((sub - c) ** 2).sum(-1) <= r * r
            labels[b, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]][inside] = rng.integers(1, 3)
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 2, size, size, size, generator=g)
    return logits, torch.from_numpy(labels)[:, None]


def time_fwd_bwd(losses: dict, logits: torch.Tensor, target: torch.Tensor, repeats: int) -> dict[str, list[float]]:
    """Forward + backward seconds of each loss; the losses alternate within each round (fair under drift)."""
    times: dict[str, list[float]] = {name: [] for name in losses}
    for r in range(repeats + 1):  # round 0 is a warm-up
        for name, loss in losses.items():
            x = logits.clone().requires_grad_(True)
            t0 = time.perf_counter()
            loss(x, target).backward()
            if r > 0:
                times[name].append(time.perf_counter() - t0)
    return times


def loop_blob(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Reference-style blob term: a python loop with one masked full-volume Dice + BCE per instance."""
    p = torch.sigmoid(x)
    per_sample = []
    for b in range(x.shape[0]):
        class_means = []
        for c in range(x.shape[1]):
            inst = torch.from_numpy(cc3d.connected_components((target[b, 0] == c + 1).numpy().astype(np.uint8)))
            inst = inst.long()
            losses = []
            for u in range(1, int(inst.max()) + 1):
                y = (inst == u).float()
                m = p[b, c] * ((inst == 0) | (inst == u))
                dice = 1 - (2 * (m * y).sum() + 1e-5) / (m.sum() + y.sum() + 1e-5)
                losses.append(dice + F.binary_cross_entropy(m, y))
            if losses:
                class_means.append(sum(losses) / len(losses))
        per_sample.append(sum(class_means) / len(class_means))
    return sum(per_sample) / len(per_sample)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--blobs", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable ratios on a shared machine)")
    ap.add_argument("--no-loop", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "losses.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    logits, target = make_batch(args.size, args.blobs)
    n_inst = [
        sum(int(cc3d.connected_components((target[b, 0] == c).numpy().astype(np.uint8)).max()) for c in (1, 2))
        for b in range(2)
    ]
    dice_bce = build_loss({"dice": {"activation": "sigmoid"}, "bce": 1})
    blob = BlobLoss()
    timed = time_fwd_bwd({"ref": dice_bce, "blob": blob}, logits, target, args.repeats)
    t_ref, t_blob = timed["ref"], timed["blob"]
    t0 = time.perf_counter()
    for b in range(2):
        cc3d.connected_components(target[b, 0].numpy().astype(np.uint8), connectivity=26)
    t_cc = time.perf_counter() - t0
    t_loop = None
    if not args.no_loop:
        x = logits.clone().requires_grad_(True)
        t0 = time.perf_counter()
        (0.66 * dice_bce(x, target) + 0.33 * loop_blob(x, target)).backward()
        t_loop = time.perf_counter() - t0

    med_ref, med_blob = statistics.median(t_ref), statistics.median(t_blob)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    shape = f"2 x 2 x {args.size}^3"
    rows = [
        ("Dice + BCE", med_ref, min(t_ref), 1.0),
        ("blob loss (vectorised, incl. cc3d labelling)", med_blob, min(t_blob), med_blob / med_ref),
    ]
    if t_loop is not None:
        rows.append(("blob loss, per-instance python loop (1 run)", t_loop, t_loop, t_loop / med_ref))
    lines = [
        "## Losses: blob loss vs Dice + BCE (forward + backward)",
        "",
        f"- command: `.venv/bin/python benchmarks/bench_losses.py --size {args.size} --blobs {args.blobs} "
        f"--repeats {args.repeats} --threads {args.threads}`",
        f"- machine: {os.cpu_count()} CPU cores ({cpu}), no GPU; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), monai {monai.__version__}, Python {platform.python_version()}",
        f"- date: {datetime.date.today().isoformat()}",
        f"- batch: logits {shape} float32 (sigmoid, 2 channels), {args.blobs} random balls per sample; "
        f"instances after 26-connected labelling: {n_inst[0]} and {n_inst[1]}",
        "",
        "| loss | median s | min s | x Dice + BCE |",
        "| --- | --- | --- | --- |",
        *[f"| {name} | {med:.3f} | {mn:.3f} | {ratio:.2f} |" for name, med, mn, ratio in rows],
        "",
        f"cc3d labelling of both samples alone: {t_cc:.3f} s. Target: blob <= 1.5 x Dice + BCE -> "
        f"{'met' if med_blob <= 1.5 * med_ref else 'NOT met'} ({med_blob / med_ref:.2f} x).",
        "",
        "Timed with one torch thread by default: the machine is shared, and with two threads every parallel op "
        "waits for a core that another process holds, which makes the ratio noise. The two losses alternate "
        "within each round; round 0 is a warm-up.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
