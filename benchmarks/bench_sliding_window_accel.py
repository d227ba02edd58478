"""Sliding window at the machine's limit: focusseg's prepared forwards (compiled, channels-last 3D) against
MONAI's ``sliding_window_inference`` on the MS case, same network, batch, overlap and Gaussian weighting, fp32.

Case and network as ``bench_inference_peers.py``: Dataset101_MSLesionLjubljana ``patient07`` (4 x 182 x 218 x 182,
z-scored), 64^3 windows (150), overlap 0.5, window batch ``--batch`` (4), MONAI ``UNet(channels=(16, 32, 64, 128,
256), num_res_units=2)`` with random weights (seed 0), ``--threads`` torch threads (2). Each configuration runs in
a fresh process after one warm-up forward; the time is the whole prediction call **including** the preparation
(compiling: inductor's cache is emptied first for the "cold" row and kept for the "warm" one, which is a
second process compiling the same graph). Peak RSS is the process's ``VmHWM``.

Agreement: max |logit difference| and argmax agreement of each focusseg row against focusseg's plain fp32 row
(the goal: <= 1e-4 and identical argmax), and of the plain row against MONAI (windows placed and weighted
differently, so only the speed is compared with MONAI).

    .venv/bin/python benchmarks/bench_sliding_window_accel.py [--batch 4] [--threads 2] [--repeats 3] \
        [--no-compile] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_inference_peers import CASE, PATCH, build_net, load_case  # noqa: E402


def _vmhwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    image = torch.from_numpy(np.load(spec["image"]))
    net = build_net()
    net.load_state_dict(torch.load(spec["weights"], weights_only=True))
    net.eval()
    amp = torch.bfloat16 if spec.get("amp") else None
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
        net(torch.zeros(spec["batch"], 4, *PATCH))  # warm-up
    if spec["impl"] == "monai":
        from monai.inferers import sliding_window_inference

        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = sliding_window_inference(image[None], PATCH, spec["batch"], net, overlap=0.5,
                                              mode="gaussian")[0]
    else:
        from focusseg.inference import sliding_window_predict

        t0 = time.perf_counter()
        logits = sliding_window_predict(net, image, PATCH, 0.5, (), batch_size=spec["batch"], amp_dtype=amp,
                                        accelerate=spec["accelerate"],
                                        channels_last_3d=bool(spec.get("channels_last")))
    seconds = time.perf_counter() - t0
    np.save(spec["out"], logits.float().numpy())
    print(json.dumps({"seconds": seconds, "peak_rss_mb": _vmhwm_mb()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="leave out the compiled rows (a quicker look)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each uncompiled configuration (median)")
    ap.add_argument("--worker", default=None)
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    import torch
    from machine import machine_line

    tmp = Path(tempfile.mkdtemp(prefix="focusseg_swaccel_"))
    cache = tmp / "inductor_cache"
    try:
        np.save(tmp / "image.npy", load_case())
        torch.manual_seed(0)
        torch.save(build_net().state_dict(), tmp / "weights.pt")
        configs = [
            ("monai", {"impl": "monai"}),
            ("focusseg", {"impl": "focusseg", "accelerate": "none"}),
            ("focusseg, channels-last 3D", {"impl": "focusseg", "accelerate": "none", "channels_last": True}),
            ("focusseg, thin layers (`accelerate: thin`, CPU plans' default)", {"impl": "focusseg",
                                                                   "accelerate": "thin"}),
            ("focusseg, compile (cold cache, compile time included)", {"impl": "focusseg", "accelerate": "compile",
                                                                     "fresh_cache": True}),
            ("focusseg, compile (warm cache, compile time included)", {"impl": "focusseg", "accelerate": "compile"}),
            ("focusseg, bf16 autocast", {"impl": "focusseg", "accelerate": "none", "amp": True}),
        ]
        if args.no_compile:
            configs = [c for c in configs if c[1].get("accelerate") != "compile"]
        runs: dict[int, list[dict]] = {i: [] for i in range(len(configs))}
        for rep in range(args.repeats):  # round robin: a slow spell of the machine hits every configuration
            for i, (name, opt) in enumerate(configs):
                opt = dict(opt)
                compiled = opt.get("accelerate") == "compile"
                if compiled and rep > 0:
                    continue  # once: its row is about the compile cost, not a close ratio
                if opt.pop("fresh_cache", False):
                    shutil.rmtree(cache, ignore_errors=True)
                spec = {"batch": args.batch, "threads": args.threads, "image": str(tmp / "image.npy"),
                        "weights": str(tmp / "weights.pt"), "out": str(tmp / f"{i}.npy"), **opt}
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
                res = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                                     text=True, env=env)
                if res.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{res.stderr[-3000:]}")
                out = json.loads(res.stdout.strip().splitlines()[-1])
                runs[i].append({**out, "file": spec["out"]})
                print(name, json.dumps(out), flush=True)
        rows = []
        for i, (name, _) in enumerate(configs):
            times = sorted(r["seconds"] for r in runs[i])
            rows.append({"name": name, "seconds": times[len(times) // 2], "all": times,
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[i]), "file": runs[i][0]["file"]})
        ref = np.load(rows[1]["file"])
        monai_s = rows[0]["seconds"]
        lines = [
            "## Sliding window: prepared forwards vs MONAI (MS case, fp32, same network and batch)",
            "",
            f"- Command: `.venv/bin/python benchmarks/bench_sliding_window_accel.py --batch {args.batch} "
            f"--threads {args.threads} --repeats {args.repeats} --write`",
            f"- Machine: {machine_line()}; torch threads {args.threads}; nothing else running",
            f"- Case: Dataset101_MSLesionLjubljana `{CASE}`, 64^3 windows (150), overlap 0.5, batch {args.batch}; "
            "MONAI `UNet(channels=(16, 32, 64, 128, 256), num_res_units=2)`, random weights (seed 0). Time: the "
            "prediction call in a fresh process, preparation (compile) included; uncompiled configurations run "
            f"{args.repeats} times round robin (median), compiled ones once.",
            "",
            "| configuration | time (s): median (each run) | MONAI / this | peak RSS (MB) | "
            "max abs logit diff vs focusseg fp32 | argmax agreement vs focusseg fp32 |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            a = np.load(r["file"])
            diff = float(np.abs(a - ref).max()) if a.shape == ref.shape else float("nan")
            agree = 100.0 * float((a.argmax(0) == ref.argmax(0)).mean()) if a.shape == ref.shape else float("nan")
            same = "-" if r is rows[1] else f"{diff:.2e}"
            shown_times = ", ".join(f"{t:.2f}" for t in r["all"])
            lines.append(f"| {r['name']} | {r['seconds']:.2f} ({shown_times}) | {monai_s / r['seconds']:.2f}x | "
                         f"{r['peak_rss_mb']:.0f} | {same} | {'-' if r is rows[1] else f'{agree:.3f} %'} |")
        lines += ["", "MONAI places and weights its windows differently (interval 32 with the last window clamped, "
                  "sigma 0.125 x patch clamped at 1e-3), so its logits are not compared here; "
                  "`bench_inference_peers.py` compares them where placements agree.", ""]
        text = "\n".join(lines)
        print(text)
        if args.write:
            (HERE / "results" / "sliding_window_accel.md").write_text(text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
