"""How far is a training step from what this machine can do? A roofline of the default plan's step and of one
inference window batch.

1. The machine's measured limits, with the threads training uses: dense 3D convolution forward + backward in fp32
   and under bf16 autocast (a compute-bound 32 -> 32 channel 3x3x3 layer), and memory bandwidth (a copy and a
   triad on 256 MiB arrays, bytes read + written per second).
2. The default plan's training step, run as the loop runs it (the real preprocessed store, sampler, loader with its
   prefetching, augmenter, network, loss, optimiser), split into parts timed one by one: data wait (what the
   prefetching did not hide), augmentation, forward + loss, backward, gradient clipping with the step's one host
   read (the "host sync"; free on a CPU, a device wait on a GPU), optimiser. For each part the work it does:
   FLOPs from ``torch.utils.flop_counter`` (convolutions and matrix products) and bytes read + written by its
   operators (a dispatch mode adds up every operator's tensor inputs and outputs: what an unfused implementation
   moves at least once, caches ignored). The part's limit is max(FLOPs / peak FLOP/s, bytes / bandwidth) and
   "% of limit" is that lower bound over the measured time: 100 % would mean the part runs at the machine's limit.
3. One inference window batch (the plan's inference batch, patch and network, inference mode) in fp32 and bf16,
   in contiguous and channels-last-3D layout and with the thin layers prepared (``inference.accelerate: thin``).
4. The training step again with the default layout (``training.channels_last: false``) beside the plan's own.

    .venv/bin/python benchmarks/bench_roofline.py [--run runs/house_after] [--iterations 20] [--write]

``--run``: a finished run of the default plan (its ``plan.json`` and ``preprocessed/``), e.g. from
``focusseg train ../shared/data/Dataset004_Hippocampus --out runs/hippo_fold0 --fold 0 --time-budget 30``.
Writes benchmarks/results/roofline.md with ``--write``. Run with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))


class ByteCounter(TorchDispatchMode):
    """Bytes of every operator's tensor inputs and outputs (views and metadata-only operators excluded)."""

    FREE = {"view", "_unsafe_view", "expand", "permute", "t", "transpose", "unsqueeze", "squeeze", "select",
            "slice", "as_strided", "detach", "alias", "empty", "empty_like", "empty_strided", "lift_fresh",
            "_to_copy_noop", "split", "unbind", "reshape", "set_", "resize_"}

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.split(".")[0] not in self.FREE:
            seen: set[int] = set()
            for t in _tensors((args, kwargs, out)):
                if id(t) not in seen:
                    seen.add(id(t))
                    self.bytes += t.numel() * t.element_size()
        return out


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def conv_peak(amp: torch.dtype | None, repeats: int) -> dict:
    """FLOP/s of a compute-bound 3D convolution's forward + backward (fp32, or under ``amp`` autocast)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(32, 32, 3, padding=1)
    x = torch.randn(2, 32, 40, 56, 40, requires_grad=True)

    def step():
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            y = conv(x)
        y.float().sum().backward()

    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    t = best_time(step, repeats)
    return {"flops": flops, "seconds": t, "flops_per_s": flops / t}


def bandwidth(repeats: int) -> dict:
    """Bytes read + written per second: copy (2 x 256 MiB per call) and triad a = b + s * c (3 x 256 MiB)."""
    n = 64 * 2**20
    a, b, c = torch.empty(n), torch.rand(n), torch.rand(n)
    t_copy = best_time(lambda: a.copy_(b), repeats)
    t_triad = best_time(lambda: torch.add(b, c, alpha=1.5, out=a), repeats)
    return {"copy": 2 * 4 * n / t_copy, "triad": 3 * 4 * n / t_triad}


def count(fn: Callable[[], object]) -> tuple[int, int, object]:
    """FLOPs and bytes of one call of ``fn`` (run once under both counters) and its result."""
    with FlopCounterMode(display=False) as fc, ByteCounter() as bc:
        out = fn()
    return fc.get_total_flops(), bc.bytes, out


def count_parts(parts, net, opt, grad_clip, forward, batches, gen) -> dict[str, tuple[int, int]]:
    """FLOPs and bytes of each part of one step, on the first batch (the counters' overhead is not timed)."""
    _, images, labels = next(batches)
    work = {"data wait": (0, images.numel() * images.element_size() + labels.numel() * labels.element_size())}
    with torch.no_grad():
        f, b, (images, labels) = count(lambda: parts.augmenter(images, labels, gen))
    work["augmentation"] = (f, b)
    f, b, loss = count(lambda: forward(images, labels))
    work["forward + loss"] = (f, b)
    opt.zero_grad(set_to_none=True)
    work["backward"] = count(lambda: loss.backward())[:2]
    work["clip + host read"] = count(lambda: torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip))[:2]
    work["optimiser"] = count(lambda: opt.step())[:2]
    return work


def training_step_parts(run: Path, iterations: int, channels_last=None) -> tuple[dict, list[dict]]:
    from focusseg.data.loader import build_loader
    from focusseg.engine.build import build_sampler
    from focusseg.engine.task import as_float, build_parts, read_step_scalars
    from focusseg.preprocessing.store import PreprocessedStore

    plan = json.loads((run / "plan.json").read_text())
    if channels_last is not None:  # the same step in another layout (training.channels_last)
        plan["training"]["channels_last"] = channels_last
    store = PreprocessedStore(run / "preprocessed")
    splits = json.loads((run / "splits_final.json").read_text())
    train_ids = sorted(splits[0]["train"])
    device = torch.device("cpu")
    parts = build_parts(plan, 1000, device)
    task = parts.task
    net, loss_fn, opt = task.network, task.loss, task.optimizer
    sampler = build_sampler(plan, {c: store.shape(c) for c in train_ids}, {c: store.locations(c) for c in train_ids})
    loader = build_loader(store, plan, device)
    gen = torch.Generator().manual_seed(0)
    bs = int(plan["batch_size"])
    n = iterations + 3
    batches = loader.prefetch(sampler.next_batch(bs, gen) for _ in range(n))
    amp = task.amp
    names = ["data wait", "augmentation", "forward + loss", "backward", "clip + host read", "optimiser"]
    times: dict[str, list[float]] = {k: [] for k in names}
    net.train()

    def forward(images, labels):
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            out = net(images)
        return loss_fn(as_float(out), labels, class_weights=None)

    work = count_parts(parts, net, opt, task.grad_clip, forward, batches, gen)
    for i in range(n - 1):
        timed = i >= 2
        t0 = time.perf_counter()
        _, images, labels = next(batches)
        t1 = time.perf_counter()
        with torch.no_grad():
            images, labels = parts.augmenter(images, labels, gen)
        t2 = time.perf_counter()
        loss = forward(images, labels)
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t4 = time.perf_counter()
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), task.grad_clip)
        read_step_scalars(loss, norm)
        t5 = time.perf_counter()
        opt.step()
        t6 = time.perf_counter()
        if timed:
            for k, a, b in zip(names, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6)):
                times[k].append(b - a)
    loader.close()
    # loading one batch without overlap: what the prefetching hides
    reqs = sampler.next_batch(bs, gen)
    t_load = best_time(lambda: loader.load(reqs), 5, warmup=1)
    loader.close()
    rows = []
    for k in names:
        ts = sorted(times[k])
        rows.append({"part": k, "seconds": ts[len(ts) // 2], "flops": work[k][0], "bytes": work[k][1]})
    info = {"plan": {"patch": plan["patch_size"], "batch": bs, "network": plan["network"].get("name"),
                     "channels": plan["network"].get("channels"), "amp": str(amp),
                     "channels_last": plan["training"].get("channels_last", False)},
            "load_unhidden_s": t_load, "parameters": sum(p.numel() for p in net.parameters())}
    return info, rows


def inference_batches(run: Path, repeats: int) -> list[dict]:
    import copy

    from focusseg.nets.from_plan import build_inference_module
    from focusseg.nets.layout import thin_inference

    plan = json.loads((run / "plan.json").read_text())
    net = build_inference_module(plan).eval()
    thin = copy.deepcopy(net)
    thin_inference(thin)
    bs = int((plan.get("inference") or {}).get("batch_size", 2))
    c = len(plan.get("channel_names") or {0: ""})
    x = torch.randn(bs, c, *plan["patch_size"])
    rows = []
    for dtype in (None, torch.bfloat16):
        for layout in ("contiguous", "channels_last_3d", "thin layers (accelerate: thin)"):
            if layout.startswith("thin"):
                m, xi = thin, x
            else:
                m = net.to(memory_format=torch.channels_last_3d if layout != "contiguous" else torch.contiguous_format)
                xi = x.contiguous(memory_format=torch.channels_last_3d) if layout != "contiguous" else x

            def fwd(m=m, xi=xi, dtype=dtype):
                with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32,
                                                            enabled=dtype is not None):
                    return m(xi)

            f, b, _ = count(fwd)
            rows.append({"part": f"window batch {bs}x{tuple(plan['patch_size'])}, "
                                 f"{'bf16' if dtype else 'fp32'}, {layout}",
                         "seconds": best_time(fwd, repeats), "flops": f, "bytes": b, "bf16": dtype is not None})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "house_after")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if not (args.run / "plan.json").is_file() or not (args.run / "preprocessed").is_dir():
        raise SystemExit(f"{args.run}: not a finished run with plan.json and preprocessed/ (see --help)")
    torch.set_num_threads(args.threads)
    from machine import machine_line

    peak32, peak16, bw = conv_peak(None, 5), conv_peak(torch.bfloat16, 5), bandwidth(5)
    peak_bw = max(bw["copy"], bw["triad"])
    info, rows = training_step_parts(args.run, args.iterations)
    _, rows_plain = training_step_parts(args.run, args.iterations, channels_last=False)
    infer = inference_batches(args.run, 5)
    bf16_step = "bfloat16" in info["plan"]["amp"]

    def line(r: dict, peak_f: float) -> str:
        t = r["seconds"]
        bound_f, bound_b = r["flops"] / peak_f, r["bytes"] / peak_bw
        limit = max(bound_f, bound_b)
        by = "compute" if bound_f >= bound_b else "memory"
        return (f"| {r['part']} | {1e3 * t:.1f} | {r['flops'] / 1e9:.2f} | {r['flops'] / t / 1e9:.1f} | "
                f"{r['bytes'] / 1e9:.2f} | {r['bytes'] / t / 1e9:.1f} | {by} | {100 * limit / t:.0f} % |")

    shown = args.run.relative_to(REPO) if args.run.is_relative_to(REPO) else args.run
    step_total = sum(r["seconds"] for r in rows)
    peak_step = peak16["flops_per_s"] if bf16_step else peak32["flops_per_s"]
    lines = [
        "## Roofline: the default plan's training step and one inference window batch against this machine's limits",
        "",
        f"- Command: `.venv/bin/python benchmarks/bench_roofline.py --run {shown} "
        f"--iterations {args.iterations} --threads {args.threads} --write`",
        f"- Machine: {machine_line()}; torch threads {args.threads}; nothing else running",
        f"- Plan: patch {info['plan']['patch']}, batch {info['plan']['batch']}, network {info['plan']['network']} "
        f"channels {info['plan']['channels']} ({info['parameters'] / 1e6:.2f} M parameters), training autocast "
        f"{info['plan']['amp']}, `training.channels_last: {json.dumps(info['plan']['channels_last'])}`",
        "",
        "Limits measured here (median of 5):",
        "",
        "| limit | value |",
        "|---|---|",
        f"| 3D convolution fwd + bwd, fp32 (32->32 ch, 3^3, 2x40x56x40) | {peak32['flops_per_s'] / 1e9:.1f} GFLOP/s |",
        f"| 3D convolution fwd + bwd, bf16 autocast (same layer) | {peak16['flops_per_s'] / 1e9:.1f} GFLOP/s |",
        f"| memory bandwidth, copy (read + write) | {bw['copy'] / 1e9:.1f} GB/s |",
        f"| memory bandwidth, triad (read + write) | {bw['triad'] / 1e9:.1f} GB/s |",
        "",
        f"Training step (median of {args.iterations} iterations after 2 warm-up ones and one counted one; compute "
        f"limit: the {'bf16' if bf16_step else 'fp32'} convolution peak):",
        "",
        "| part | ms | GFLOP | GFLOP/s | GB moved | GB/s | bound by | % of limit |",
        "|---|---|---|---|---|---|---|---|",
        *[line(r, peak_step) for r in rows],
        f"| **whole step** | **{1e3 * step_total:.1f}** | {sum(r['flops'] for r in rows) / 1e9:.2f} | "
        f"{sum(r['flops'] for r in rows) / step_total / 1e9:.1f} | {sum(r['bytes'] for r in rows) / 1e9:.2f} | "
        f"{sum(r['bytes'] for r in rows) / step_total / 1e9:.1f} | | "
        f"{100 * sum(max(r['flops'] / peak_step, r['bytes'] / peak_bw) for r in rows) / step_total:.0f} % |",
        "",
        "The same step with the default layout everywhere (`training.channels_last: false`), measured right after "
        "in the same process:",
        "",
        "| part | ms, default layout | ms, this plan | ratio |",
        "|---|---|---|---|",
        *[f"| {a['part']} | {1e3 * a['seconds']:.1f} | {1e3 * b['seconds']:.1f} | {a['seconds'] / b['seconds']:.2f}x |"
          for a, b in zip(rows_plain, rows, strict=True)],
        f"| **whole step** | **{1e3 * sum(r['seconds'] for r in rows_plain):.1f}** | **{1e3 * step_total:.1f}** | "
        f"**{sum(r['seconds'] for r in rows_plain) / step_total:.2f}x** |",
        "",
        f"Loading one batch without prefetching takes {1e3 * info['load_unhidden_s']:.1f} ms; the \"data wait\" row is "
        "what remains of it in the loop, where the loader works ahead of the step.",
        "",
        "Inference, one window batch (inference mode, median of 5):",
        "",
        "| part | ms | GFLOP | GFLOP/s | GB moved | GB/s | bound by | % of limit |",
        "|---|---|---|---|---|---|---|---|",
        *[line(r, peak16["flops_per_s"] if r["bf16"] else peak32["flops_per_s"]) for r in infer],
        "",
        "GB moved counts every operator's tensor inputs and outputs once (an unfused implementation's least traffic; "
        "caches ignored), so a memory-bound part above 100 % reuses data from caches. FLOPs count convolutions and "
        "matrix products only (normalisation, activation and augmentation arithmetic is counted as bytes).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        (HERE / "results" / "roofline.md").write_text(text)


if __name__ == "__main__":
    main()
