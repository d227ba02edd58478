"""Data-parallel prediction: --num-parts/--part-id shares (and torchrun's RANK/WORLD_SIZE) cover every case once."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from inference.run_helpers import make_run, write_inputs

from focusseg.cli import main
from focusseg.engine.distributed import part_from_env


def test_part_from_env_reads_torchrun_variables():
    assert part_from_env({}) is None
    assert part_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert part_from_env({"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}) == (2, 3)


def test_shares_are_disjoint_and_cover_every_case(tmp_path: Path, capsys):
    run = make_run(tmp_path / "run")
    inputs = tmp_path / "in"
    write_inputs(inputs, n_cases=5)
    assert main(["predict", str(run), str(inputs), str(tmp_path / "all"), "--no-tta", "--device", "cpu"]) == 0
    shares = []
    for i in range(3):
        out = tmp_path / f"part{i}"
        assert main(["predict", str(run), str(inputs), str(out), "--no-tta", "--device", "cpu",
                     "--num-parts", "3", "--part-id", str(i)]) == 0
        shares.append({p.name for p in out.glob("*.nii.gz")})
    assert sum(len(s) for s in shares) == 5 and set().union(*shares) == {p.name for p in (tmp_path / "all").iterdir()}
    for i, share in enumerate(shares):
        for name in share:
            a = np.asarray(nib.load(tmp_path / f"part{i}" / name).dataobj)
            b = np.asarray(nib.load(tmp_path / "all" / name).dataobj)
            assert np.array_equal(a, b)


@pytest.mark.parametrize("args,message", [(["--num-parts", "2"], "go together"),
                                          (["--num-parts", "2", "--part-id", "2"], "0..1")])
def test_bad_part_options_give_one_line(tmp_path: Path, capsys, args, message):
    run = make_run(tmp_path / "run")
    inputs = tmp_path / "in"
    write_inputs(inputs, n_cases=2)
    assert main(["predict", str(run), str(inputs), str(tmp_path / "out"), *args]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert any(message in line for line in err) and len(err) <= 2


def test_unused_parameters_are_found_and_the_probe_changes_nothing():
    import torch
    from torch import nn

    from focusseg.engine.distributed import has_unused_parameters

    class Heads(nn.Module):
        def __init__(self, use_aux: bool) -> None:
            super().__init__()
            self.body, self.norm, self.aux = nn.Conv3d(1, 2, 3, padding=1), nn.BatchNorm3d(2), nn.Conv3d(2, 2, 1)
            self.use_aux = use_aux

        def forward(self, x):
            y = self.norm(self.body(x))
            return [y, self.aux(y)] if self.use_aux else y

    for use_aux, expected in ((True, False), (False, True)):
        net = Heads(use_aux)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        assert has_unused_parameters(net, (1, 1, 8, 8, 8)) is expected
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # running stats restored
        assert all(p.grad is None for p in net.parameters())


def test_evaluate_under_torchrun_scores_shares_and_writes_once(tmp_path: Path):
    """`torchrun --nproc_per_node=2 -m focusseg evaluate`: each rank scores its share of the cases, rank 0
    writes metrics.csv and summary.json, equal to a one-process evaluation."""
    import json
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
    for i in range(5):
        gt = rng.integers(0, 3, (12, 10, 8)).astype(np.uint8)
        pred = np.where(rng.random(gt.shape) < 0.8, gt, rng.integers(0, 3, gt.shape)).astype(np.uint8)
        for folder, arr in (("pred", pred), ("gt", gt)):
            nib.save(nib.Nifti1Image(arr, np.diag([1.5, 1.0, 2.0, 1.0])), str(tmp_path / folder / f"c{i}.nii.gz"))
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(tmp_path / "one"),
                 "--workers", "1"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "focusseg", "evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out",
                           str(tmp_path / "two"), "--workers", "1"], capture_output=True, encoding="utf-8",
                          errors="replace", timeout=300, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    assert (tmp_path / "one" / "metrics.csv").read_text() == (tmp_path / "two" / "metrics.csv").read_text()
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert a == b and a["n_cases"] == 5
