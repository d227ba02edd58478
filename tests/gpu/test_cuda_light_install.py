"""Light install (issue 13, part 6): ``import focusseg`` and ``focusseg train`` / ``predict`` on NIfTI never
import SimpleITK (an optional extra, ``focusseg[formats]``): they work in a process where it cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from focusseg_testdata import write_tiny_dataset

BLOCK = textwrap.dedent("""
    import sys

    class NoSimpleITK:
        def find_spec(self, name, path=None, target=None):
            if name == "SimpleITK" or name.startswith("SimpleITK."):
                raise ImportError("SimpleITK is not installed (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoSimpleITK())
""")

TINY = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 1, "iterations_per_epoch": 2, "augmentation": "light", "amp": "none"},
        "inference": {"mirror_axes": []}}


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code), *args], capture_output=True,
                          text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def test_import_does_not_load_simpleitk():
    res = _python("""
        import focusseg, focusseg.cli, focusseg.io, focusseg.workflows.train, focusseg.inference.predictor
        assert "SimpleITK" not in sys.modules, "SimpleITK imported"
        print("ok")
    """)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_train_and_predict_on_nifti_without_simpleitk(tmp_path: Path):
    data = write_tiny_dataset(tmp_path / "D", n_cases=4, with_test=True)
    (tmp_path / "tiny.json").write_text(json.dumps({"name": "tiny", "plan": TINY}))
    res = _python("""
        import torch
        torch.set_num_threads(1)
        from focusseg.cli import main
        data, out = sys.argv[1], sys.argv[2]
        assert main(["train", data, "--out", out + "/run", "--recipe", out + "/tiny.json", "--no-progress",
                     "--device", "cpu"]) in (0, None)
        assert main(["predict", out + "/run", data + "/imagesTs", out + "/pred"]) in (0, None)
        assert "SimpleITK" not in sys.modules, "SimpleITK imported"
        print("ok")
    """, str(data), str(tmp_path))
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), (res.stdout[-1000:], res.stderr[-2000:])
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 2


def test_mha_without_simpleitk_is_one_usage_error(tmp_path, monkeypatch):
    """Without the optional SimpleITK extra, a .mha file gives a UsageError naming it and the extra to install."""
    import sys

    import pytest

    from focusseg.errors import UsageError
    from focusseg.io.image import read_image

    path = tmp_path / "case_0000.mha"
    path.write_bytes(b"ObjectType = Image\n")
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import fails
    with pytest.raises(UsageError, match=r"focusseg\[formats\]") as err:
        read_image(path)
    assert err.value.path == path
