"""Cost of the training strategies on CPU: optimiser steps and the Focused Practice sampler.

1. Optimiser ``step()`` time on the parameters of a real network (gradients filled once with seeded noise, only
   ``step()`` is timed, the optimisers interleaved round by round): focusseg ``Ranger21`` against
   ``torch.optim.AdamW`` (its default foreach path), nnU-Net's SGD, and the PyPI ``ranger21`` 0.1.0 package
   when installed (its prints silenced).
2. Focused Practice at FP-PET's scale (§1.2: ~100,000 patches of 128³ with overlap 0.5): 4000 cases of 200³
   (27 patches each, 108,000 patches): building the index, one iteration's ``next_batch(2)`` + ``update``
   (against a plain uniform draw of a case and a random start, what a sampler without memory costs), and
   ``epoch_end`` (Otsu split, exclusion, weights) with every patch's loss known.

Run:  .venv/bin/python benchmarks/bench_strategies.py [--network stunet_s] [--repeats 10] [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import monai
import torch

from focusseg.nets import build_network
from focusseg.roles import PatchRequest, StepOutput
from focusseg.strategies import OPTIMIZERS, FocusedPracticeSampler

RESULTS = Path(__file__).resolve().parent / "results" / "strategies.md"


def timed(fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_optimizers(network: str, repeats: int) -> tuple[int, dict[str, float]]:
    net = build_network(network, 2, 2, patch_size=(128, 128, 128))
    params = [p for p in net.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    n_params = sum(p.numel() for p in params)
    builders: dict[str, Callable[[], torch.optim.Optimizer]] = {
        "sgd (nesterov 0.99)": lambda: OPTIMIZERS.build("sgd", params=params, lr=1e-2),
        "adamw (torch, foreach)": lambda: OPTIMIZERS.build("adamw", params=params, lr=1e-3),
        "ranger21 (focusseg)": lambda: OPTIMIZERS.build("ranger21", params=params, lr=1e-3, total_iterations=1000),
    }
    try:
        import ranger21

        builders["ranger21 0.1.0 (PyPI)"] = lambda: ranger21.Ranger21(
            params, lr=1e-3, num_epochs=1, num_batches_per_epoch=1000
        )
    except ImportError:
        pass
    with contextlib.redirect_stdout(io.StringIO()):
        opts = {name: build() for name, build in builders.items()}
        for opt in opts.values():  # state initialisation and warm-up
            opt.step()
        samples: dict[str, list[float]] = {name: [] for name in opts}
        for _ in range(repeats):  # interleaved, so load from other processes hits every optimiser alike
            for name, opt in opts.items():
                samples[name].extend(timed(opt.step, 1, warmup=0))
    times = {name: statistics.median(v) for name, v in samples.items()}
    return n_params, times


class UniformDraw:
    """The peer: a random case and a random in-volume start, no memory (what nnU-Net's loader does)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], patch: tuple[int, ...]) -> None:
        self.cases, self.shapes, self.patch = sorted(shapes), shapes, patch

    def next_batch(self, n: int, gen: torch.Generator) -> list[PatchRequest]:
        out = []
        for c in torch.randint(len(self.cases), (n,), generator=gen).tolist():
            case = self.cases[c]
            hi = [s - p + 1 for s, p in zip(self.shapes[case], self.patch)]
            start = tuple(int(torch.randint(h, (1,), generator=gen)) for h in hi)
            out.append(PatchRequest(case, start))
        return out


def bench_focused_practice(n_cases: int, iterations: int) -> dict[str, float]:
    shapes = {f"case_{i:05d}": (200, 200, 200) for i in range(n_cases)}
    patch = (128, 128, 128)
    t0 = time.perf_counter()
    fp = FocusedPracticeSampler(shapes, patch)
    build = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    loss = torch.rand(2, generator=gen)

    def fp_iteration() -> None:
        reqs = fp.next_batch(2, gen)
        fp.update(StepOutput(reqs, 0.0, loss))

    uniform = UniformDraw(shapes, patch)
    fp_it = statistics.mean(timed(fp_iteration, iterations))
    uni_it = statistics.mean(timed(lambda: uniform.next_batch(2, gen), iterations))
    fp.losses = torch.rand(fp.n_patches, generator=gen, dtype=torch.float64) ** 3
    fp.epoch_end(0)  # warm-up
    fp.losses = torch.rand(fp.n_patches, generator=gen, dtype=torch.float64) ** 3
    t0 = time.perf_counter()
    log = fp.epoch_end(1)
    epoch_end = time.perf_counter() - t0
    fp_after = statistics.mean(timed(fp_iteration, iterations))
    return {
        "n_patches": fp.n_patches,
        "build_s": build,
        "fp_iteration_us": fp_it * 1e6,
        "fp_iteration_after_split_us": fp_after * 1e6,
        "uniform_iteration_us": uni_it * 1e6,
        "epoch_end_ms": epoch_end * 1e3,
        "n_hard": log["n_hard"],
        "n_excluded": log["n_excluded"],
    }


def machine() -> str:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import os

    return (
        f"{os.cpu_count()} CPU cores ({cpu}), no GPU; Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), monai {monai.__version__}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", default="stunet_s")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--cases", type=int, default=4000)
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    n_params, opt_times = bench_optimizers(args.network, args.repeats)
    fp = bench_focused_practice(args.cases, args.iterations)
    adamw = opt_times["adamw (torch, foreach)"]
    lines = [
        "## Strategies (optimiser steps, Focused Practice sampler)",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_strategies.py --network {args.network} --repeats "
        f"{args.repeats} --cases {args.cases} --iterations {args.iterations} --write`  ",
        f"Machine: {machine()}  ",
        f"Date: {dt.date.today().isoformat()}",
        "",
        f"Optimiser `step()` on {args.network} ({n_params / 1e6:.1f} M parameters), median of {args.repeats}:",
        "",
        "| optimiser | step (ms) | vs torch AdamW |",
        "| --- | ---: | ---: |",
        *[f"| {k} | {v * 1e3:.1f} | {v / adamw:.2f}x |" for k, v in opt_times.items()],
        "",
        f"Focused Practice over {fp['n_patches']:,} patches ({args.cases} cases of 200³, 128³ patches, overlap 0.5); "
        f"per-iteration times are means over {args.iterations} iterations of batch 2:",
        "",
        "| step | time |",
        "| --- | ---: |",
        f"| build the patch index | {fp['build_s'] * 1e3:.0f} ms |",
        f"| next_batch(2) + update, before any split (uniform weights) | {fp['fp_iteration_us']:.0f} µs |",
        f"| next_batch(2) + update, after a split | {fp['fp_iteration_after_split_us']:.0f} µs |",
        f"| peer: uniform case + random start, no memory | {fp['uniform_iteration_us']:.0f} µs |",
        f"| epoch_end (Otsu, exclusion, weights; all losses known) | {fp['epoch_end_ms']:.1f} ms |",
        "",
        f"Split of uniform³ random losses: {fp['n_hard']:,} hard kept, {fp['n_excluded']:,} excluded.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
