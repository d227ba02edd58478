"""The ResEnc presets give nnU-Net's own plans: fixtures written by nnU-Net v2's nnUNetPlannerResEncM / L / XL
(``benchmarks/make_resenc_fixtures.sh``, see ``fixtures/README.md``) for the shared datasets and two synthetic
fingerprints, compared configuration by configuration; then the focusseg side: axis order, make_plan's plan,
the settings gate and malformed fingerprints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from focusseg.errors import PlanError
from focusseg.planning.planner import make_plan, plan_configuration
from focusseg.planning.resenc import (
    RESENC_PRESETS,
    conv_feature_map_size,
    focusseg_axes,
    focusseg_resenc,
    plan_resenc,
    pool_and_conv_props,
)
from focusseg.planning.topology import PRESET_NAMES, gpu_budget
from focusseg.settings import parse_plan_settings

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
FIXTURE_FILES = sorted(FIXTURES.glob("Dataset*.json"))
CASES = [(f.stem, preset, cfg) for f in FIXTURE_FILES for preset, plans in json.loads(f.read_text())["plans"].items()
         for cfg in plans["configurations"]]
ARCH_FIELDS = ("n_stages", "features_per_stage", "kernel_sizes", "strides", "n_blocks_per_stage",
               "n_conv_per_stage_decoder")


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def nnunet_plans(name: str, preset: str) -> dict:
    fx = fixture(name)
    fp, dj = fx["fingerprint"], fx["dataset_json"]
    return plan_resenc(fp["spacings"], fp["shapes_after_crop"], dj["numTraining"], dj["n_labels"], preset)


def focusseg_fingerprint(fx: dict) -> dict:
    """A focusseg fingerprint ((x, y, z) order) with the fixture's cases; the other fields make_plan reads."""
    spacings = np.array(fx["fingerprint"]["spacings"])[:, ::-1]
    shapes = np.array(fx["fingerprint"]["shapes_after_crop"])[:, ::-1]
    n_ch, n_labels = fx["dataset_json"]["n_channels"], fx["dataset_json"]["n_labels"]
    return {
        "dataset": fx["dataset"], "n_cases": fx["dataset_json"]["numTraining"],
        "channel_names": {str(i): "MR" for i in range(n_ch)},
        "labels": {"background": 0, **{f"c{i}": i for i in range(1, n_labels)}},
        "median_spacing": np.median(spacings, 0).tolist(),
        "spacing_percentile_10": np.percentile(spacings, 10, 0).tolist(),
        "median_shape_after_crop": np.median(shapes, 0).tolist(),
        "median_crop_fraction": 1.0,
        "intensity": [{"channel": "MR", "mean": 0.0, "std": 1.0, "percentile_00_5": -1.0, "percentile_99_5": 1.0}
                      for _ in range(n_ch)],
        "cases": [{"case": f"c{i}", "spacing": s.tolist(), "shape_after_crop": [int(v) for v in sh]}
                  for i, (s, sh) in enumerate(zip(spacings, shapes))],
    }


def test_fixtures_cover_every_shared_dataset_and_stay_small():
    names = {f.stem for f in FIXTURE_FILES}
    assert {"Dataset004_Hippocampus", "Dataset101_MSLesionLjubljana", "Dataset102_BraTS2015Subset",
            "Dataset103_TotalSegExampleCT", "Dataset104_TotalSegExampleMR", "Dataset105_SpleenCase8",
            "Dataset901_SyntheticLargeCT", "Dataset902_SyntheticThickMR"} <= names
    assert all(f.stat().st_size < 16_000 for f in FIXTURE_FILES)
    for f in FIXTURE_FILES:
        fx = json.loads(f.read_text())
        assert set(fx["plans"]) == set(RESENC_PRESETS)
        assert [p["planner"] for p in fx["plans"].values()] == [p.planner for p in RESENC_PRESETS.values()]
    # what the fixtures reach: a transpose, a 3d_lowres configuration, the anisotropic 10th-percentile spacing
    assert fixture("Dataset901_SyntheticLargeCT")["plans"]["resenc-m"]["transpose_forward"] == [2, 0, 1]
    assert "3d_lowres" in fixture("Dataset901_SyntheticLargeCT")["plans"]["resenc-m"]["configurations"]
    mr = fixture("Dataset902_SyntheticThickMR")
    assert mr["plans"]["resenc-m"]["configurations"]["3d_fullres"]["spacing"][0] != np.median(
        np.array(mr["fingerprint"]["spacings"])[:, 0])


@pytest.mark.parametrize(("name", "preset"), sorted({(n, p) for n, p, _ in CASES}))
def test_same_configurations_and_transpose_as_nnunet(name: str, preset: str):
    want = fixture(name)["plans"][preset]
    got = nnunet_plans(name, preset)
    assert got["transpose_forward"] == want["transpose_forward"]
    assert set(got["configurations"]) == set(want["configurations"])


@pytest.mark.parametrize(("name", "preset", "configuration"), CASES)
def test_same_plan_as_nnunet(name: str, preset: str, configuration: str):
    want = fixture(name)["plans"][preset]["configurations"][configuration]
    got = nnunet_plans(name, preset)["configurations"][configuration]
    assert got["patch_size"] == want["patch_size"]
    assert got["batch_size"] == want["batch_size"]
    assert got["spacing"] == pytest.approx(want["spacing"], rel=1e-12)
    assert got["median_image_size_in_voxels"] == pytest.approx(want["median_image_size_in_voxels"], rel=1e-12)
    for key in ARCH_FIELDS:
        assert got["architecture"]["arch_kwargs"][key] == want["architecture"]["arch_kwargs"][key], key
    # the whole architecture, as nnU-Net's plans.json writes it (what the "nnunet" network builder reads)
    assert got["architecture"] == want["architecture"]


def test_feature_map_size_is_nnunets_reference_count():
    """nnU-Net's planner notes that its 6-stage 3D ResEnc U-Net at 128^3 (3 classes, deep supervision) counts
    558,319,104 conv feature-map elements, and the 7-stage 2D one at 512^2 129,793,792."""
    strides3 = [[1, 1, 1]] + [[2, 2, 2]] * 5
    assert conv_feature_map_size([128] * 3, [32, 64, 128, 256, 320, 320], strides3, [1, 3, 4, 6, 6, 6],
                                 [1] * 5, 3, deep_supervision=True) == 558_319_104
    strides2 = [[1, 1]] + [[2, 2]] * 6
    assert conv_feature_map_size([512] * 2, [32, 64, 128, 256, 512, 512, 512], strides2, [1, 3, 4, 6, 6, 6, 6],
                                 [1] * 6, 3, deep_supervision=True) == 129_793_792


@pytest.mark.parametrize("deep_supervision", [False, True])
@pytest.mark.parametrize(("name", "preset", "configuration"),
                         [("Dataset901_SyntheticLargeCT", "resenc-m", "3d_lowres"),
                          ("Dataset105_SpleenCase8", "resenc-l", "3d_fullres"),
                          ("Dataset902_SyntheticThickMR", "resenc-xl", "2d")])
def test_feature_map_size_matches_dynamic_network_architectures(name, preset, configuration, deep_supervision):
    """The ported count equals compute_conv_feature_map_size of the network built from the fixture's
    arch_kwargs on the meta device (the optional package; skipped without it)."""
    pytest.importorskip("dynamic_network_architectures")
    import torch
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    cfg = fixture(name)["plans"][preset]["configurations"][configuration]
    kw = dict(cfg["architecture"]["arch_kwargs"])
    dims = len(cfg["patch_size"])
    kw.update(conv_op=getattr(torch.nn, f"Conv{dims}d"), norm_op=getattr(torch.nn, f"InstanceNorm{dims}d"),
              nonlin=torch.nn.LeakyReLU)
    with torch.device("meta"):
        net = ResidualEncoderUNet(input_channels=2, num_classes=4, deep_supervision=deep_supervision, **kw)
    want = int(net.compute_conv_feature_map_size(cfg["patch_size"]))
    assert conv_feature_map_size(cfg["patch_size"], kw["features_per_stage"], kw["strides"],
                                 kw["n_blocks_per_stage"], kw["n_conv_per_stage_decoder"], 4,
                                 deep_supervision) == want


def test_topology_pads_fractional_medians_and_keeps_thick_slices_unpooled():
    topo = pool_and_conv_props([3.0, 0.625, 0.625], [23.5, 350.0, 349.5])
    assert topo.strides[1] == (1, 2, 2) and topo.kernel_sizes[0] == (1, 3, 3)
    assert all(p % d == 0 for p, d in zip(topo.patch_size, topo.divisor))
    assert topo.patch_size[0] >= 23.5 and topo.patch_size[2] >= 349.5


@pytest.mark.parametrize("name", ["Dataset901_SyntheticLargeCT", "Dataset105_SpleenCase8",
                                  "Dataset902_SyntheticThickMR"])
@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_focusseg_axis_order(name: str, configuration: str):
    """From a focusseg fingerprint ((x, y, z)) the same configuration, axes mapped: focusseg axis a is nnU-Net
    axis 2 - a, then transposed. The architecture stays nnU-Net's; ``input_axes`` names the focusseg axis each
    network axis reads, so every patch axis is divisible by the strides of the network axis reading it."""
    fx = fixture(name)
    want = fx["plans"]["resenc-l"]
    cfg = want["configurations"][configuration]
    got = focusseg_resenc(focusseg_fingerprint(fx), "resenc-l", configuration)
    dims = len(cfg["patch_size"])
    order = focusseg_axes(want["transpose_forward"], dims)
    assert got["patch_size"] == [cfg["patch_size"][i] for i in order]
    assert got["batch_size"] == cfg["batch_size"]
    assert got["architecture"] == cfg["architecture"]
    axes = got["input_axes"]
    assert sorted(axes) == list(range(dims))
    if dims == 3:
        assert axes == [2 - t for t in want["transpose_forward"]]
    strides = cfg["architecture"]["arch_kwargs"]["strides"]
    for n, a in enumerate(axes):
        assert got["patch_size"][a] == cfg["patch_size"][n]
        assert got["patch_size"][a] % math.prod(s[n] for s in strides) == 0
    nn_spacing = nnunet_plans(name, "resenc-l")["fullres_spacing"]
    assert got["target_spacing"] == pytest.approx(nn_spacing[::-1], rel=1e-12)
    if configuration == "2d":
        assert got["slice_axis"] == 2 - want["transpose_forward"][0]
        assert got["spacing"] == [got["target_spacing"][a] for a in range(3) if a != got["slice_axis"]]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("preset", list(RESENC_PRESETS))
def test_make_plan_resenc_preset(preset: str, device: str):
    fx = fixture("Dataset901_SyntheticLargeCT")
    plan = make_plan(focusseg_fingerprint(fx), device=device, preset=preset.upper())
    cfg = fx["plans"][preset]["configurations"]["3d_fullres"]
    order = focusseg_axes(fx["plans"][preset]["transpose_forward"], 3)
    assert plan["patch_size"] == [cfg["patch_size"][i] for i in order]
    assert plan["batch_size"] == cfg["batch_size"]
    assert plan["target_spacing"] == pytest.approx([cfg["spacing"][i] for i in order], rel=1e-12)
    net = plan["network"]
    assert net["name"] == "nnunet"
    assert net["network_class_name"] == "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    assert net["_kw_requires_import"] == ["conv_op", "norm_op", "dropout_op", "nonlin"]
    assert net["arch_kwargs"] == cfg["architecture"]["arch_kwargs"]  # nnU-Net's, in its own axis order
    assert net["arch_kwargs"]["conv_op"] == "torch.nn.modules.conv.Conv3d"
    assert net["input_axes"] == [0, 2, 1] and net["deep_supervision"] is True  # transpose_forward [2, 0, 1]
    assert plan["preset"] == preset and plan["gpu_memory_gb"] == RESENC_PRESETS[preset].gpu_memory_gb
    assert plan["nnunet_planner"] == {"planner": RESENC_PRESETS[preset].planner, "configuration": "3d_fullres",
                                      "transpose_forward": [2, 0, 1]}
    assert plan["training"]["deep_supervision"] == {"weights": "nnunet"}
    assert plan["device_profile"] == device
    settings = parse_plan_settings(json.loads(json.dumps(plan)))  # the gate, on the plan as plan.json holds it
    assert settings.patch_size == tuple(plan["patch_size"]) and settings.network.name == "nnunet"


def test_make_plan_resenc_2d_and_its_guards():
    fx = fixture("Dataset902_SyntheticThickMR")
    fp = focusseg_fingerprint(fx)
    plan = make_plan(fp, device="cpu", preset="resenc-m", configuration="2d")
    cfg = fx["plans"]["resenc-m"]["configurations"]["2d"]
    assert plan["configuration"] == "2d" and plan["slice_axis"] == 2
    assert plan["patch_size"] == cfg["patch_size"][::-1] and plan["batch_size"] == cfg["batch_size"]
    assert plan["network"]["arch_kwargs"] == cfg["architecture"]["arch_kwargs"]
    assert plan["network"]["input_axes"] == [1, 0]
    assert plan["inference"]["mirror_axes"] == [0, 1]
    parse_plan_settings(plan)
    plan3d = make_plan(fp, device="cpu", preset="resenc-m")
    with pytest.raises(PlanError, match="its 2d configuration is planned from the fingerprint"):
        plan_configuration(plan3d, {"configuration": "2d"})
    assert plan_configuration(plan3d, {"batch_size": 3})["batch_size"] == 3


def test_presets_are_known_and_budgeted():
    assert {"resenc-m", "resenc-l", "resenc-xl"} <= set(PRESET_NAMES)
    assert gpu_budget(None, "resenc-l", "cuda") == (24.0, "resenc-l", None)
    assert gpu_budget(80.0, "resenc-xl", "cuda")[0] == 40.0
    with pytest.raises(PlanError, match="more than the 16 GB card"):
        make_plan(focusseg_fingerprint(fixture("Dataset105_SpleenCase8")), device="cuda", preset="resenc-l",
                  gpu_memory_gb=16.0)
    with pytest.raises(PlanError, match="not one of"):
        plan_resenc([[1.0, 1.0, 1.0]], [[10, 10, 10]], 1, 2, "resenc-xxl")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda fp: fp.pop("cases"), "per-case"),
    (lambda fp: fp["cases"][0].update(spacing=[float("nan"), 1.0, 1.0]), "finite"),
    (lambda fp: fp["cases"][0].update(spacing=[1.0, 1.0]), r"\(cases, 3\)"),
    (lambda fp: fp["cases"][0].update(shape_after_crop=[0, 10, 10]), "integers in"),
    (lambda fp: fp["cases"][0].update(shape_after_crop=[10**9, 10, 10]), "integers in"),
    (lambda fp: fp["cases"][0].update(shape_after_crop="big"), r"cases, 3|lists of 3"),
    (lambda fp: fp["cases"][0].pop("spacing"), "no 'spacing'"),
    (lambda fp: fp.update(n_cases=0), "positive integer"),
    (lambda fp: fp.update(labels={}), "labels"),
])
def test_malformed_fingerprint_is_one_plan_error(edit, message):
    fp = focusseg_fingerprint(fixture("Dataset105_SpleenCase8"))
    edit(fp)
    with pytest.raises(PlanError, match=message):
        make_plan(fp, preset="resenc-m")


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED / "Dataset105_SpleenCase8").is_dir(), reason="needs ../shared/data")
def test_focusseg_fingerprint_of_shared_data_gives_nnunets_plan():
    """focusseg's own fingerprint of the shared spleen case (one small volume) plans what nnU-Net planned."""
    from focusseg.planning.fingerprint import compute_fingerprint

    fp = compute_fingerprint(SHARED / "Dataset105_SpleenCase8", workers=1, progress=False)
    fx = fixture("Dataset105_SpleenCase8")
    for preset in RESENC_PRESETS:
        for configuration in ("3d_fullres", "2d"):
            cfg = fx["plans"][preset]["configurations"][configuration]
            got = focusseg_resenc(fp, preset, configuration)
            order = focusseg_axes(fx["plans"][preset]["transpose_forward"], len(cfg["patch_size"]))
            assert got["patch_size"] == [cfg["patch_size"][i] for i in order]
            assert got["batch_size"] == cfg["batch_size"]


@pytest.mark.parametrize("configuration", ["3d", "2d"])
def test_plan_builds_nnunets_network_in_focussegs_axis_order(configuration: str):
    """The plan's network spec builds through focusseg's "nnunet" network (on the meta device: no memory) and maps
    a patch in focusseg's axis order to logits of the same shape, the deep-supervision heads in training mode."""
    pytest.importorskip("dynamic_network_architectures")
    import torch

    from focusseg.nets.from_plan import build_network_from_plan

    fx = fixture("Dataset901_SyntheticLargeCT")
    plan = make_plan(focusseg_fingerprint(fx), preset="resenc-m", configuration=configuration)
    with torch.device("meta"):
        net = build_network_from_plan(plan)
        x = torch.empty(1, len(plan["channel_names"]), *plan["patch_size"])
        net.train()
        outs = net(x)
        net.eval()
        out = net(x)
    n_stages = plan["network"]["arch_kwargs"]["n_stages"]
    assert isinstance(outs, (list, tuple)) and len(outs) == n_stages - 1
    assert tuple(out.shape) == (1, plan["n_classes"], *plan["patch_size"])
    assert tuple(outs[0].shape) == tuple(out.shape)
