"""Corpus entries for nnU-Net v2 model folders someone else made: ``focusseg predict NNUNET_FOLDER IN OUT`` with a
checkpoint or ``postprocessing.pkl`` that carries a pickle payload, plans naming code to import, a cascade, a NaN
spacing, a huge patch. Each is refused with one line naming the file; a payload never runs (marker file absent).
The model folders are built by ``tests/nnunet/nnunet_fixtures.py`` (needs dynamic-network-architectures, which
``make`` installs)."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import torch

from .conftest import Payload, Sandbox
from .corpus import Entry, case, marker_absent


def _fixtures():
    spec = importlib.util.spec_from_file_location(
        "nnunet_fixtures_for_corpus", Path(__file__).resolve().parents[1] / "nnunet" / "nnunet_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _model(sb: Sandbox) -> Path:
    folder, _ = _fixtures().write_model_folder(sb.root / "in" / "nnunet_model")
    return folder


def _edit(folder: Path, edit) -> None:
    _fixtures().edit_plans(folder, edit)


def _arch(d: dict) -> dict:
    return d["configurations"]["3d_fullres"]["architecture"]


def _predict(sb: Sandbox, folder: Path, culprit: str, **kw) -> Entry:
    return Entry(["predict", folder, sb.test_images(), sb.out, "--device", "cpu"], culprit, max_rss_mb=400, **kw)


@case("predict")
def nnunet_checkpoint_pickle_payload(sb: Sandbox) -> Entry:
    folder = _model(sb)
    marker = sb.root / "pwned_nnunet_checkpoint"
    torch.save({"network_weights": {}, "trainer_name": Payload(marker)}, folder / "fold_0" / "checkpoint_final.pth")
    return _predict(sb, folder, "checkpoint_final.pth", after=marker_absent(marker))


@case("predict")
def nnunet_postprocessing_pkl_payload(sb: Sandbox) -> Entry:
    folder = _model(sb)
    marker = sb.root / "pwned_nnunet_postprocessing"
    (folder / "postprocessing.pkl").write_bytes(pickle.dumps([Payload(marker)]))
    return _predict(sb, folder, "postprocessing.pkl", after=marker_absent(marker))


@case("predict")
def nnunet_nonlin_names_os_system(sb: Sandbox) -> Entry:
    folder = _model(sb)
    _edit(folder, lambda d: _arch(d)["arch_kwargs"].update(nonlin="os.system"))
    return _predict(sb, folder, "plans.json")


@case("predict")
def nnunet_unknown_network_class(sb: Sandbox) -> Entry:
    folder = _model(sb)
    _edit(folder, lambda d: _arch(d).update(network_class_name="builtins.eval"))
    return _predict(sb, folder, "plans.json")


@case("predict")
def nnunet_cascade_configuration(sb: Sandbox) -> Entry:
    folder = _model(sb)
    _edit(folder, lambda d: d["configurations"]["3d_fullres"].update(previous_stage="3d_lowres"))
    return _predict(sb, folder, "plans.json")


@case("predict")
def nnunet_nan_spacing(sb: Sandbox) -> Entry:
    folder = _model(sb)
    text = (folder / "plans.json").read_text().replace('"spacing": [\n        2.0', '"spacing": [\n        NaN')
    assert "NaN" in text
    (folder / "plans.json").write_text(text)
    return _predict(sb, folder, "plans.json")


@case("predict")
def nnunet_huge_patch(sb: Sandbox) -> Entry:
    folder = _model(sb)
    _edit(folder, lambda d: d["configurations"]["3d_fullres"].update(patch_size=[2048, 2048, 2048]))
    return _predict(sb, folder, "plans.json")
