"""focusseg's sliding window against nnU-Net v2's predictor and MONAI on one MS-lesion case (issue 8).

Case: Dataset101_MSLesionLjubljana ``patient07`` (4 channels, 182 x 218 x 182), each channel z-scored over the
non-zero (any-channel) voxels and zero outside; the SAME float32 array goes to all three implementations.
Windows 64^3 (not the CPU plan's 96^3: 64^3 keeps the run short and gives 5 x 6 x 5 = 150 windows), overlap 0.5
(nnU-Net ``tile_step_size=0.5``), Gaussian weighting (sigma = patch / 8), CPU, float32 unless stated.

Network: MONAI ``UNet(3, 4, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)``, random
weights from ``torch.manual_seed(0)``, built once and saved as a state_dict that every run loads (identical
weights in both venvs).

Implementations (each configuration in a fresh subprocess):

* nnU-Net v2 ``nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=...,
  perform_everything_on_device=False, device=cpu)`` and ``predict_sliding_window_return_logits``. Instead of
  ``initialize_from_trained_model_folder`` the run sets, minimally: ``network`` (the UNet),
  ``configuration_manager = SimpleNamespace(patch_size=[64]*3)``,
  ``label_manager = SimpleNamespace(num_segmentation_heads=2)``, ``allowed_mirroring_axes = (0, 1, 2)``: the
  only attributes that method reads besides its constructor arguments. It runs one window per forward pass (and
  one forward per mirror), a producer thread cuts windows, and it accumulates logits and weights in float16.
* focusseg ``sliding_window_predict(net, image, (64,)*3, 0.5, mirror_axes, batch_size=B[, amp_dtype][, mask])``.
* MONAI ``sliding_window_inference(image[None], (64,)*3, B, predictor, overlap=0.5, mode="gaussian")``; with
  mirroring the predictor averages the 8 flipped predictions of each window batch (what a MONAI user writes).

The nnU-Net runs use the separate venv ``.bench-nnunet`` (create it with ``bash benchmarks/setup_nnunet_env.sh``,
then ``.bench-nnunet/bin/pip install -c .bench-nnunet/constraints.txt monai==1.6.1`` so the worker can build the
same MONAI UNet); focusseg and MONAI run in the interpreter that runs this script (``.venv``).

Per run: torch threads ``--threads`` (2 = this machine's default), one warm-up forward with the run's batch
before timing, wall seconds of the predict call alone, peak RSS = ``ru_maxrss`` of the subprocess after the run
(and after the warm-up = baseline: the venvs import different libraries), and the 1-minute load average before
and after each run. On a shared 2-core machine two OpenMP threads stall whenever another process takes a core
(measured: a 32^3 forward of this UNet took 0.87 s with 2 threads and 0.017 s with 1 thread while another
training ran): compare rows only if the load column stays near the thread count, else rerun with
``--threads 1``. Mirror rows cost 8x: they run after the plain rows, in priority order, only while the
projected total stays under ``--budget-s``; skipped ones are listed (a plain row is skipped once the budget is
spent; a run is killed past 1.25x the budget).

Agreement: max |logit difference| and argmax agreement against nnU-Net's output and MONAI's with the same
mirroring; bf16 and mask rows also get the Dice of the foreground argmax against focusseg fp32. One extra row
runs nnU-Net's predictor with its float16 Gaussian (``compute_gaussian``) and float16 accumulators
(``torch.half`` in its module) patched to float32: an agreement check that separates nnU-Net's float16
rounding from real differences in window placement or weighting (its time is not nnU-Net's).

``--smoke`` runs the whole pipeline in about a minute on a 40^3 crop (32^3 windows, a small UNet, 1 thread).

Run:  .venv/bin/python benchmarks/bench_inference_peers.py [--batch 4] [--threads 2] [--budget-s 450] [--write]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "../shared/data/Dataset101_MSLesionLjubljana"
NNUNET_PY = ROOT / ".bench-nnunet" / "bin" / "python"
RESULTS = ROOT / "benchmarks" / "results" / "inference_peers.md"
CASE = "patient07"
PATCH = (64, 64, 64)
CHANNELS = (16, 32, 64, 128, 256)


def build_net(channels: tuple[int, ...] = CHANNELS):  # noqa: ANN201 - monai type, imported lazily (both venvs)
    from monai.networks.nets import UNet

    return UNet(3, 4, 2, channels=channels, strides=(2,) * (len(channels) - 1), num_res_units=2)


def load_case() -> np.ndarray:
    import nibabel as nib

    files = [DATA / "imagesTr" / f"{CASE}_{c:04d}.nii.gz" for c in range(4)]
    if not all(f.exists() for f in files):
        raise SystemExit(f"{DATA}/imagesTr/{CASE}_000[0-3].nii.gz not found: the benchmark needs ../shared/data")
    img = np.stack([np.asarray(nib.load(f).dataobj, np.float32) for f in files])
    nz = (img != 0).any(0)
    for c in range(img.shape[0]):
        v = img[c][nz]
        img[c] = np.where(nz, (img[c] - v.mean()) / max(float(v.std()), 1e-8), 0.0)
    return img


def worker(spec: dict) -> None:
    from contextlib import nullcontext

    import torch

    torch.set_num_threads(spec["threads"])
    impl, b, mirror = spec["impl"], spec["batch"], spec["mirror"]
    if impl == "nnunet":  # import the implementation before the baseline RSS is taken
        from types import SimpleNamespace

        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    elif impl == "focusseg":
        from focusseg.inference import nonzero_mask, sliding_window_predict
    else:
        from monai.inferers import sliding_window_inference
    image = torch.from_numpy(np.load(spec["image"]))
    patch = tuple(spec["patch"])
    net = build_net(tuple(spec["channels"]))
    net.load_state_dict(torch.load(spec["weights"], weights_only=True))
    net.eval()
    amp = torch.bfloat16 if spec.get("amp") == "bf16" else None
    with torch.inference_mode(), torch.autocast("cpu", dtype=amp) if amp else nullcontext():
        net(torch.zeros(b, 4, *patch))  # warm-up: one-time allocations and kernel selection are not timed
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    extra: dict = {}
    if impl == "nnunet":
        if spec.get("fp32"):  # agreement check only: nnU-Net's float16 Gaussian and accumulators made float32
            import nnunetv2.inference.predict_from_raw_data as nn_pred

            gauss16 = nn_pred.compute_gaussian
            nn_pred.compute_gaussian = lambda *a, **k: gauss16(*a, **{**k, "dtype": torch.float32})
            torch.half = torch.float32  # the module allocates its accumulators with dtype=torch.half
        pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                               perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
        pred.network = net
        pred.configuration_manager = SimpleNamespace(patch_size=list(patch))
        pred.label_manager = SimpleNamespace(num_segmentation_heads=2)
        pred.allowed_mirroring_axes = (0, 1, 2)
        extra["version"] = _dist_version("nnunetv2")
        t0 = time.perf_counter()
        logits = pred.predict_sliding_window_return_logits(image)
        seconds = time.perf_counter() - t0
        extra["dtype"] = str(logits.dtype)
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        g = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, device=torch.device("cpu"))
        extra["gauss"] = {"dtype": str(g.dtype), "min": float(g.min()), "subnormal_pct":
                          100 * float((g < torch.finfo(torch.float16).tiny).float().mean()),
                          "at_min_pct": 100 * float((g == g.min()).float().mean())}
    elif impl == "focusseg":
        t0 = time.perf_counter()
        mask = nonzero_mask(image) if spec.get("mask") else None
        logits = sliding_window_predict(net, image, patch, 0.5, (0, 1, 2) if mirror else (), batch_size=b,
                                        amp_dtype=amp, mask=mask)
        seconds = time.perf_counter() - t0
    else:
        flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)] if mirror else [()]

        def predictor(x: torch.Tensor) -> torch.Tensor:
            return sum(torch.flip(net(torch.flip(x, f)), f) if f else net(x) for f in flips) / len(flips)

        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = sliding_window_inference(image[None], patch, b, predictor, overlap=0.5, mode="gaussian")[0]
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(spec["out"], logits.float().numpy())
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "base_rss_mb": base, **extra}))


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def run_config(spec: dict, timeout: float) -> dict:
    py = str(NNUNET_PY) if spec["impl"] == "nnunet" else sys.executable
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = subprocess.run([py, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        raise SystemExit(f"{spec['name']} failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t0
    out["load"] = (load0, os.getloadavg()[0])
    return out


def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max |a - b|, argmax agreement in %) of two (K, *spatial) logit arrays."""
    return float(np.abs(a - b).max()), 100.0 * float((a.argmax(0) == b.argmax(0)).mean())


def diff_profile(a: np.ndarray, b: np.ndarray, margin: int) -> str:
    """Where two logit arrays differ: share of voxels off by > 1e-2, the 99.9th percentile of |a - b|, the
    largest difference's distance to the nearest image face, and max |a - b| at least ``margin`` voxels inside."""
    d = np.abs(a - b).max(0)
    idx = np.unravel_index(int(d.argmax()), d.shape)
    face = min(min(i, n - 1 - i) for i, n in zip(idx, d.shape))
    inner = d[tuple(slice(margin, n - margin) for n in d.shape)]
    return (f"{100 * float((d > 1e-2).mean()):.3f} % of voxels differ by > 1e-2, 99.9th percentile"
            f" {float(np.quantile(d, 0.999)):.2e}; the largest difference lies {face} voxels from an image face;"
            f" max |diff| >= {margin} voxels inside the image: {float(inner.max()):.2e}")


def dice_fg(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of the foreground (argmax == 1) of two logit arrays: 2|A n B| / (|A| + |B|) (1 if both empty)."""
    fa, fb = a.argmax(0) == 1, b.argmax(0) == 1
    s = int(fa.sum()) + int(fb.sum())
    return 1.0 if s == 0 else 2.0 * float((fa & fb).sum()) / s


def main() -> None:  # noqa: C901, PLR0915 - one linear script
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4, help="focusseg's / MONAI's best batch size (besides 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=450.0, help="mirror rows run only while projected under it")
    ap.add_argument("--write", action="store_true", help=f"write {RESULTS.relative_to(ROOT)}")
    ap.add_argument("--smoke", action="store_true", help="seconds-long pipeline check: 40^3 crop, 32^3 windows,"
                    " a small UNet, 1 thread, nothing written")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    if not NNUNET_PY.exists():
        raise SystemExit(f"{NNUNET_PY} missing: run `bash benchmarks/setup_nnunet_env.sh` (see the docstring)")
    chk = subprocess.run([str(NNUNET_PY), "-c", "import monai, nnunetv2"], capture_output=True, text=True)
    if chk.returncode != 0:
        raise SystemExit(f"nnU-Net venv incomplete ({chk.stderr.strip().splitlines()[-1]}): "
                         "`.bench-nnunet/bin/pip install -c .bench-nnunet/constraints.txt monai==1.6.1`")
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from machine import machine_line

    from focusseg.inference import compute_steps

    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench_peers_"))
    atexit.register(shutil.rmtree, tmp, True)  # also on SystemExit (~60 MB of logits per run)
    img = load_case()
    patch, channels = PATCH, CHANNELS
    if args.smoke:
        img = np.ascontiguousarray(img[:, 70:110, 90:130, 70:110])
        patch, channels, args.threads, args.write = (32, 32, 32), (4, 8, 16), 1, False
    np.save(tmp / "image.npy", img)
    torch.manual_seed(0)
    torch.save(build_net(channels).state_dict(), tmp / "weights.pt")
    B = args.batch
    plain = [("nnunet", 1, {}), ("focusseg", B, {}), ("focusseg", 1, {}), ("nnunet", 1, {"fp32": True}),
             ("monai", B, {}), ("monai", 1, {}), ("focusseg", B, {"amp": "bf16"}), ("focusseg", B, {"mask": True})]
    mirrored = [("nnunet", 1, {}), ("focusseg", B, {}), ("monai", B, {}), ("focusseg", 1, {}), ("monai", 1, {})]
    rows: list[dict] = []
    skipped: list[str] = []

    def name(impl: str, b: int, opt: dict, mirror: bool) -> str:
        extra = ", bf16 autocast" if opt.get("amp") else ", non-zero mask" if opt.get("mask") else ""
        extra += ", float32 accumulators (patched)" if opt.get("fp32") else ""
        return f"{impl}, batch {b}{extra}{', 8 mirrors' if mirror else ''}"

    for mirror, configs in ((False, plain), (True, mirrored)):
        for impl, b, opt in configs:
            nm = name(impl, b, opt, mirror)
            elapsed = time.perf_counter() - t_start
            why = f"{elapsed:.0f} s already spent" if elapsed > args.budget_s else None
            if mirror and why is None:  # projected: 8x the plain run's predict time plus its process overhead
                p = next((r for r in rows if r["name"] == name(impl, b, opt, False)), None)
                if p is None or (impl != "nnunet" and not any(r["mirror"] for r in rows)):
                    why = "its plain run or nnU-Net's mirror run is missing"
                else:
                    projected = 8 * p["seconds"] + (p["wall_s"] - p["seconds"])
                    why = f"projected {projected:.0f} s" if elapsed + projected > args.budget_s else None
            if why is not None:
                skipped.append(f"{nm} ({why})")
                print("skip", nm, why, flush=True)
                continue
            spec = {"name": nm, "impl": impl, "batch": b, "mirror": mirror, "threads": args.threads,
                    "image": str(tmp / "image.npy"), "weights": str(tmp / "weights.pt"),
                    "patch": patch, "channels": channels,
                    "out": str(tmp / f"{len(rows)}.npy"), **opt}
            try:
                r = run_config(spec, timeout=max(30.0, 1.25 * args.budget_s - elapsed))
            except subprocess.TimeoutExpired:
                skipped.append(f"{nm} (killed: over 1.25 x --budget-s)")
                continue
            rows.append({**r, **spec})
            print(nm, json.dumps(r), flush=True)

    if not rows:
        raise SystemExit("no configuration ran within --budget-s")

    def first(impl: str, mirror: bool, **opt: object) -> dict | None:
        return next((r for r in rows if r["impl"] == impl and r["mirror"] == mirror
                     and all(r.get(k) == v for k, v in opt.items())
                     and not r.get("amp") and not r.get("mask") and not r.get("fp32")), None)

    n_windows = int(np.prod([len(st) for st in compute_steps(img.shape[1:], patch, 0.5)]))
    lines = [
        "## Inference: focusseg vs nnU-Net v2's predictor and MONAI (sliding window, issue 8)",
        "",
        f"- Command: `.venv/bin/python benchmarks/bench_inference_peers.py --batch {B} --threads {args.threads}"
        f" --budget-s {args.budget_s:.0f} --write`",
        f"- Machine: {machine_line()}; nnunetv2 {rows[0].get('version')} (separate venv `.bench-nnunet`,"
        f" same torch); torch threads per run: {args.threads}",
        f"- Case: Dataset101_MSLesionLjubljana `{CASE}`, {tuple(img.shape)} (C, X, Y, Z), z-scored per channel inside"
        f" the non-zero mask, the same array for all; {patch[0]}^3 windows ({n_windows}), overlap 0.5, Gaussian"
        " sigma = patch/8, CPU.",
        f"- Network: MONAI `UNet(channels={channels}, strides=(2,)*4, num_res_units=2)`, random weights (seed 0),"
        " one state_dict loaded by every run. nnU-Net's predictor: attributes set as in the script docstring,"
        " `perform_everything_on_device=False`; it forwards one window (and one mirror) per pass.",
        "- One run per configuration, each in its own subprocess, warm-up forward first; time = the predict call;"
        " peak RSS = `ru_maxrss` after the run (baseline = after loading case, weights, imports and warm-up).",
        "- Agreement columns: max |logit difference| / argmax agreement against nnU-Net's output, against nnU-Net's"
        " predictor with its float16 Gaussian and accumulators patched to float32 (agreement check only), and"
        " against MONAI's (batch 1 if run, else batch B), each with the same mirroring.",
        "",
        "| configuration | time (s) | speed-up vs nnU-Net | load avg before/after | peak RSS (MB) |"
        " above baseline (MB) | vs nnU-Net: max abs / argmax % | vs nnU-Net fp32-patched |"
        " vs MONAI: max abs / argmax % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    cache: dict[str, np.ndarray] = {}

    def arr(r: dict) -> np.ndarray:
        if r["out"] not in cache:
            cache[r["out"]] = np.load(r["out"])
        return cache[r["out"]]

    nn32 = next((r for r in rows if r.get("fp32")), None)
    refs = {m: {"nnunet": first("nnunet", m), "nnunet32": None if m else nn32,
                "monai": first("monai", m, batch=1) or first("monai", m), "fp32": first("focusseg", m, batch=B)}
            for m in (False, True)}
    notes = []
    for r in rows:
        pred = arr(r)
        nn_row = refs[r["mirror"]]["nnunet"]
        speed = f"{nn_row['seconds'] / r['seconds']:.2f}x" if nn_row else "-"
        cells = []
        for key in ("nnunet", "nnunet32", "monai"):
            ref = refs[r["mirror"]][key]
            if ref is None or ref is r:
                cells.append("-")
                continue
            mx, ag = compare(pred, arr(ref))
            cells.append(f"{mx:.2e} / {ag:.3f}")
        lines.append(f"| {r['name']} | {r['seconds']:.2f} | {speed} | {r['load'][0]:.1f}/{r['load'][1]:.1f} |"
                     f" {r['peak_rss_mb']:.0f} |"
                     f" {r['peak_rss_mb'] - r['base_rss_mb']:.0f} | {' | '.join(cells)} |")
        fp32 = refs[r["mirror"]]["fp32"]
        if (r.get("amp") or r.get("mask")) and fp32 is not None:
            mx, ag = compare(pred, arr(fp32))
            notes.append(f"- {r['name']} vs focusseg fp32 batch {B}: foreground Dice {dice_fg(pred, arr(fp32)):.4f},"
                         f" argmax agreement {ag:.3f} %, max |logit difference| {mx:.2e}.")
    if skipped:
        notes.append(f"- Skipped to stay within --budget-s {args.budget_s:.0f}: " + "; ".join(skipped) + ".")
    for m in (False, True):
        fs, nn_row = refs[m]["fp32"], refs[m]["nnunet"]
        if fs is not None and nn_row is not None:
            notes.append(f"- {fs['name']} vs nnU-Net: " + diff_profile(arr(fs), arr(nn_row), patch[0] // 4) + ".")
    gs, nn_dtype = rows[0].get("gauss"), rows[0].get("dtype")
    if gs:
        notes.append(
            f"- nnU-Net's Gaussian is {gs['dtype']} (peak 10): {gs['subnormal_pct']:.1f} % of a window's weights are"
            f" float16 subnormals (< 6.1e-5, coarsely quantized), {gs['at_min_pct']:.1f} % equal the clamp value"
            f" {gs['min']:.2e}; it sums logits times weights in float16 and returns float16 logits ({nn_dtype})."
            " Where only window tails cover a voxel (image faces and corners) its logits are quantized; focusseg"
            " keeps the Gaussian and the sums in float32."
        )
    lines += ["", *notes, "", *goal_lines(rows, arr, B), ""]
    lines.append(f"- Total benchmark wall time: {time.perf_counter() - t_start:.0f} s.")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


def goal_lines(rows: list[dict], arr: Callable[[dict], np.ndarray], B: int) -> list[str]:
    """Issue 8's goals, checked on the measured rows (plain fp32 focusseg at batch B unless said)."""
    out = [f"Issue 8 goals (focusseg fp32, no mask, batch {B} and 1, vs the peers with the same mirroring):", ""]

    def get(impl: str, b: int, m: bool) -> dict | None:
        return next((r for r in rows if r["impl"] == impl and r["batch"] == b and r["mirror"] == m
                     and not r.get("amp") and not r.get("mask") and not r.get("fp32")), None)

    for m in (False, True):
        tag = "8 mirrors" if m else "no mirroring"
        nn, mo = get("nnunet", 1, m), get("monai", B, m) or get("monai", 1, m)
        for b in (B, 1):
            fs = get("focusseg", b, m)
            if fs is None or nn is None:
                continue
            mx, ag = compare(arr(fs), arr(nn))
            sp = nn["seconds"] / fs["seconds"]
            out.append(f"- {tag}, focusseg batch {b}: {sp:.2f}x nnU-Net's time -> >= 2x "
                       f"{'MET' if sp >= 2 else 'NOT met'}; output vs nnU-Net max |diff| {mx:.2e}, argmax {ag:.3f} %.")
            mo_b = get("monai", b, m)
            if mo_b is not None:
                out.append(f"  - vs MONAI batch {b}: {fs['seconds']:.2f} s vs {mo_b['seconds']:.2f} s -> no slower "
                           f"{'MET' if fs['seconds'] <= mo_b['seconds'] else 'NOT met'}.")
            peers = [p for p in (nn, mo_b or mo) if p is not None]
            worst = min(p["peak_rss_mb"] for p in peers)
            above = min(p["peak_rss_mb"] - p["base_rss_mb"] for p in peers)
            fs_above = fs["peak_rss_mb"] - fs["base_rss_mb"]
            out.append(f"  - peak RSS {fs['peak_rss_mb']:.0f} MB vs " + ", ".join(
                f"{p['name']} {p['peak_rss_mb']:.0f} MB" for p in peers)
                + f" -> no higher than either {'MET' if fs['peak_rss_mb'] <= worst else 'NOT met'}"
                f" (above each run's baseline: {fs_above:.0f} MB vs " + ", ".join(
                f"{p['peak_rss_mb'] - p['base_rss_mb']:.0f}" for p in peers)
                + f" MB -> {'MET' if fs_above <= above else 'NOT met'}).")
    return out


if __name__ == "__main__":
    main()
