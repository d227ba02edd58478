"""The example plugin (examples/focusseg-example-plugin), installed with pip, through the real entry-point
mechanism: ``focusseg plugins`` lists it, its recipe trains (its network and loss with Focused Practice and CBS)
and predicts; without it, predicting the run names the missing plugin in one line. A plan, a checkpoint or a run
folder that names a module imports nothing (a marker module that writes a file when imported stays unimported).

The plugin is installed with ``pip install --target`` into a temporary folder put on the subprocesses' path (the
same dist-info and entry points as an install into the environment, without changing the environment other tests
run in: an installed plugin adds names to the registries every process sees)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from focusseg_testdata import write_tiny_dataset

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "focusseg-example-plugin"
DIST = "focusseg-example-plugin"
TINY_SET = ["--set", "patch_size=[16,16,16]", "--set", "batch_size=2", "--set", "training.max_epochs=2",
            "--set", "training.iterations_per_epoch=2", "--set", "training.augmentation=\"light\"",
            "--set", "training.amp=\"none\"", "--set", "inference.mirror_axes=[]"]


def _installed() -> bool:
    try:
        importlib.metadata.distribution(DIST)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """Where the plugin is installed (None: installed in this environment already)."""
    if _installed():
        return None
    work = tmp_path_factory.mktemp("plugin")
    source = work / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(source)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return target


def _env(*paths: Path | None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="250", NO_COLOR="1")
    extra = [str(p) for p in paths if p is not None]
    if env.get("PYTHONPATH"):
        extra.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(extra)
    return env


def _focusseg(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "focusseg", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def _one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode not in (0, 3), out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_focusseg_plugins_lists_the_example(site: Path | None):
    out = _focusseg(["plugins"], _env(site))
    assert out.returncode == 0, out.stderr
    for word in (DIST, "0.1.0", "entry point", "focal_tversky", "tiny_resunet", "example-focal-tversky"):
        assert word in out.stdout, (word, out.stdout)


@pytest.fixture(scope="module")
def trained(site: Path | None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("trained")
    data = write_tiny_dataset(root / "Dataset001_Tiny")
    run = root / "run"
    out = _focusseg(["train", str(data), "--out", str(run), "--recipe", "example-focal-tversky", "--device", "cpu",
                     "--no-progress", *TINY_SET], _env(site))
    assert out.returncode == 0, out.stderr[-3000:]
    return data, run


def test_the_example_recipe_trains_and_predicts(site: Path | None, trained: tuple[Path, Path], tmp_path: Path):
    data, run = trained
    plan = json.loads((run / "plan.json").read_text())
    assert plan["network"]["name"] == "tiny_resunet"
    assert plan["training"]["sampler"]["name"] == "focused_practice"
    assert plan["training"]["class_weighter"]["name"] == "cbs"
    assert "focal_tversky" in plan["training"]["loss"]
    assert plan["plugins"] == [{"name": DIST, "version": "0.1.0", "parts": [
        "loss:focal_tversky", "network:tiny_resunet", "recipe:example-focal-tversky"]}]
    out = _focusseg(["predict", str(run), str(data / "imagesTr"), str(tmp_path / "preds"), "--device", "cpu"],
                    _env(site))
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list((tmp_path / "preds").glob("*.nii.gz"))) == 6


@pytest.mark.skipif(_installed(), reason="the plugin is installed in this environment: it cannot be made absent")
def test_without_the_plugin_predict_names_it_in_one_line(trained: tuple[Path, Path], tmp_path: Path):
    data, run = trained
    out = _focusseg(["predict", str(run), str(data / "imagesTr"), str(tmp_path / "preds"), "--device", "cpu"],
                    _env())
    line = _one_error_line(out)
    assert DIST in line and "tiny_resunet" in line and "pip install" in line
    out = _focusseg(["train", str(data), "--out", str(tmp_path / "again"), "--plan", str(run / "plan.json"),
                     "--device", "cpu", "--no-progress"], _env())
    line = _one_error_line(out)
    assert DIST in line and "pip install" in line


def _marker_module(folder: Path, marker: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "h5_marker_plugin.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    return folder


def test_a_plan_or_checkpoint_naming_a_module_imports_nothing(trained: tuple[Path, Path], tmp_path: Path):
    data, run = trained
    marker = tmp_path / "imported.txt"
    path = _marker_module(tmp_path / "mods", marker)
    record = [{"name": "h5_marker_plugin", "version": None, "parts": ["network:h5_marker_plugin"]}]

    # a run folder whose checkpoint's plan names the module (as network and as plugin)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for ckpt in copy.glob("checkpoint_*.pt"):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        state["plan"]["network"] = {"name": "h5_marker_plugin"}
        state["plan"]["plugins"] = record
        torch.save(state, ckpt)
    out = _focusseg(["predict", str(copy), str(data / "imagesTr"), str(tmp_path / "preds"), "--device", "cpu"],
                    _env(path))
    assert "h5_marker_plugin" in _one_error_line(out)
    assert not marker.exists()

    # a plan file that names it, trained
    plan = json.loads((run / "plan.json").read_text())
    plan["network"] = {"name": "h5_marker_plugin"}
    plan["plugins"] = record
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = _focusseg(["train", str(data), "--out", str(tmp_path / "new"), "--plan", str(tmp_path / "plan.json"),
                     "--device", "cpu", "--no-progress"], _env(path))
    assert "h5_marker_plugin" in _one_error_line(out)
    assert not marker.exists()

    # the module named explicitly is imported: the marker works
    out = _focusseg(["--plugin", "h5_marker_plugin", "plugins"], _env(path))
    assert out.returncode == 0, out.stderr
    assert marker.exists()


def test_the_api_quickstart_runs(tmp_path: Path):
    data = write_tiny_dataset(tmp_path / "Dataset001_Tiny")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "api_quickstart.py"), str(data),
                          str(tmp_path / "work"), "--tiny"], capture_output=True, text=True, env=_env(),
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "trained" in out.stdout and (tmp_path / "work" / "metrics" / "summary.json").is_file()
    assert len(list((tmp_path / "work" / "predictions").glob("*.nii.gz"))) == 6
