"""What a one-process ``focusseg evaluate`` imports: scoring label maps needs numpy, SciPy, nibabel and cc3d, never
torch (seconds of start-up for nothing); matplotlib only when plots are written."""

import subprocess
import sys

import nibabel as nib
import numpy as np

PROBE = """
import runpy, sys
sys.argv = ["focusseg", "evaluate", *{args!r}]
try:
    runpy.run_module("focusseg", run_name="__main__")
except SystemExit as exc:
    assert not exc.code, f"evaluate exited with {{exc.code}}"
print("IMPORTED", " ".join(m for m in ("torch", "matplotlib", "monai", "SimpleITK") if m in sys.modules))
"""


def _pairs(tmp_path):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    gt = np.zeros((24, 20, 16), np.uint8)
    gt[4:12, 4:12, 4:10] = 1
    gt[14:20, 12:18, 6:12] = 2
    for i, shift in enumerate((0, 1)):
        affine = np.diag([1.2, 1.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(gt, affine), str(ref_dir / f"c{i}.nii.gz"))
        nib.save(nib.Nifti1Image(np.roll(gt, shift, axis=0), affine), str(pred_dir / f"c{i}.nii.gz"))
    return pred_dir, ref_dir


def _imported(args):
    out = subprocess.run([sys.executable, "-c", PROBE.format(args=[str(a) for a in args])], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("IMPORTED")][-1]
    return set(line.split()[1:])


def test_evaluate_never_imports_torch(tmp_path):
    pred_dir, ref_dir = _pairs(tmp_path)
    imported = _imported([pred_dir, ref_dir, "--out", tmp_path / "ev", "--workers", "1"])
    assert "torch" not in imported and "monai" not in imported and "SimpleITK" not in imported, imported
    assert (tmp_path / "ev" / "summary.json").is_file() and (tmp_path / "ev" / "dice_violin.png").is_file()


def test_evaluate_without_plots_never_imports_matplotlib(tmp_path):
    pred_dir, ref_dir = _pairs(tmp_path)
    imported = _imported([pred_dir, ref_dir, "--out", tmp_path / "ev", "--workers", "1", "--no-plots"])
    assert not imported & {"torch", "matplotlib"}, imported
    assert (tmp_path / "ev" / "summary.json").is_file()
    assert not (tmp_path / "ev" / "dice_violin.png").exists()
