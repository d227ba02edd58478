"""Recipe forms (issue 13, part 5): each recipe's CPU (scaled-down) form and GPU (the paper's) form.

No training and no GPU: a CUDA plan is made for an 80 GB card from synthetic fingerprints (and from Hippocampus
when ``../shared/data`` is present), the GPU form is applied as training applies it (``engine.run.finish_plan``
with device ``cuda``), the network is built on the meta device and ``nets.profile.estimate_plan_memory`` must fit
80 GB (three networks for cycle training, which holds all three on the card).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from focusseg_testdata import shared_dataset

from focusseg.engine.build import build_loss_from_plan, build_lr_controller
from focusseg.errors import PlanError, UsageError
from focusseg.nets.from_plan import build_network_from_plan
from focusseg.planning import topology as planner
from focusseg.planning.planner import deep_merge, make_plan
from focusseg.planning.profile import estimate_plan_memory
from focusseg.planning.topology import stride_divisors
from focusseg.recipes import load_recipe, merge_overrides, recipe_names, recipe_plan, resolve_network_topology
from focusseg.strategies.lr import PolyLR
from focusseg.workflows.plan import finish_plan

CARD_GB = 80
RECIPES = ["blob-valdo", "cycle-flare21", "default", "flare21-fast", "fp-pet", "runtime-freezing"]


def _fp(shape, spacing, n_classes=2, n_cases=50, channels=("CT",)):
    return {"dataset": "synthetic", "n_cases": n_cases,
            "channel_names": {str(i): c for i, c in enumerate(channels)},
            "labels": {"background": 0, **{f"c{i}": i for i in range(1, n_classes)}},
            "median_spacing": list(spacing), "spacing_percentile_10": list(spacing),
            "median_shape_after_crop": list(shape), "median_crop_fraction": 1.0,
            "intensity": [{"channel": c, "mean": 0.0, "std": 1.0, "percentile_00_5": -1.0, "percentile_99_5": 1.0}
                          for c in channels]}


#: Synthetic fingerprints in (x, y, z) order, shaped like the papers' data: abdominal CT (FLARE21: 4 organs, thick
#: slices), whole-body PET/CT (autoPET: two channels) and a three-channel brain MR (VALDO: T1, T2, FLAIR).
SYNTHETIC = {
    "abdomen_ct": _fp([512, 512, 100], [0.8, 0.8, 2.5], n_classes=5, n_cases=361),
    "pet_ct": _fp([200, 200, 300], [2.0, 2.0, 3.0], n_classes=2, n_cases=1014, channels=("CT", "PET")),
    "brain_mr3": _fp([512, 512, 40], [0.5, 0.5, 3.0], n_classes=2, n_cases=40, channels=("T1", "T2", "FLAIR")),
}


@pytest.fixture(scope="module")
def hippocampus_fp() -> dict:
    from focusseg.planning.fingerprint import compute_fingerprint

    return compute_fingerprint(shared_dataset("Dataset004_Hippocampus"), workers=1, progress=False)


def gpu_plan(fp: dict, name: str) -> dict:
    """The plan a CUDA run trains with recipe ``name`` on an 80 GB card."""
    return finish_plan(make_plan(fp, device="cuda", gpu_memory_gb=CARD_GB), load_recipe(name), None, "cuda")


def training_memory_gb(plan: dict) -> float:
    """``estimate_plan_memory`` of the plan's network built on the meta device; cycle training holds three networks
    (and their activations: all three forward the batch before one backward) on the card."""
    with torch.device("meta"):
        net = build_network_from_plan(plan)
    est = estimate_plan_memory(plan, net)
    n_nets = 3 if (plan["training"].get("task") or {}).get("name") == "cycle" else 1
    return n_nets * (est["total_gb"] - planner.FIXED_OVERHEAD_GB) + planner.FIXED_OVERHEAD_GB


def assert_builds_and_fits(plan: dict) -> float:
    with torch.device("meta"):
        net = build_network_from_plan(plan)
    net.train()
    out = net(torch.empty((plan["batch_size"], len(plan["channel_names"]), *plan["patch_size"]), device="meta"))
    outs = out if isinstance(out, list) else [out]
    assert list(outs[0].shape) == [plan["batch_size"], plan["n_classes"], *plan["patch_size"]]
    ds = plan["training"].get("deep_supervision")
    if ds:  # one output per nonzero weight: no zero-weight head is built
        assert len(outs) == len(ds["weights"]) and all(w > 0 for w in ds["weights"])
        build_loss_from_plan(plan)
    gb = training_memory_gb(plan)
    assert gb <= CARD_GB, f"{plan['recipe_form']} form of {plan['network']['name']} needs ~{gb:.1f} GB"
    return gb


def test_every_packaged_recipe_has_both_forms() -> None:
    assert recipe_names() == RECIPES
    for name in RECIPES:
        r = load_recipe(name)
        assert isinstance(r["plan"], dict) and isinstance(r["gpu"]["plan"], dict)
        assert r["gpu"]["notes"].strip() and r["scaled_down"].strip()
        assert "on a GPU" not in r["scaled_down"]  # points at the GPU form instead
    assert load_recipe("default")["gpu"]["plan"] == {}


@pytest.mark.parametrize("fp_name", sorted(SYNTHETIC))
@pytest.mark.parametrize("name", RECIPES)
def test_gpu_form_builds_on_meta_and_fits_80gb(name: str, fp_name: str) -> None:
    plan = gpu_plan(SYNTHETIC[fp_name], name)
    assert plan["recipe_form"] == "gpu"
    assert_builds_and_fits(plan)


@pytest.mark.realdata
@pytest.mark.parametrize("name", RECIPES)
def test_gpu_form_fits_80gb_on_hippocampus(name: str, hippocampus_fp: dict) -> None:
    assert_builds_and_fits(gpu_plan(hippocampus_fp, name))


def test_the_papers_values_land_in_the_gpu_plans() -> None:
    fp = SYNTHETIC["abdomen_ct"]
    base = make_plan(fp, device="cuda", gpu_memory_gb=CARD_GB)

    p = gpu_plan(fp, "fp-pet")
    tr = p["training"]
    assert p["network"]["name"] == "stunet_l" and p["patch_size"] == [128, 128, 128] and p["batch_size"] == 6
    assert tr["optimizer"] == {"name": "sgd", "lr": 3e-5, "momentum": 0.99, "weight_decay": 3e-5, "nesterov": True}
    assert tr["loss"] == {"ce": 1.0, "soft_dice": 1.0, "tversky": 1.0}
    assert tr["sampler"]["name"] == "focused_practice" and tr["sampler"]["overlap"] == 0.5
    assert tr["lr_schedule"]["name"] == "metric_driven" and p["inference"]["overlap"] == 0.5

    p = gpu_plan(fp, "blob-valdo")
    tr = p["training"]
    assert p["network"] == {"name": "basic_unet", "features": [32, 32, 64, 128, 256, 32], "act": "mish",
                            "dropout": 0.1}
    assert p["patch_size"] == [192, 192, 32] and p["batch_size"] == 8  # 4 elements x 2 crops
    assert tr["foreground_oversampling"] == 0.95 and tr["optimizer"] == {"name": "ranger21", "lr": 1e-3}
    assert tr["max_epochs"] == 222 and tr["loss"]["name"] == "blob"
    assert p["inference"]["overlap"] == 0.7 and p["inference"]["batch_size"] == 7
    assert p["inference"]["mirror_axes"] == [0, 1, 2] and p["inference"]["noise_passes"] == 2

    p = gpu_plan(fp, "flare21-fast")
    tr, net = p["training"], p["network"]
    assert net["name"] == "dynunet" and net["base_features"] == 32 and net["max_features"] == 320
    assert "topology" not in net and net["n_stages"] == len(net["strides"]) >= 5
    assert net["strides"][1] == [2, 2, 1]  # thick z slices (2.5 mm vs 0.8 mm) are pooled later (nnU-Net's rule)
    assert net["deep_supervision"] is True and net["deep_supr_num"] == 2  # 3 heads for 3 weights
    assert tr["deep_supervision"]["weights"] == [0.7, 0.2, 0.1]
    assert tr["loss"] == {"soft_dice": 1.0, "topk_ce": {"weight": 1.0, "k": 10}}
    assert p["patch_size"] == [160, 192, 80] and p["batch_size"] == 2  # nnU-Net's 80x192x160 in (x, y, z)
    assert all(s % d == 0 for s, d in zip(p["patch_size"], stride_divisors(net["strides"])))
    assert tr["max_epochs"] == 300 and tr["iterations_per_epoch"] == 250
    assert tr["lr_schedule"] == {"name": "poly", "exponent": 0.9, "horizon_epochs": 1000}
    assert p["inference"]["mirror_axes"] == [0]  # identity + one extra TTA pass

    p = gpu_plan(fp, "runtime-freezing")
    assert p["network"]["name"] == "unet" and p["network"]["channels"] == [64, 128, 256, 512]
    assert p["training"]["loss"]["name"] == "dice" and p["training"]["class_weighter"]["name"] == "cbs"
    assert p["patch_size"] == base["patch_size"]  # the paper states none: the planner's

    p = gpu_plan(fp, "cycle-flare21")
    assert p["training"]["task"]["name"] == "cycle" and p["training"]["max_epochs"] == 1000
    assert p["network"]["name"] == "dynunet" and p["patch_size"] == [512, 512]  # the paper's 2D nnU-Net
    assert p["configuration"] == "2d" and p["batch_size"] == 8 and p["slice_axis"] in (0, 1, 2)
    assert all(len(k) == 2 for k in p["network"]["kernel_sizes"])
    assert len(p["training"]["deep_supervision"]["weights"]) == p["network"]["deep_supr_num"] + 1

    p = gpu_plan(fp, "default")
    assert p["network"] == base["network"] and p["patch_size"] == base["patch_size"]


#: The network each recipe's CPU form trains on a CPU plan, as before the GPU forms existed.
CPU_NETWORKS = {"default": ("unet", "channels", [16, 32, 64, 128, 256]),
                "fp-pet": ("stunet_s", None, None),
                "blob-valdo": ("basic_unet", "features", [16, 16, 32, 64, 128, 16]),
                "flare21-fast": ("dynunet", "base_features", 16),
                "runtime-freezing": ("unet", "channels", [16, 32, 64, 128, 256]),
                "cycle-flare21": ("unet", "channels", [16, 32, 64, 128, 256])}


@pytest.mark.parametrize("name", RECIPES)
def test_cpu_form_is_unchanged(name: str) -> None:
    r = load_recipe(name)
    over, form = recipe_plan(r, "cpu")
    assert form == "cpu" and over == r["plan"]  # the CPU form is the recipe's "plan", nothing added
    fp = SYNTHETIC["abdomen_ct"]
    plan = finish_plan(make_plan(fp, device="cpu"), r, None, "cpu")
    assert plan["recipe_form"] == "cpu"
    net_name, key, value = CPU_NETWORKS[name]
    assert plan["network"]["name"] == net_name
    if key is not None:
        assert plan["network"][key] == value
    forced = finish_plan(make_plan(fp, device="cuda", gpu_memory_gb=CARD_GB), r, None, "cuda", form="cpu")
    assert forced["recipe_form"] == "cpu"
    assert forced == finish_plan(make_plan(fp, device="cuda", gpu_memory_gb=CARD_GB), {**r, "form": "cpu"}, None,
                                  "cuda")


def test_form_follows_the_device_unless_forced() -> None:
    r = load_recipe("fp-pet")
    assert recipe_plan(r, "cuda")[1] == "gpu" and recipe_plan(r, "cuda:1")[1] == "gpu"
    assert recipe_plan(r, "cpu")[1] == "cpu" and recipe_plan(r, "mps")[1] == "cpu"
    assert recipe_plan(r, "cpu", "gpu")[0]["network"]["name"] == "stunet_l"
    assert recipe_plan(r, "cuda", "cpu")[0]["network"]["name"] == "stunet_s"
    assert recipe_plan(None, "cuda") == ({}, "gpu")
    with pytest.raises(UsageError, match="form"):
        recipe_plan(r, "cpu", "tpu")
    cpu_plan = finish_plan(make_plan(SYNTHETIC["pet_ct"], device="cpu"), None, None, "cpu")
    assert cpu_plan["recipe_form"] == "cpu"


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_merged_overrides_equal_applying_the_forms_in_turn(device: str) -> None:
    base = make_plan(SYNTHETIC["abdomen_ct"], device=device, gpu_memory_gb=CARD_GB)
    for name in RECIPES:
        r = load_recipe(name)
        in_turn = deep_merge(deep_merge(base, r["plan"]), r["gpu"]["plan"])
        assert deep_merge(base, recipe_plan(r, device, "gpu")[0]) == in_turn, name
    plan = {"a": {"x": 1, "y": {"z": 2}}, "b": 3, "c": {"k": 1}, "d": {"q": 1}}
    first = {"a": {"_replace": True, "x": 5}, "b": {"new": 1}, "c": 7, "d": {"q": 2}}
    then = {"a": {"w": 6}, "b": {"more": 2}, "c": {"m": 1}, "d": {"_replace": True, "r": 3}, "e": 1}
    assert deep_merge(plan, merge_overrides(first, then)) == deep_merge(deep_merge(plan, first), then) == {
        "a": {"x": 5, "w": 6}, "b": {"new": 1, "more": 2}, "c": {"m": 1}, "d": {"r": 3}, "e": 1}


def test_nnunet_topology_follows_spacing_and_patch() -> None:
    base = make_plan(SYNTHETIC["brain_mr3"], device="cuda", gpu_memory_gb=CARD_GB)
    plan = {**base, "patch_size": [192, 192, 32],
            "network": {"name": "dynunet", "base_features": 32, "topology": "nnunet", "strides": [[1, 1, 1]] * 3}}
    out = resolve_network_topology(plan)
    net = out["network"]
    assert "topology" not in net and net["n_stages"] == len(net["strides"]) == len(net["kernel_sizes"])
    assert all(s[2] == 1 for s in net["strides"][:2])  # the 3 mm axis waits while 0.5 mm axes are pooled
    assert net["kernel_sizes"][0] == [3, 3, 1]  # nnU-Net's 3x3x1 convs on thick slices
    assert all(p % d == 0 for p, d in zip(out["patch_size"], stride_divisors(net["strides"])))
    assert resolve_network_topology(base) is base  # nothing asked: unchanged
    with pytest.raises(PlanError, match="topology"):
        resolve_network_topology({**plan, "network": {"name": "unet", "topology": "nnunet"}})


def test_poly_horizon_stops_a_longer_schedule() -> None:
    """FLARE21 (paper 002): nnU-Net's (1 - epoch/1000)^0.9 stopped at epoch 300."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ipe = 250
    lr = PolyLR(opt, 0.01, max_iterations=300 * ipe, exponent=0.9, horizon_iterations=1000 * ipe)
    assert lr.step(0) == pytest.approx(0.01)
    assert lr.step(300 * ipe) == pytest.approx(0.01 * 0.7**0.9)  # where the run stops: 0.73 lr0
    assert lr.step(10**9) == pytest.approx(0.01 * 0.7**0.9)  # clamped at the run's end
    lr.max_iterations = 150 * ipe  # the loop fits the run to a time budget: the horizon stays
    assert lr.step(150 * ipe) == pytest.approx(0.01 * 0.85**0.9)
    plain = PolyLR(opt, 0.01, max_iterations=100)
    assert plain.step(50) == pytest.approx(0.01 * 0.5**0.9) and plain.step(200) == 0.0
    with pytest.raises(ValueError, match="horizon"):
        PolyLR(opt, 0.01, max_iterations=10, horizon_iterations=0)
    plan = gpu_plan(SYNTHETIC["abdomen_ct"], "flare21-fast")
    built = build_lr_controller(plan, opt, 300 * ipe)
    assert isinstance(built, PolyLR) and built.horizon_iterations == 1000 * ipe
    assert built.step(300 * ipe) == pytest.approx(0.01 * 0.7**0.9)


def test_a_recipe_with_a_malformed_gpu_form_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"plan": {}, "gpu": {"plan": [1]}}))
    with pytest.raises(UsageError, match="gpu"):
        load_recipe(bad)
    bad.write_text(json.dumps({"plan": {}, "form": "tpu"}))
    with pytest.raises(UsageError, match="form"):
        load_recipe(bad)
    plain = tmp_path / "mine.json"  # a user's recipe without a GPU form: both forms are its plan
    plain.write_text(json.dumps({"plan": {"batch_size": 3}}))
    r = load_recipe(plain)
    assert recipe_plan(r, "cuda") == ({"batch_size": 3}, "gpu") and recipe_plan(r, "cpu") == ({"batch_size": 3}, "cpu")


def test_recipes_command_shows_both_forms() -> None:
    from typer.testing import CliRunner

    from focusseg.cli import app

    res = CliRunner().invoke(app, ["recipes"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert text.count("CPU form (scaled down)") == len(RECIPES) == text.count("GPU form (the paper's)")
    for word in ("stunet_s", "stunet_l", "128x128x128", "192x192x32", "160x192x80", "222", "300 x 250",
                 "ranger21 lr 0.001", "sgd lr 3e-05", "poly over 1000 epochs", "64-128-256-512", "task cycle",
                 "class weighter cbs", "512x512"):
        assert word in text, word
    for name in RECIPES:
        r = load_recipe(name)
        assert " ".join(r["scaled_down"].split())[:40] in text
        assert " ".join(r["gpu"]["notes"].split())[:40] in text
    one = CliRunner().invoke(app, ["recipes", "flare21-fast"], env={"COLUMNS": "200"})
    assert one.exit_code == 0 and "flare21-fast" in one.output and "fp-pet" not in one.output


def test_plan_command_applies_the_form_of_the_device(tiny_dataset: Path, tmp_path: Path) -> None:
    from focusseg.cli import main

    out = tmp_path / "plan.json"
    assert main(["plan", str(tiny_dataset), "--device", "cuda", "--gpu-memory", "80", "--recipe", "fp-pet",
                 "--no-check", "--out", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["recipe"] == "fp-pet" and plan["recipe_form"] == "gpu" and plan["network"]["name"] == "stunet_l"
    assert main(["plan", str(tiny_dataset), "--device", "cuda", "--gpu-memory", "80", "--recipe", "fp-pet",
                 "--recipe-form", "cpu", "--no-check", "--out", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["recipe_form"] == "cpu" and plan["network"]["name"] == "stunet_s"
    assert main(["plan", str(tiny_dataset), "--device", "cpu", "--recipe", "flare21-fast", "--no-check",
                 "--out", str(out)]) == 0
    plan = json.loads(out.read_text())  # 3 weights on the CPU form's 5-stage DynUNet: 3 heads
    assert plan["recipe_form"] == "cpu" and plan["network"]["deep_supr_num"] == 2
    assert main(["plan", str(tiny_dataset), "--recipe", "fp-pet", "--recipe-form", "big", "--no-check"]) == 2


class _StubTrainer:
    best, epoch, iteration, elapsed = 0.5, 1, 2, 0.1


def _stub_training(monkeypatch: pytest.MonkeyPatch, device: str) -> list[dict]:
    """Run ``run_training``'s planning and resume rules without training: the loop, the checkpoint reader and
    the device are stubbed; returns the plans handed to the loop."""
    from focusseg.workflows import train as run

    seen: list[dict] = []

    def fake_train(store, plan, run_dir, *a, **kw):
        seen.append(plan)
        (Path(run_dir) / "checkpoint_latest.pt").write_bytes(b"stub")
        return _StubTrainer()

    monkeypatch.setattr(run, "train", fake_train)
    monkeypatch.setattr(run, "load_resume_state", lambda run_dir: ({}, Path(run_dir)))
    monkeypatch.setattr(run, "resolve_device", lambda d: torch.device(device))
    return seen


TINY_PATCH = {"patch_size": [16, 16, 16], "batch_size": 2}


def test_resume_keeps_the_stored_form_and_accepts_plans_without_one(tiny_dataset: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from focusseg.workflows.train import run_training

    seen = _stub_training(monkeypatch, "cpu")
    run_dir = tmp_path / "run"
    kw = {"fold": 0, "overrides": TINY_PATCH, "progress": False, "final_validation": False}
    run_training(tiny_dataset, run_dir, recipe=load_recipe("flare21-fast"), **kw)
    assert seen[-1]["recipe_form"] == "cpu" and seen[-1]["network"]["deep_supr_num"] == 2
    # a plan written before recipe forms and matched heads: no recipe_form, MONAI's default heads
    stored = json.loads((run_dir / "plan.json").read_text())
    del stored["recipe_form"]
    del stored["network"]["deep_supr_num"]
    (run_dir / "plan.json").write_text(json.dumps(stored))
    seen.clear()
    run_training(tiny_dataset, run_dir, recipe=load_recipe("flare21-fast"), resume=True, **kw)
    assert seen[-1] == stored  # nothing added, nothing refused
    log = run_dir / "log.jsonl"
    assert not log.is_file() or "resume" not in log.read_text()
    run_training(tiny_dataset, run_dir, recipe=load_recipe("default"), resume=True, **kw)
    assert seen[-1] == stored
    # the same run resumed on a CUDA machine keeps its CPU form (the GPU form's network would not load)
    _stub_training(monkeypatch, "cuda")
    run_training(tiny_dataset, run_dir, recipe=load_recipe("flare21-fast"), resume=True, **kw)
    assert seen[-1] == stored and "recipe_form" not in json.loads((run_dir / "plan.json").read_text())


def test_a_fresh_cuda_run_gets_the_gpu_form(tiny_dataset: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from focusseg.workflows.train import run_training

    seen = _stub_training(monkeypatch, "cuda")
    run_dir = tmp_path / "run"
    kw = {"fold": 0, "progress": False, "final_validation": False}
    run_training(tiny_dataset, run_dir, recipe=load_recipe("flare21-fast"), **kw)
    plan = seen[-1]
    assert plan["recipe_form"] == "gpu" and plan["recipe"] == "flare21-fast"
    assert plan["patch_size"] == [160, 192, 80] and plan["network"]["base_features"] == 32
    assert math.isclose(json.loads((run_dir / "plan.json").read_text())["training"]["lr_schedule"]["horizon_epochs"],
                        1000)
    seen.clear()
    run_training(tiny_dataset, run_dir, recipe=load_recipe("flare21-fast"), resume=True, **kw)
    assert seen[-1] == plan  # resumed with its own (GPU) form: no change
