"""benchmarks/bench_evidence.py (issue 7): the helpers (noisy-label copy, override stacking, mean ± sd, verdicts)
and the smoke mode, which trains every arm of every comparison on tiny phantoms and writes every report."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from focusseg_testdata import write_tiny_dataset

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import evidence_lib as lib  # noqa: E402


def test_corrupt_label_kinds():
    lab = np.zeros((12, 12, 12), np.uint8)
    lab[2:9, 2:9, 2:9] = 1
    lab[9:11, 9:11, 9:11] = 2
    er = lib.corrupt_label(lab, "erode", [1, 2])
    assert (er == 1).sum() == 3**3 and (er == 2).sum() == 0  # 7^3 cube loses 2 voxels per side; 2^3 vanishes
    di = lib.corrupt_label(lab, "dilate", [1, 2])
    assert ((di > 0) >= (lab > 0)).all() and (di[lab > 0] == lab[lab > 0]).all()  # grows into background only
    assert (di == 1).sum() > (lab == 1).sum() and (di == 2).sum() > (lab == 2).sum()
    sw = lib.corrupt_label(lab, "swap", [1, 2])
    assert ((sw == 2) == (lab == 1)).all() and ((sw == 1) == (lab == 2)).all()
    with pytest.raises(ValueError):
        lib.corrupt_label(lab, "blur", [1])


def test_noisy_copy_touches_only_training_labels(tmp_path: Path):
    from focusseg.data.splits import make_splits

    src = write_tiny_dataset(tmp_path / "src", n_cases=10)
    before = {p.name: p.read_bytes() for p in (src / "labelsTr").iterdir()}
    dst = lib.make_noisy_copy(src, tmp_path / "noisy", fraction=0.3, fold=0, seed=0)
    man = json.loads((dst / "corruption.json").read_text())
    splits = json.loads((dst / "splits_final.json").read_text())
    assert splits == make_splits([n.removesuffix(".nii.gz") for n in before])
    train, val = splits[0]["train"], splits[0]["val"]
    assert len(man["corrupted"]) == round(0.3 * len(train)) and set(man["corrupted"]) <= set(train)
    assert sorted(man["corrupted"].values()) == ["dilate", "erode"]  # dealt in turn (seeded order)
    assert {p.name: p.read_bytes() for p in (src / "labelsTr").iterdir()} == before  # source untouched
    for case in train + val:
        link = dst / "labelsTr" / f"{case}.nii.gz"
        if case in man["corrupted"]:
            assert not link.is_symlink()
            assert (np.asarray(nib.load(link).dataobj) != np.asarray(nib.load(src / "labelsTr" / link.name).dataobj)
                    ).any()
        else:
            assert link.is_symlink() and link.resolve() == (src / "labelsTr" / link.name).resolve()
    assert all((dst / "imagesTr" / p.name).is_symlink() for p in (src / "imagesTr").iterdir())
    assert lib.make_noisy_copy(src, dst, fraction=0.3) == dst  # reused when the manifest matches


def test_stack_keeps_replace_marker():
    from focusseg.planning.planner import deep_merge

    plan = {"training": {"loss": {"ce": 1, "soft_dice": 1}, "seed": 0, "amp": "bf16"}}
    a = {"training": {"loss": {"_replace": True, "name": "dice"}, "amp": "none"}}
    b = {"training": {"seed": 3, "loss": {"include_background": False}}}
    assert deep_merge(plan, lib.stack(a, b)) == deep_merge(deep_merge(plan, a), b)
    assert deep_merge(plan, lib.stack(a, b))["training"]["loss"] == {"name": "dice", "include_background": False}


def test_mean_sd_and_verdicts():
    m, s = lib.mean_sd([0.7, 0.72, 0.74])
    assert m == pytest.approx(0.72) and s == pytest.approx(0.02)
    assert math.isnan(lib.mean_sd([0.5])[1]) and lib.fmt([0.5]) == "0.500" and lib.fmt([]) == "n/a"
    assert "within 1 sd: not resolved" in lib.verdict("x", "a", [0.70, 0.72, 0.74], "b", [0.71, 0.73, 0.75])
    assert "> 1 sd: b better" in lib.verdict("x", "a", [0.70, 0.71, 0.72], "b", [0.80, 0.81, 0.82])
    assert "> 1 sd: b worse" in lib.verdict("x", "a", [0.80, 0.81, 0.82], "b", [0.70, 0.71, 0.72])
    assert "one seed" in lib.verdict("x", "a", [0.7], "b", [0.8])
    its, mean, sd = lib.curve_mean([[(10, 0.2), (20, 0.4)], [(10, 0.4), (20, 0.6), (30, 0.9)]])
    assert its == [10, 20] and np.allclose(mean, [0.3, 0.5]) and np.all(sd > 0)


@pytest.mark.slow
def test_smoke_writes_every_report(tmp_path: Path):
    import bench_evidence

    mds = bench_evidence.main(["all", "--smoke", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res")])
    assert [m.name for m in mds] == [f"evidence_{c}.md" for c in lib.COMPARISONS]
    for md, comp in zip(mds, lib.COMPARISONS.values()):
        text = md.read_text()
        assert (md.parent / f"evidence_{comp.name}.png").stat().st_size > 0
        assert "SMOKE" in text and "Verdict" in text
        for arm in comp.arms:
            row = next(line for line in text.splitlines() if line.startswith(f"| `{arm}` | 1 |"))
            nums = [float(x) for x in re.findall(r"(?<![\w.])\d+\.\d+", row)]
            assert len(nums) >= 5 and all(math.isfinite(x) for x in nums), row
            assert "n/a" not in row, row
        if comp.name == "blob":
            assert "lesion F1" in text
        if comp.name == "cycle_noisy":
            assert "training labels corrupted" in text
        if comp.name == "focused_practice":
            assert "val Dice @ it 2" in text
    # resume: a second call trains nothing and rewrites the same tables
    before = mds[1].read_text()
    bench_evidence.main(["topk", "--smoke", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res")])
    assert mds[1].read_text().split("| arm |")[1] == before.split("| arm |")[1]
