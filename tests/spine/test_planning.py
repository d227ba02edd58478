import numpy as np
import pytest

from focusseg.planning.planner import deep_merge, make_plan, parse_set, plan_patch, target_spacing


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
