"""GPU acceptance benchmark (issue 13, part 7): one table for BENCHMARKS.md, self-contained, <= 5 min on one H100.

Generates its own data (``focusseg.synth`` phantoms; never reads ../shared), plans and preprocesses it, then
measures:

1. per recipe (current recipe forms -- GPU forms pending), a few dozen iterations of the training loop's body
   (device copy, augmentation, class weights, LR, step, sampler update, exactly as ``engine/loop.py``): seconds
   per iteration, fraction of the time spent waiting for the loader, peak GPU memory
   (``torch.cuda.max_memory_allocated``), host syncs per iteration (``torch.cuda.set_sync_debug_mode`` on CUDA;
   on the CPU the host-read counter, an upper bound) -- all of the main thread, augmentation included;
2. the default plan with and without data loading (batches made once, already on the device: nnU-Net's
   ``noDataLoading`` benchmark trainer);
3. focusseg's sliding window against MONAI's ``sliding_window_inference`` on the same network and volume
   (512 x 512 x 300 on a GPU): time, peak memory, agreement (argmax and max |logit| difference);
4. the ``cuda`` test marker's pass / fail / skip counts (``pytest -m cuda`` in a subprocess).

Usage::

    python benchmarks/gpu_acceptance.py                       # on the GPU, writes benchmarks/results/gpu_acceptance.md
    python benchmarks/gpu_acceptance.py --device cpu --smoke  # everything tiny on the CPU (< 60 s; CI)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RECIPES = ["default", "fp-pet", "runtime-freezing", "cycle-flare21", "blob-valdo", "flare21-fast"]
NOT_MEASURED = "not yet measured on a GPU"

#: Smoke mode: everything tiny (a network of three levels at a 16^3 patch).
SMOKE_PLAN = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1,
                          "_replace": True},
              "patch_size": [16, 16, 16], "batch_size": 2,
              "training": {"max_epochs": 1, "iterations_per_epoch": 4, "amp": "none"},
              "inference": {"mirror_axes": []}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else math.nan


def make_data(root: Path, smoke: bool) -> Path:
    from focusseg.synth import generate_phantom_dataset

    shape = (40, 40, 32) if smoke else (176, 176, 144)
    return generate_phantom_dataset(root / "Dataset900_Acceptance", n_cases=4 if smoke else 6, shape=shape,
                                    spacing=(1.0, 1.0, 1.0), seed=0)


def recipe_plan(base: dict, name: str, smoke: bool, device_type: str = "cpu") -> dict:
    """The recipe's plan as training makes it on ``device_type`` (its GPU form on cuda), tiny in smoke mode."""
    from focusseg.recipes import load_recipe
    from focusseg.workflows.plan import finish_plan

    recipe = load_recipe(name)
    over: dict[str, Any] = json.loads(json.dumps(SMOKE_PLAN)) if smoke else {
        "training": {"max_epochs": 1, "iterations_per_epoch": 1000}}
    if smoke and name == "flare21-fast":
        over["network"] = {"base_features": 4, "max_features": 32}  # merged: keeps its deep supervision
        over["patch_size"] = [32, 32, 32]
    if not smoke and name == "default":
        over.update(patch_size=[128, 128, 128], batch_size=2)  # the acceptance criterion's setting
    plan = finish_plan(base, recipe, over, device_type)
    plan["recipe"] = name
    return plan


def bench_training(store: Any, plan: dict, case_ids: list[str], device: torch.device, iterations: int,
                   warmup: int, data_loading: bool = True) -> dict:
    """The loop body of ``engine/loop.py`` for ``iterations`` timed iterations after ``warmup``."""
    from focusseg.data.loader import build_loader
    from focusseg.engine.build import build_sampler
    from focusseg.engine.loop import DeviceWeights, cuda_speedups
    from focusseg.engine.syncs import sync_counter
    from focusseg.engine.task import build_parts

    torch.manual_seed(0)
    total = warmup + iterations
    with cuda_speedups(device):
        parts = build_parts(plan, total, device)
        sampler = build_sampler(plan, {c: store.shape(c) for c in case_ids}, {c: store.locations(c) for c in case_ids})
        loader = build_loader(store, {**plan, "training": {**plan["training"], "in_memory": True}}, device)
        gens = {k: torch.Generator().manual_seed(i) for i, k in enumerate(("sample", "augment"), 1)}
        weights = DeviceWeights(device)
        task = parts.task
        task.train()
        task.set_epoch(0)
        bs = int(plan["batch_size"])
        batches = (sampler.next_batch(bs, gens["sample"]) for _ in range(total))
        stream = iter(loader.prefetch(batches))
        fixed = None
        if not data_loading:
            requests, images, labels = next(stream)
            fixed = (requests, images.to(device), labels.to(device))
        counter = sync_counter(device)
        wait = 0.0
        syncs = 0
        losses: list[float] = []
        with counter:
            for it in range(total):
                if it == warmup:
                    _sync(device)
                    _reset_peak(device)
                    t0, wait, syncs = time.perf_counter(), 0.0, 0
                w0 = time.perf_counter()
                if fixed is None:
                    requests, images, labels = next(stream)
                    images = images.to(device, non_blocking=True)
                    labels = labels.to(device, non_blocking=True)
                else:
                    requests, images, labels = fixed
                wait += time.perf_counter() - w0
                n0 = counter.in_thread()
                if fixed is None:
                    with torch.no_grad():
                        images, labels = parts.augmenter(images, labels, gens["augment"])
                parts.lr.step(it)
                step = task.step(images, labels, requests, weights.get(parts.weighter))
                sampler.update(step)
                syncs += counter.in_thread() - n0
                losses.append(step.loss)
            _sync(device)
            elapsed = time.perf_counter() - t0
        stream.close()  # type: ignore[attr-defined]  # the prefetch generator: cancels what is still queued
        if hasattr(loader, "close"):
            loader.close()
    return {"s_per_it": elapsed / iterations, "wait_frac": wait / elapsed, "peak_gb": _peak_gb(device),
            "syncs_per_it": syncs / iterations, "loss_finite": all(math.isfinite(x) for x in losses[warmup:]),
            "patch": "x".join(str(p) for p in plan["patch_size"]), "batch": bs,
            "network": (plan["network"] if isinstance(plan["network"], str) else plan["network"].get("name"))}


def bench_sliding_window(plan: dict, device: torch.device, smoke: bool) -> dict:
    """focusseg's sliding window vs MONAI's on the default plan's network (random weights, eval mode)."""
    from monai.inferers import sliding_window_inference

    from focusseg.inference import sliding_window_predict
    from focusseg.nets.from_plan import build_network_from_plan

    torch.manual_seed(0)
    net = build_network_from_plan(plan).to(device).eval()
    patch = tuple(int(p) for p in plan["patch_size"])
    shape = (40, 48, 36) if smoke else (512, 512, 300)
    image = torch.randn(len(plan["channel_names"]), *shape, device=device)
    bs = int(plan["inference"].get("batch_size", 2))
    out: dict[str, Any] = {"volume": "x".join(map(str, shape)), "patch": "x".join(map(str, patch))}

    def first(o: Any) -> torch.Tensor:
        return o[0] if isinstance(o, (list, tuple)) else o

    class Main(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return first(self.m(x))

    main = Main(net).eval()
    results = {}
    for name in ("focusseg", "monai"):
        for rep in range(2):  # the first run warms up (cuDNN, allocator)
            _sync(device)
            _reset_peak(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                if name == "focusseg":
                    logits = sliding_window_predict(main, image, patch, overlap=0.5, batch_size=bs, device=device,
                                                    out_device=device)
                else:
                    logits = sliding_window_inference(image[None], patch, bs, main, overlap=0.5, mode="gaussian",
                                                      sigma_scale=0.125, sw_device=device, device=device)[0]
            _sync(device)
            if rep == 1:
                out[f"{name}_s"] = time.perf_counter() - t0
                out[f"{name}_peak_gb"] = _peak_gb(device)
        results[name] = logits.float()
    a, b = results["focusseg"], results["monai"]
    out["argmax_agreement"] = float((a.argmax(0) == b.argmax(0)).float().mean())
    out["max_abs_logit_diff"] = float((a - b).abs().max())
    # blending check: a pointwise network gives the same logit in every window, so both must agree exactly
    point = torch.nn.Conv3d(image.shape[0], int(plan["n_classes"]), 1).to(device).eval()
    with torch.no_grad():
        pa = sliding_window_predict(point, image, patch, overlap=0.5, batch_size=bs, device=device, out_device=device)
        pb = sliding_window_inference(image[None], patch, bs, point, overlap=0.5, mode="gaussian", sigma_scale=0.125,
                                      sw_device=device, device=device)[0]
    out["pointwise_max_abs_diff"] = float((pa.float() - pb.float()).abs().max())
    return out


def cuda_tests(timeout_s: int) -> dict:
    """``pytest -m cuda`` in a subprocess: counts of passed / failed / skipped (and errors)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", str(REPO / "tests" / "gpu")]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout_s} s"}
    tail = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr[-200:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", tail)}
    return {"passed": counts.get("passed", 0), "failed": counts.get("failed", 0),
            "skipped": counts.get("skipped", 0), "errors": counts.get("error", 0) + counts.get("errors", 0),
            "summary": tail}


def _f(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def render(res: dict, command: str, machine: str) -> str:
    gpu = res["device"] == "cuda"
    lines = ["# GPU acceptance (issue 13)", "", f"- Command: `{command}`", f"- Machine: {machine}",
             f"- Date: {res['date']}; mode: {'smoke' if res['smoke'] else 'full'}, device {res['device']}, "
             f"{res['iterations']} timed iterations per recipe after {res['warmup']} warm-up",
             "- Recipes run in their current forms (GPU forms pending: issue 13, part 5).", ""]
    if not gpu:
        lines += [f"**{NOT_MEASURED}.** The numbers below are the CPU smoke check that keeps this script working;"
                  " they say nothing about GPU speed (host syncs on the CPU count every host read of a tensor: an"
                  " upper bound).", ""]
    lines += ["## Training, per recipe", "",
              "| recipe | network | patch | batch | s/iteration | data wait (fraction of step) | peak GPU memory GB "
              "| host syncs / iteration | loss finite |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["recipes"].items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error']} | | | | | | | |")
            continue
        lines.append(f"| {name} | {r['network']} | {r['patch']} | {r['batch']} | {_f(r['s_per_it'])} | "
                     f"{_f(r['wait_frac'])} | {_f(r['peak_gb'], 2)} | {_f(r['syncs_per_it'], 1)} | "
                     f"{r['loss_finite']} |")
    d = res["default_no_data"]
    lines += ["", "## Default plan with and without data loading", "",
              "| mode | s/iteration | data wait (fraction) | peak GPU memory GB | host syncs / iteration |",
              "|---|---|---|---|---|",
              f"| with loading + augmentation | {_f(res['recipes']['default'].get('s_per_it', math.nan))} | "
              f"{_f(res['recipes']['default'].get('wait_frac', math.nan))} | "
              f"{_f(res['recipes']['default'].get('peak_gb', math.nan), 2)} | "
              f"{_f(res['recipes']['default'].get('syncs_per_it', math.nan), 1)} |",
              f"| dummy batches on the device (noDataLoading) | {_f(d['s_per_it'])} | {_f(d['wait_frac'])} | "
              f"{_f(d['peak_gb'], 2)} | {_f(d['syncs_per_it'], 1)} |"]
    s = res["sliding_window"]
    lines += ["", f"## Sliding window: focusseg vs MONAI (volume {s['volume']}, patch {s['patch']}, overlap 0.5, "
              "Gaussian)", "",
              "| implementation | seconds | peak GPU memory GB |", "|---|---|---|",
              f"| focusseg | {_f(s['focusseg_s'])} | {_f(s['focusseg_peak_gb'], 2)} |",
              f"| MONAI sliding_window_inference | {_f(s['monai_s'])} | {_f(s['monai_peak_gb'], 2)} |", "",
              f"Agreement on the plan's network (random weights): argmax equal on {100 * s['argmax_agreement']:.2f} % "
              f"of voxels, max |logit difference| {s['max_abs_logit_diff']:.2e}. The two place windows differently "
              "(nnU-Net's evenly spaced steps vs MONAI's fixed interval with the last window at the border), so a "
              "network whose output depends on the window's context differs where windows differ; on a pointwise "
              f"network (a 1x1x1 convolution) the blended logits differ by at most {s['pointwise_max_abs_diff']:.2e}."]
    c = res["cuda_tests"]
    lines += ["", "## `cuda` test marker", ""]
    if "passed" in c:
        lines.append(f"passed {c['passed']}, failed {c['failed']}, errors {c['errors']}, skipped {c['skipped']} "
                     f"(`{c['summary']}`)")
    else:
        lines.append(c.get("status", "not run"))
    lines += ["", f"Total benchmark time: {res['total_s']:.0f} s.", ""]
    return "\n".join(lines)


def run(device: torch.device, smoke: bool, out: Path, pytest_timeout: int, run_tests: bool = True) -> dict:
    from focusseg.preprocessing import preprocess_dataset
    from focusseg.workflows.plan import plan_dataset

    sys.path.insert(0, str(HERE))
    from machine import machine_line

    t_start = time.perf_counter()
    iterations, warmup = (3, 1) if smoke else (30, 5)
    res: dict[str, Any] = {"device": device.type, "smoke": smoke, "iterations": iterations, "warmup": warmup,
                           "date": time.strftime("%Y-%m-%d"), "recipes": {}}
    with tempfile.TemporaryDirectory(prefix="focusseg_gpu_acceptance_") as tmp:
        data = make_data(Path(tmp), smoke)
        base = plan_dataset(data, device.type, progress=False)
        stores: dict[str, Any] = {}
        plans: dict[str, dict] = {}
        for name in RECIPES:
            try:
                plan = plans[name] = recipe_plan(base, name, smoke, device.type)
                from focusseg.preprocessing.store import store_fields, store_key

                key = store_key(store_fields(plan))  # recipes that preprocess alike share one store
            except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not stop
                res["recipes"][name] = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"}
                continue
            try:
                if key not in stores:
                    stores[key] = preprocess_dataset(data, plan, Path(tmp) / f"pre_{len(stores)}", progress=False,
                                                     workers=max(2, min(8, (os.cpu_count() or 2) // 2)))
                store = stores[key]
                ids = list(store.case_ids()) if hasattr(store, "case_ids") else None
                if ids is None:
                    ids = sorted(p.name.split(".")[0] for p in (data / "labelsTr").glob("*.nii.gz"))
                res["recipes"][name] = bench_training(store, plan, ids, device, iterations, warmup)
                if name == "default":
                    res["default_no_data"] = bench_training(store, plan, ids, device, iterations, warmup,
                                                            data_loading=False)
            except Exception as exc:  # noqa: BLE001
                res["recipes"][name] = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        res.setdefault("default_no_data", {k: math.nan for k in ("s_per_it", "wait_frac", "peak_gb",
                                                                    "syncs_per_it")})
        default_plan = plans.get("default") or recipe_plan(base, "default", smoke, device.type)
        res["sliding_window"] = bench_sliding_window(default_plan, device, smoke)
    res["cuda_tests"] = cuda_tests(pytest_timeout) if run_tests else {"status": "not run (--no-tests)"}
    res["total_s"] = time.perf_counter() - t_start
    command = "python benchmarks/gpu_acceptance.py" + (f" --device {device.type}" if device.type != "cuda" else "") + (
        " --smoke" if smoke else "")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(res, command, machine_line()))
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=float))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="everything tiny (CPU CI: < 60 s)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu_acceptance.md")
    ap.add_argument("--no-tests", action="store_true", help="skip `pytest -m cuda`")
    ap.add_argument("--pytest-timeout", type=int, default=120)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda, but torch sees no CUDA device (use --device cpu --smoke)")
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    res = run(device, args.smoke, args.out, args.pytest_timeout, run_tests=not args.no_tests)
    print(args.out.read_text())
    bad = [k for k, r in res["recipes"].items() if "error" in r or not r.get("loss_finite", False)]
    return 1 if bad else 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
