"""``focusseg evaluate`` against a MONAI NSD + HD95 script, as whole processes (start-up and imports included).

Cases: the 3 Dataset101_MSLesionLjubljana lesion masks (182 x 218 x 182, 1 mm), each against 4 perturbed copies
(one-voxel dilation; one-voxel erosion; every third 26-connected lesion removed; shifted one voxel along x),
12 prediction / reference pairs written once to a temporary folder (the shared files are read, never copied into
the repository).

- ``focusseg evaluate PRED REF --out OUT`` (defaults: 2 workers; Dice, IoU, precision, recall, NSD at 1 mm, HD95,
  ASSD, FP/FN volumes, lesion-wise detection; ``metrics.csv``, ``summary.json`` and two violin plots written);
- the MONAI script: a fresh ``python`` that reads the pairs with nibabel and computes
  ``compute_surface_dice(use_subvoxels=True)`` at 1 mm and ``compute_hausdorff_distance(percentile=95)`` per pair
  (what a MONAI user writes for these two numbers; it computes nothing else), one process.

Each command runs ``--repeats`` times, one after another; the median wall time is reported. Also reported: the
import time of each side alone (``python -c 'import ...'``) and what ``focusseg evaluate`` imported (torch and
matplotlib must not be among the modules of a run that writes no plot... see the table).

    .venv/bin/python benchmarks/bench_evaluate_process.py [--repeats 3] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = (REPO / ".." / "shared" / "data" / "Dataset101_MSLesionLjubljana").resolve()
PY = sys.executable

MONAI_SCRIPT = r'''
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice

pred_dir, ref_dir = Path(sys.argv[1]), Path(sys.argv[2])
rows = []
for ref_file in sorted(ref_dir.glob("*.nii.gz")):
    ref_img = nib.load(str(ref_file))
    gt = np.asanyarray(ref_img.dataobj) > 0
    pred = np.asanyarray(nib.load(str(pred_dir / ref_file.name)).dataobj) > 0
    spacing = tuple(float(z) for z in ref_img.header.get_zooms()[:3])
    yp = torch.from_numpy(pred[None, None].astype(np.float32))
    yg = torch.from_numpy(gt[None, None].astype(np.float32))
    nsd = compute_surface_dice(yp, yg, [1.0], include_background=True, spacing=spacing, use_subvoxels=True)
    hd = compute_hausdorff_distance(yp, yg, include_background=True, percentile=95, spacing=spacing)
    rows.append((ref_file.name, float(nsd[0, 0]), float(hd[0, 0])))
for r in rows:
    print(*r)
'''


def make_pairs(root: Path) -> tuple[Path, Path]:
    pred_dir, ref_dir = root / "pred", root / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    for f in sorted((DATA / "labelsTr").glob("*.nii.gz")):
        img = nib.load(str(f))
        gt = np.asanyarray(img.dataobj) > 0
        lab = cc3d.connected_components(gt, connectivity=26)
        variants = {
            "dilated": ndimage.binary_dilation(gt),
            "eroded": ndimage.binary_erosion(gt),
            "fewer": gt & ~np.isin(lab, np.arange(3, lab.max() + 1, 3)),
            "shifted": np.roll(gt, 1, axis=0),
        }
        stem = f.name[: -len(".nii.gz")]
        for name, pred in variants.items():
            case = f"{stem}_{name}.nii.gz"
            nib.save(nib.Nifti1Image(gt.astype(np.uint8), img.affine, img.header), str(ref_dir / case))
            nib.save(nib.Nifti1Image(pred.astype(np.uint8), img.affine, img.header), str(pred_dir / case))
    return pred_dir, ref_dir


def timed(cmd: list[str], repeats: int) -> tuple[float, list[float], str]:
    times, out = [], ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        out = res.stdout
    return statistics.median(times), times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if not (DATA / "labelsTr").is_dir():
        raise SystemExit(f"{DATA}: not found (the shared data is needed)")
    sys.path.insert(0, str(HERE))
    from machine import machine_line

    focusseg = str(Path(PY).parent / "focusseg")
    with tempfile.TemporaryDirectory() as tmp:
        pred_dir, ref_dir = make_pairs(Path(tmp))
        script = Path(tmp) / "monai_nsd_hd95.py"
        script.write_text(MONAI_SCRIPT)
        t_fs, all_fs, _ = timed([focusseg, "evaluate", str(pred_dir), str(ref_dir), "--out", str(Path(tmp) / "ev")],
                                args.repeats)
        t_mo, all_mo, _ = timed([PY, str(script), str(pred_dir), str(ref_dir)], args.repeats)
        argv = ["focusseg", "evaluate", str(pred_dir), str(ref_dir), "--out", str(Path(tmp) / "ev2")]
        probe = (f"import sys, runpy; sys.argv = {argv!r}\n"
                 "try:\n    runpy.run_module('focusseg', run_name='__main__')\nexcept SystemExit:\n    pass\n"
                 "print(' '.join(m for m in ('torch', 'matplotlib', 'monai', 'scipy', 'nibabel', 'cc3d') "
                 "if m in sys.modules))")
        imported = subprocess.run([PY, "-c", probe], capture_output=True, text=True).stdout.strip().splitlines()[-1]
        t_imp_fs, _, _ = timed([PY, "-c", "import focusseg.cli, focusseg.workflows.evaluate"], 3)
        t_imp_mo, _, _ = timed([PY, "-c", "import torch, monai.metrics, nibabel"], 3)
    lines = [
        "## `focusseg evaluate` vs a MONAI NSD + HD95 script, whole processes (12 MS-lesion pairs)",
        "",
        f"- Command: `.venv/bin/python benchmarks/bench_evaluate_process.py --repeats {args.repeats} --write`",
        f"- Machine: {machine_line()}; nothing else running",
        "- Pairs: the 3 Dataset101_MSLesionLjubljana lesion masks (182 x 218 x 182, 1 mm) against a dilated, an "
        "eroded, a shifted copy and one with every third lesion removed.",
        "",
        "| process | median wall s | runs (s) | computes |",
        "|---|---|---|---|",
        f"| `focusseg evaluate PRED REF --out OUT` | {t_fs:.2f} | {', '.join(f'{t:.2f}' for t in all_fs)} | "
        "Dice, IoU, precision, recall, NSD 1 mm, HD95, ASSD, FP/FN volumes, lesion-wise F1; CSV, JSON, 2 plots |",
        f"| MONAI script (`compute_surface_dice` + `compute_hausdorff_distance`) | {t_mo:.2f} | "
        f"{', '.join(f'{t:.2f}' for t in all_mo)} | NSD 1 mm, HD95 |",
        "",
        f"- Ratio: the MONAI script takes **{t_mo / t_fs:.1f}x** the time of `focusseg evaluate`.",
        f"- Imports alone (median of 3 fresh processes): focusseg's CLI and evaluation {t_imp_fs:.2f} s; "
        f"torch + monai.metrics + nibabel {t_imp_mo:.2f} s.",
        f"- Modules a `focusseg evaluate` process had imported at its end (of torch, matplotlib, monai, scipy, "
        f"nibabel, cc3d): {imported or 'none'}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        (HERE / "results" / "evaluate_process.md").write_text(text)


if __name__ == "__main__":
    main()
