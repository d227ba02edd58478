"""Whole-case prediction memory on a large CT-like case with many classes (issue 8, "streaming so a large CT does
not need several copies in RAM").

    .venv/bin/python benchmarks/bench_predict_memory.py [--shape 540 540 192] [--classes 17] [--write]

The case: a synthetic 1-channel CT volume (``--shape``, spacing 0.8 x 0.8 x 2.5 mm, smooth random HU field) whose
plan resamples it to 1.5 x 1.5 x 2.5 mm for the network (a 17-class plan, as WORD/FLARE abdominal organs), and a
small MONAI UNet (random weights, seed 0). Compared, each in its own subprocess, same network, same windows:

* ``focusseg``: ``Predictor.segment`` (read array -> crop/normalise/resample -> Gaussian sliding window -> in-place
  softmax -> class-by-class resampling with a running argmax -> label map on the original grid).
* ``monai-style``: the same preprocessing, then MONAI ``sliding_window_inference`` (Gaussian, same overlap and
  batch) -> ``torch.softmax`` -> ``F.interpolate`` of all K channels to the original grid -> argmax, the usual
  inferer + invert pipeline of a MONAI script.

Peak RSS is ``ru_maxrss`` of the subprocess (baseline = after building the input and the network). The default
shape makes MONAI's and nnU-Net's window placements coincide on the network grid, so both label maps must agree
(agreement printed; the random network's near-uniform probabilities make argmax sensitive to any difference).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "predict_memory.md"


def make_plan(classes: int, patch: int) -> dict:
    return {"version": 1, "dataset": "synthetic-ct", "channel_names": {"0": "CT"},
            "labels": {"background": 0, **{f"organ{k}": k for k in range(1, classes)}}, "n_classes": classes,
            "target_spacing": [1.5, 1.5, 2.5], "patch_size": [patch] * 3, "batch_size": 2,
            "normalization": [{"scheme": "ct", "clip": [-1000.0, 1500.0], "mean": 40.0, "std": 120.0}],
            "resample_order_image": 1,
            "network": {"name": "unet", "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1,
                        "norm": "instance"},
            "inference": {"overlap": 0.5, "mirror_axes": [], "batch_size": 4}, "training": {"amp": "none"}}


def make_case(shape: tuple[int, ...]) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(0)
    small = rng.normal(0, 300, size=[max(2, s // 16) for s in shape]).astype(np.float32)
    return ndimage.zoom(small, [s / t for s, t in zip(shape, small.shape)], order=1)[None].astype(np.float32)


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    from focusseg.inference.predictor import Predictor
    from focusseg.io import Geometry
    from focusseg.nets.from_plan import build_inference_module

    torch.set_num_threads(args.threads)
    plan = make_plan(args.classes, args.patch)
    image = make_case(tuple(args.shape))
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    geo = Geometry(affine=affine, shape=tuple(args.shape))
    torch.manual_seed(0)
    net = build_inference_module(plan)
    pred = Predictor(plan, net.state_dict(), "cpu")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if args.worker == "focusseg":
        seg = pred.segment(image, geo, tta=False)
    else:
        from monai.inferers import sliding_window_inference

        from focusseg.preprocessing.preprocess import preprocess_array

        data, _, props = preprocess_array(image, geo, plan)
        with torch.inference_mode():
            logits = sliding_window_inference(torch.from_numpy(data)[None], plan["patch_size"], 4, pred.network,
                                              overlap=0.5, mode="gaussian")
            probs = torch.softmax(logits, 1)
            probs = F.interpolate(probs, size=tuple(props["shape_after_crop"]), mode="trilinear",
                                  align_corners=False)
            lab = probs[0].argmax(0)
        seg = np.zeros(geo.shape, np.uint8)
        seg[tuple(slice(lo, hi) for lo, hi in props["bbox"])] = lab.numpy()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(args.out, seg)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "base_rss_mb": base}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # 540 x 540 x 192 at 0.8/0.8/2.5 mm -> a 288 x 288 x 192 network grid, where (size - 64) is a multiple of the
    # 32-voxel step: MONAI's and nnU-Net's window placements coincide, so the two label maps can be compared
    ap.add_argument("--shape", type=int, nargs=3, default=[540, 540, 192])
    ap.add_argument("--classes", type=int, default=17)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--note", default=None, help="a line appended to the report (e.g. what else ran)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    import tempfile

    from machine import machine_line

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for impl in ("focusseg", "monai-style"):
            out = Path(tmp) / f"{impl}.npy"
            cmd = [sys.executable, __file__, "--worker", impl, "--out", str(out), "--shape", *map(str, args.shape),
                   "--classes", str(args.classes), "--patch", str(args.patch), "--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows[impl] = json.loads(res.stdout.strip().splitlines()[-1])
            rows[impl]["seg"] = np.load(out)
            print(impl, {k: v for k, v in rows[impl].items() if k != "seg"}, flush=True)
    agree = float((rows["focusseg"]["seg"] == rows["monai-style"]["seg"]).mean())
    f, m = rows["focusseg"], rows["monai-style"]
    grid = [round(s * sp / t) for s, sp, t in zip(args.shape, (0.8, 0.8, 2.5), (1.5, 1.5, 2.5))]
    gib_orig, gib_net = (args.classes * float(np.prod(g)) * 4 / 2**30 for g in (args.shape, grid))
    ratio = (f["peak_rss_mb"] - f["base_rss_mb"]) / max(1.0, m["peak_rss_mb"] - m["base_rss_mb"])
    lines = ["## Whole-case prediction memory: a large CT with many classes (issue 8)", "",
             f"- Command: `python benchmarks/bench_predict_memory.py {' '.join(sys.argv[1:])}`",
             f"- Machine: {machine_line()}; torch threads {args.threads}",
             f"- Case: synthetic CT {tuple(args.shape)} at 0.8 x 0.8 x 2.5 mm, resampled to ~{tuple(grid)} at "
             f"1.5 x 1.5 x 2.5 mm for the network; {args.classes} classes; MONAI UNet (8, 16, 32), random weights; "
             f"{args.patch}^3 windows, overlap 0.5, batch 4, no TTA, fp32, CPU.",
             f"- One K-channel float32 volume on the original grid is {gib_orig:.2f} GiB; on the network grid "
             f"{gib_net:.2f} GiB.", "",
             "| pipeline | time (s) | time ratio | peak RSS (MB) | above baseline (MB) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['seconds'] / m['seconds']:.2f}x | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_rss_mb'] - r['base_rss_mb']:.0f} |")
    lines += ["", f"- Label maps agree on {100 * agree:.4f} % of voxels.",
              f"- focusseg's peak above baseline is {ratio:.2f}x the MONAI-style pipeline's: the softmax is computed "
              "in place on the network grid and classes are "
              "resampled one at a time into a running argmax, so no K-channel volume on the original grid exists.", ""]
    if args.note:
        lines += [f"- Note: {args.note}", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
