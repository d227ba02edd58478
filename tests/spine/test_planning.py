import json
import math

import numpy as np
import pytest

from focusseg.planning.planner import deep_merge, make_plan, parse_set, target_spacing
from focusseg.planning.topology import plan_patch


def _fp(**kw):
    fp = {"dataset": "x", "n_cases": 100, "channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1},
          "median_spacing": [1.0, 1.0, 1.0], "spacing_percentile_10": [1.0, 1.0, 1.0],
          "median_shape_after_crop": [36, 50, 35], "median_crop_fraction": 1.0,
          "intensity": [{"channel": "CT", "mean": 40.0, "std": 100.0, "percentile_00_5": -900.0,
                         "percentile_99_5": 1200.0}]}
    fp.update(kw)
    return fp


def test_hippocampus_like_plan_matches_nnunet_choices():
    plan = make_plan(_fp(), device="cpu")
    assert plan["patch_size"] == [40, 56, 40]  # nnU-Net's Hippocampus patch
    assert plan["batch_size"] >= 2
    assert plan["network"]["name"] == "unet" and plan["network"]["channels"][0] == 16
    assert plan["normalization"][0] == {"scheme": "ct", "clip": [-900.0, 1200.0], "mean": 40.0, "std": 100.0}


def test_anisotropic_axis_takes_the_10th_percentile():
    fp = _fp(median_spacing=[0.8, 0.8, 5.0], spacing_percentile_10=[0.7, 0.7, 3.0],
             median_shape_after_crop=[512, 512, 40])
    assert target_spacing(fp) == pytest.approx([0.8, 0.8, 3.0])
    # isotropic voxels counts do not trigger the rule
    assert target_spacing(_fp(median_spacing=[1, 1, 4.0], median_shape_after_crop=[100, 100, 90]))[2] == 4.0


def test_patch_respects_budget_and_divisibility():
    patch, n_pool = plan_patch([300.0, 300.0, 200.0], 96**3)
    assert np.prod(patch) <= 96**3 * 1.3 and all(p % 2**n_pool == 0 for p in patch)
    assert n_pool == 4 or n_pool == 5


def test_cuda_profile_plans_bigger():
    fp = _fp(median_shape_after_crop=[300, 300, 200])
    cpu, gpu = make_plan(fp, "cpu"), make_plan(fp, "cuda")
    assert np.prod(gpu["patch_size"]) > np.prod(cpu["patch_size"])
    assert gpu["network"]["name"] == "dynunet" and gpu["training"]["deep_supervision"]


def test_mr_masked_zscore_when_crop_removes_much():
    fp = _fp(channel_names={"0": "FLAIR"}, median_crop_fraction=0.5)
    fp["intensity"][0]["channel"] = "FLAIR"
    assert make_plan(fp)["normalization"][0] == {"scheme": "zscore", "use_mask": True}


def test_overrides_every_field():
    over = parse_set(["training.batch_size=4", "patch_size=[32,32,32]", "network.name=basic_unet", "note=hello"])
    assert over == {"training": {"batch_size": 4}, "patch_size": [32, 32, 32], "network": {"name": "basic_unet"},
                    "note": "hello"}
    plan = make_plan(_fp(), overrides=over)
    assert plan["patch_size"] == [32, 32, 32] and plan["network"]["name"] == "basic_unet"
    assert plan["network"]["channels"] == [16, 32, 64, 128]  # nested merge keeps the rest
    replaced = deep_merge(plan, {"network": {"_replace": True, "name": "dynunet"}})
    assert replaced["network"] == {"name": "dynunet"}
    with pytest.raises(ValueError):
        parse_set(["no_equals_sign"])


def test_cuda_plan_states_its_budget_and_plans_per_axis(monkeypatch):
    import focusseg.planning.topology as topology

    monkeypatch.setattr(topology, "visible_gpu_memory_gb", lambda device="cuda": None)
    fp = _fp(median_spacing=[5.0, 0.8, 0.8], spacing_percentile_10=[5.0, 0.8, 0.8],
             median_shape_after_crop=[24, 320, 320])
    plan = make_plan(fp, "cuda")
    assert plan["gpu_memory_gb"] == 8.0 and plan["preset"] == "m" and plan["memory_estimate_gb"] <= 8.0
    net = plan["network"]
    assert net["strides"][1] == [1, 2, 2] and net["kernel_sizes"][0] == [1, 3, 3]  # thick slices pooled later
    assert all(p % math.prod(s[a] for s in net["strides"]) == 0 for a, p in enumerate(plan["patch_size"]))
    assert len(plan["training"]["deep_supervision"]["weights"]) == net["deep_supr_num"] + 1  # no zero-weight head
    sizes = [math.prod(make_plan(fp, "cuda", preset=p)["patch_size"]) * make_plan(fp, "cuda", preset=p)["batch_size"]
             for p in ("m", "l", "xl")]
    assert sizes[0] < sizes[1] <= sizes[2]
    assert "gpu_memory_gb" not in make_plan(fp, "cpu")  # the CPU plan is unchanged


def test_cli_plan_for_a_card_and_nets_describes_it(tiny_dataset, tmp_path, capsys):
    from focusseg.cli import main

    out = tmp_path / "plan.json"
    assert main(["plan", str(tiny_dataset), "--gpu-memory", "24", "--preset", "l", "--out", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["device_profile"] == "cuda" and plan["preset"] == "l"
    assert plan["gpu_memory_gb"] == 21.6  # the 24 GB card minus headroom
    capsys.readouterr()
    assert main(["nets", "--plan", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "params" in text and "GFLOPs" in text and "GB (estimate)" in text and "step_s" in text
    assert main(["plan", str(tiny_dataset), "--device", "cpu", "--preset", "m", "--no-check"]) == 2
    assert main(["plan", str(tiny_dataset), "--gpu-memory", "24", "--preset", "xl", "--no-check"]) != 0
