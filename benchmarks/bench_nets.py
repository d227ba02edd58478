"""Benchmark every registered network: parameters, forward FLOPs, saved activations, training-step time.

    .venv/bin/python benchmarks/bench_nets.py [--patch 64] [--batch 2] [--max-step-s 20]

Parameters, FLOPs (forward, one sample) and the activation bytes saved for backward (batch ``--batch``)
are counted on the meta device (SwinUNETR: on the CPU). The training step (forward + cross-entropy +
backward, one untimed warm-up) is timed on the CPU in fp32 and, when the fp32 step took less than a quarter of
``--max-step-s``, under bf16 autocast. A network whose step is predicted to exceed ``--max-step-s`` is not
timed, and the table says so; the prediction is ``3 x forward FLOPs x batch`` at half the FLOP rate of a
dense 32-channel 3x3x3 convolution measured at the start. ``--threads`` defaults to 1: on a 2-core machine
shared with other jobs, two contending threads were several times slower than one. Results go to
benchmarks/results/nets.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import monai
import torch

from focusseg.nets import build_network, network_names
from focusseg.planning.profile import count_parameters, estimate_activation_bytes, estimate_flops, time_training_step

ORDER = ["unet", "basic_unet", "dynunet", "vnet", "unetr", "swin_unetr", "lambda3d"]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def conv_probe_rate() -> float:
    """FLOP/s of forward + backward of a 32 -> 32 channel 3^3 convolution on 2 x 32^3 (after a warm-up)."""
    conv, x = torch.nn.Conv3d(32, 32, 3, padding=1), torch.randn(2, 32, 32, 32, 32)
    conv(x).sum().backward()
    t = time.perf_counter()
    conv(x).sum().backward()
    return 3 * 2 * 32 * 32 * 27 * 32**3 * 2 / (time.perf_counter() - t)


def static_costs(name: str, patch: tuple[int, ...], in_ch: int, classes: int, batch: int) -> tuple[int, int, int]:
    try:
        with torch.device("meta"):
            net = build_network(name, in_ch, classes, patch_size=patch)
        return (
            count_parameters(net),
            estimate_flops(net, patch, in_ch),
            estimate_activation_bytes(net, patch, in_ch, batch),
        )
    except RuntimeError:  # SwinUNETR builds its attention masks with .item(): count on the CPU
        net = build_network(name, in_ch, classes, patch_size=patch)
        return (
            count_parameters(net),
            estimate_flops(net, patch, in_ch),
            estimate_activation_bytes(net, patch, in_ch, batch),
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--max-step-s", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "nets.md")
    args = ap.parse_args()
    patch = (args.patch,) * 3
    torch.set_num_threads(args.threads)
    names = [n for n in ORDER if n in network_names()] + [n for n in network_names() if n not in ORDER]
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    probe_rate = conv_probe_rate()
    rows = []
    for name in names:
        torch.manual_seed(0)
        params, flops, act = static_costs(name, patch, args.in_channels, args.classes, args.batch)
        step_flops = 3 * flops * args.batch
        times: dict[str, str] = {}
        predicted = step_flops / (0.5 * probe_rate)
        if predicted > args.max_step_s:
            times = {"fp32": f"skipped (est. {predicted:.0f} s)", "bf16": "skipped"}
        else:
            net = build_network(name, args.in_channels, args.classes, patch_size=patch)
            for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                t = time_training_step(net, patch, args.in_channels, args.classes, args.batch, 1, dtype)
                times[label] = f"{t:.2f}"
                if label == "fp32" and t > args.max_step_s / 4:
                    times["bf16"] = f"skipped (fp32 > {args.max_step_s / 4:g} s)"
                    break
            del net
        rows.append((name, params, flops, act, times["fp32"], times["bf16"]))
        print(rows[-1], f"{time.perf_counter() - start:.0f} s", flush=True)
    total = time.perf_counter() - start
    lines = [
        "## Networks: size, cost and CPU training-step time",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_nets.py --patch {args.patch} --batch {args.batch}"
        f" --max-step-s {args.max_step_s:g}`  ",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), no GPU, torch threads: {torch.get_num_threads()}; "
        f"load average {load0:.1f} at start (CPU shared with other jobs)  ",
        f"torch {torch.__version__}, monai {monai.__version__}, {datetime.date.today().isoformat()}; "
        f"total run time {total:.0f} s",
        "",
        f"Patch {args.patch}^3, {args.in_channels} input channel, {args.classes} classes, default builder "
        f"settings. GFLOPs: forward, one sample (FlopCounterMode, 2 per multiply-add). Activations: tensors "
        f"saved for backward at batch {args.batch} (upper bound). Step: forward + CE + backward, batch "
        f"{args.batch}, seconds, one timed step after a warm-up; bf16 = CPU autocast.",
        "",
        "| network | params (M) | GFLOPs fwd | activations (GiB) | step fp32 (s) | step bf16 (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, params, flops, act, t32, t16 in rows:
        lines.append(f"| {name} | {params / 1e6:.2f} | {flops / 1e9:.1f} | {act / 2**30:.2f} | {t32} | {t16} |")
    lines += ["", f"Dense-convolution probe (fwd + bwd): {probe_rate / 1e9:.1f} GFLOP/s; predictions use half of it."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
