"""The GPU acceptance benchmark's CPU smoke mode (``--device cpu --smoke``) runs in the fast suite, so the script
never rots: a table row per recipe with finite numbers, the other sections present, written to a tmp folder."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_acceptance.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_smoke_mode_writes_a_row_per_recipe(tmp_path: Path):
    mod = _module()
    out = tmp_path / "gpu_acceptance.md"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = mod.run(torch.device("cpu"), smoke=True, out=out, pytest_timeout=120)
    finally:
        torch.set_num_threads(n)
    text = out.read_text()
    assert mod.NOT_MEASURED in text and "Command: `python benchmarks/gpu_acceptance.py --device cpu --smoke`" in text
    for name in mod.RECIPES:
        r = res["recipes"][name]
        assert "error" not in r, (name, r)
        assert r["loss_finite"]
        for key in ("s_per_it", "wait_frac", "syncs_per_it"):
            assert math.isfinite(r[key]) and r[key] >= 0, (name, key, r[key])
        row = re.search(rf"^\| {re.escape(name)} \| (.+)$", text, re.M)
        assert row and "error" not in row.group(1)
    assert res["default_no_data"]["wait_frac"] == 0.0 or res["default_no_data"]["wait_frac"] < 0.05
    assert res["sliding_window"]["pointwise_max_abs_diff"] < 1e-4  # the blending matches MONAI's
    assert "skipped" in res["cuda_tests"] or "status" in res["cuda_tests"]
    assert res["total_s"] < 60
