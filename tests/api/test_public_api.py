"""The public API: ``import focusseg`` stays light, ``__all__`` is complete and documented, and a fold trains,
predicts and evaluates through ``focusseg.<public name>`` alone (this file imports nothing private: checked)."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from focusseg_testdata import write_tiny_dataset

import focusseg

REQUIRED = {"check", "plan", "train", "crossval", "Predictor", "evaluate", "load_plugins", "register",
            "FocussegError", "UsageError", "MissingFileError", "PlanError", "CheckpointError", "MissingPluginError"}
TINY = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 2, "iterations_per_epoch": 2, "augmentation": "light", "amp": "none"},
        "inference": {"mirror_axes": []}}


def test_import_focusseg_is_light():
    code = ("import sys, focusseg\nfrom focusseg import __version__\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nprint(__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == focusseg.__version__


def test_all_is_complete_and_resolves():
    assert REQUIRED <= set(focusseg.__all__)
    for name in focusseg.__all__:
        assert getattr(focusseg, name) is not None, name
    with pytest.raises(AttributeError):
        focusseg.not_a_public_name  # noqa: B018


def _needs(fn, skip_first: bool) -> tuple[bool, bool]:
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL,)]
    if skip_first:
        params = params[1:]
    returns = sig.return_annotation not in (inspect.Signature.empty, None, "None")
    return bool(params), returns


def _check_doc(qualname: str, fn, skip_first: bool, problems: list[str]) -> None:
    doc = inspect.getdoc(fn) or ""
    if not doc:
        problems.append(f"{qualname}: no docstring")
        return
    args, returns = _needs(fn, skip_first)
    if args and "Args:" not in doc:
        problems.append(f"{qualname}: no Args section")
    if returns and "Returns:" not in doc:
        problems.append(f"{qualname}: no Returns section")


def test_every_public_name_is_documented():
    problems: list[str] = []
    for name in focusseg.__all__:
        obj = getattr(focusseg, name)
        if name == "__version__":
            continue
        if inspect.isclass(obj):
            if not inspect.getdoc(obj):
                problems.append(f"{name}: no docstring")
            if issubclass(obj, BaseException):
                continue
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr != "__init__":
                    continue
                if isinstance(member, property):
                    if not inspect.getdoc(member):
                        problems.append(f"{name}.{attr}: no docstring")
                    continue
                if isinstance(member, classmethod):
                    _check_doc(f"{name}.{attr}", member.__func__, True, problems)
                elif inspect.isfunction(member) and not (attr == "__init__" and "Args:" in (obj.__doc__ or "")):
                    _check_doc(f"{name}.{attr}", member, True, problems)
        elif callable(obj):
            _check_doc(name, obj, False, problems)
    assert problems == []


def test_this_file_imports_nothing_private():
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("focusseg"):
            assert node.module == "focusseg_testdata", f"line {node.lineno}: from {node.module} import ..."
        if isinstance(node, ast.Import):
            assert all(a.name == "focusseg" or not a.name.startswith("focusseg") for a in node.names), node.lineno
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "focusseg":
            assert node.attr in {*focusseg.__all__, "__all__", "not_a_public_name"}, f"focusseg.{node.attr}"


@pytest.mark.usefixtures("one_thread")
def test_train_predict_evaluate_through_the_public_api(tmp_path: Path):
    data = write_tiny_dataset(tmp_path / "Dataset001_Tiny")
    assert focusseg.check(data).ok
    planned = focusseg.plan(data, overrides=TINY, device="cpu")
    assert planned["patch_size"] == [16, 16, 16] and "plugins" not in planned

    run = focusseg.train(data, tmp_path / "run", fold=0, overrides=TINY, device="cpu")
    assert run.path == tmp_path / "run" and run.plan["network"]["name"] == "unet"
    assert run.summary["epochs"] == 2 and run.metrics is not None

    predictor = focusseg.Predictor.load(run.path, device="cpu")
    image = sorted((data / "imagesTr").glob("*_0000.nii.gz"))[0]
    labels = predictor.predict(image)
    assert labels.shape == (20, 24, 16) and labels.dtype.kind in "iu"
    labels2, probs = predictor.predict(image, probabilities=True)
    assert np.array_equal(labels, labels2) and probs.shape == (3, 20, 24, 16)
    assert np.allclose(probs.sum(0), 1.0, atol=1e-3)

    preds = tmp_path / "preds"
    written = predictor.predict_folder(data / "imagesTr", preds)
    assert len(written) == 6
    summary = focusseg.evaluate(preds, data / "labelsTr", tmp_path / "eval", workers=1)
    assert "overall" in summary or summary

    with pytest.raises(focusseg.MissingFileError):
        focusseg.Predictor.load(tmp_path / "nothing")
    nnunet = tmp_path / "nnunet_model"
    nnunet.mkdir()
    (nnunet / "plans.json").write_text("{}")
    (nnunet / "dataset.json").write_text("{}")
    with pytest.raises(focusseg.UsageError, match="nnU-Net"):
        focusseg.Predictor.load(nnunet)
    with pytest.raises(focusseg.UsageError, match="time-budget"):
        focusseg.train(data, tmp_path / "run2", time_budget=0)
