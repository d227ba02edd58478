"""Time focusseg's surface metrics (NSD + HD95) against MONAI and deepmind's surface-distance on real labels.

Cases (from ../shared/data, never copied):

- ``ms``: Dataset101_MSLesionLjubljana ``patient19`` lesion mask (182 x 218 x 182, 1 mm) against a perturbed
  copy (one-voxel dilation, every third 26-connected lesion removed);
- ``word``: LabelsOnly_AbdomenWORD ``word_0014`` (512 x 512 x 187, 0.98 x 0.98 x 3 mm), each of the 16
  organs against the label map shifted by one voxel along axes 0 and 2.

Each tool computes NSD at 1 mm and HD95 per organ, binary masks on the full volume: focusseg
``surface_distances`` + ``normalized_surface_dice`` + ``robust_hausdorff`` (ASSD comes free);
MONAI ``compute_surface_dice(use_subvoxels=True)`` + ``compute_hausdorff_distance(percentile=95)`` on
``(1, 1, X, Y, Z)`` float32 tensors; deepmind ``compute_surface_distances`` + ``compute_surface_dice_at_tolerance``
+ ``compute_robust_hausdorff``.  HD95 definitions differ: focusseg and deepmind use area-weighted surfel
corners, MONAI voxel-centre edges with an interpolated quantile; focusseg's ``hausdorff_voxel`` implements
MONAI's definition and is compared with it.  Each timing is the best of ``--repeats`` runs.

Run:  .venv/bin/python benchmarks/bench_metrics.py [--repeats 2] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
import warnings
from pathlib import Path

import cc3d
import monai
import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

from focusseg.metrics.surface import hausdorff_voxel, normalized_surface_dice, robust_hausdorff, surface_distances

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "../shared/data"
TOL = 1.0

try:
    import surface_distance as deepmind
except ImportError:  # optional reference
    deepmind = None


def best_time(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def ours(pred, gt, spacing):
    sd = surface_distances(pred, gt, spacing)
    return normalized_surface_dice(sd, TOL), robust_hausdorff(sd, 95)


def monai_metrics(pred, gt, spacing):
    yp = torch.from_numpy(pred[None, None].astype(np.float32))
    yg = torch.from_numpy(gt[None, None].astype(np.float32))
    nsd = compute_surface_dice(yp, yg, [TOL], include_background=True, spacing=spacing, use_subvoxels=True)
    hd = compute_hausdorff_distance(yp, yg, include_background=True, percentile=95, spacing=spacing)
    return float(nsd[0, 0]), float(hd[0, 0])


def deepmind_metrics(pred, gt, spacing):
    d = deepmind.compute_surface_distances(gt, pred, spacing)
    return deepmind.compute_surface_dice_at_tolerance(d, TOL), deepmind.compute_robust_hausdorff(d, 95)


def cases():
    img = nib.load(str(DATA / "Dataset101_MSLesionLjubljana/labelsTr/patient19.nii.gz"))
    gt = np.asanyarray(img.dataobj) > 0
    lab = cc3d.connected_components(gt, connectivity=26)
    pred = ndimage.binary_dilation(gt) & ~np.isin(lab, np.arange(3, lab.max() + 1, 3))
    yield "ms patient19 (lesions)", [(gt, pred)], tuple(float(z) for z in img.header.get_zooms()[:3])
    img = nib.load(str(DATA / "LabelsOnly_AbdomenWORD/labelsTs/word_0014.nii.gz"))
    gt_map = np.ascontiguousarray(np.asanyarray(img.dataobj))
    pred_map = np.roll(gt_map, (1, 1), axis=(0, 2))
    pairs = [(gt_map == v, pred_map == v) for v in range(1, 17)]
    yield "word_0014 (16 organs)", pairs, tuple(float(z) for z in img.header.get_zooms()[:3])


def run(repeats):
    rows = []
    for name, pairs, spacing in cases():
        shape = pairs[0][0].shape
        t_ours = t_monai = t_dm = t_vox = 0.0
        d_nsd_monai = d_nsd_dm = d_hd_dm = d_hd_vox = 0.0
        for gt, pred in pairs:
            t, (nsd, hd) = best_time(lambda: ours(pred, gt, spacing), repeats)  # noqa: B023
            t_ours += t
            t, hd_vox = best_time(lambda: hausdorff_voxel(pred, gt, spacing, 95), repeats)  # noqa: B023
            t_vox += t
            t, (m_nsd, m_hd) = best_time(lambda: monai_metrics(pred, gt, spacing), repeats)  # noqa: B023
            t_monai += t
            d_nsd_monai = max(d_nsd_monai, abs(nsd - m_nsd))
            d_hd_vox = max(d_hd_vox, abs(hd_vox - m_hd))
            if deepmind is not None:
                t, (r_nsd, r_hd) = best_time(lambda: deepmind_metrics(pred, gt, spacing), repeats)  # noqa: B023
                t_dm += t
                d_nsd_dm, d_hd_dm = max(d_nsd_dm, abs(nsd - r_nsd)), max(d_hd_dm, abs(hd - r_hd))
        rows.append(
            dict(case=name, shape=shape, spacing=spacing, n=len(pairs), ours=t_ours, vox=t_vox, monai=t_monai,
                 dm=t_dm, d_nsd_monai=d_nsd_monai, d_nsd_dm=d_nsd_dm, d_hd_dm=d_hd_dm, d_hd_vox=d_hd_vox)
        )  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def markdown(rows, repeats):
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    lines = [
        "## Surface metrics: NSD + HD95 (focusseg vs MONAI vs deepmind surface-distance)",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_metrics.py --repeats {repeats} --write`  ",
        f"Machine: {os.cpu_count()} CPU cores ({cpu}), no GPU; Python {platform.python_version()}, "
        f"torch {torch.__version__}, MONAI {monai.__version__}, numpy {np.__version__}, "
        f"surface-distance {'0.1' if deepmind else 'not installed'}; {dt.date.today().isoformat()}.  ",
        f"Best of {repeats} runs per mask pair, NSD at {TOL} mm, times summed over the pairs of a case.",
        "",
        "| case | shape, spacing | pairs | focusseg NSD+HD95 (s) | MONAI (s) | deepmind (s) | MONAI / focusseg "
        "| deepmind / focusseg | max abs diff NSD vs MONAI / deepmind | max abs diff HD95 vs deepmind "
        "| focusseg `hausdorff_voxel` (s), max abs diff vs MONAI HD95 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dm = f"{r['dm']:.3f}" if deepmind else "n/a"
        dm_ratio = f"{r['dm'] / r['ours']:.1f}x" if deepmind else "n/a"
        lines.append(
            f"| {r['case']} | {r['shape']}, {tuple(round(s, 4) for s in r['spacing'])} | {r['n']} | {r['ours']:.3f} "
            f"| {r['monai']:.3f} | {dm} | {r['monai'] / r['ours']:.1f}x | {dm_ratio} "
            f"| {r['d_nsd_monai']:.1e} / {r['d_nsd_dm']:.1e} | {r['d_hd_dm']:.1e} "
            f"| {r['vox']:.3f}, {r['d_hd_vox']:.1e} |"
        )
    lines += [
        "",
        "NSD differences against MONAI come from MONAI's float32 surfel-area table; against deepmind they are "
        "float64 rounding. HD95 is compared with deepmind (same surfel definition); MONAI's HD95 uses voxel-centre "
        "edges, so it is compared with focusseg's `hausdorff_voxel`, which implements that definition.",
        "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/metrics.md")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"real data folder {DATA} is absent")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(os.cpu_count() or 1)
    text = markdown(run(args.repeats), args.repeats)
    print(text)
    if args.write:
        out = ROOT / "benchmarks/results/metrics.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


if __name__ == "__main__":
    main()
