"""ONNX and TorchScript export (issue 16 part 3): for EVERY registered network (tiny configurations), ONNX
Runtime's logits equal PyTorch's to 1e-4 (max abs) on a patch the exporter did not check, and TorchScript's too;
a network that cannot be exported says why (:class:`~focusseg.export.NotExportable`)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import STEPS, make_tiny_crossval, make_tiny_run
from nets.nets_helpers import TINY

TOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
#: Networks expected to raise NotExportable with the default (auto) ONNX exporter: none (with onnxscript).
EXPECTED_NOT_EXPORTABLE: dict[str, str] = {}


def _patch(name: str) -> tuple[int, ...]:
    """The tiny 3D patch; stunet_h at 16^3: its 5x-deeper stages give logits ~25 whose float32 rounding alone
    (PyTorch float32 vs float64) reaches 9e-5 at 8x16x24, so 1e-4 would test rounding, not the export."""
    return (16, 16, 16) if name == "stunet_h" else TINY[name][2]


def _network(name: str) -> torch.nn.Module:
    from focusseg.nets import build_network

    torch.manual_seed(0)
    return build_network(name, 1, 3, spatial_dims=3, patch_size=_patch(name), **TINY[name][0]).eval()


def _tolerance(name: str, net: torch.nn.Module, x: torch.Tensor) -> float:
    """1e-4; for stunet_h (logits ~30 through a very deep network) the larger of that and 4x PyTorch's own float32
    rounding (float32 vs float64 on the same input): the export must be as exact as float32 itself."""
    if name != "stunet_h":
        return TOL
    import copy

    with torch.no_grad():
        own = float((net(x).double() - copy.deepcopy(net).double()(x.double())).abs().max())
    return max(TOL, 4 * own)


def _fresh_patch(name: str, batch: int = 2) -> torch.Tensor:
    return torch.randn((batch, 1, *_patch(name)), generator=torch.Generator().manual_seed(123))


def test_every_registered_network_is_covered() -> None:
    from focusseg.nets import network_names

    assert sorted(TINY) == network_names()


@pytest.mark.parametrize("name", sorted(TINY))
def test_onnx_runtime_equals_pytorch(name: str) -> None:
    pytest.importorskip("onnxruntime", reason="ONNX Runtime checks the export: pip install '.[export]'")
    pytest.importorskip("onnx", reason="pip install '.[export]'")
    from focusseg.export import NotExportable, network_to_onnx
    from focusseg.export.graph import onnx_runtime_logits

    net = _network(name)
    if name in EXPECTED_NOT_EXPORTABLE:
        with pytest.raises(NotExportable, match=EXPECTED_NOT_EXPORTABLE[name]):
            network_to_onnx(net, 1, _patch(name), name)
        return
    data, info = network_to_onnx(net, 1, _patch(name), name)
    assert info["exporter"] in ("legacy", "dynamo") and info["opset"] >= 17
    assert info["onnx_runtime_max_abs_diff"] <= TOL + 1e-5 * 40  # the exporter's own check (logits < 40)
    x = _fresh_patch(name)  # batch 2: the batch axis is dynamic
    with torch.no_grad():
        ref = net(x).numpy()
    out = onnx_runtime_logits(data, x.numpy())
    assert out.shape == ref.shape == (2, 3, *_patch(name))
    assert float(np.abs(out - ref).max()) <= _tolerance(name, net, x)


@pytest.mark.parametrize("name", sorted(TINY))
def test_torchscript_equals_pytorch(name: str) -> None:
    from focusseg.export import network_to_torchscript

    net = _network(name)
    data, info = network_to_torchscript(net, 1, _patch(name), name)
    loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    x = _fresh_patch(name)
    with torch.no_grad():
        assert float((loaded(x) - net(x)).abs().max()) <= TOL
    assert info["max_abs_diff"] <= TOL


def test_lambda3d_with_the_legacy_exporter_is_not_exportable() -> None:
    """The legacy exporter writes lambda3d's ``movedim(1, -1)`` as a Transpose with a negative perm, which ONNX
    Runtime rejects: a NotExportable that says so (auto falls back to the dynamo exporter, tested above)."""
    pytest.importorskip("onnxruntime", reason="pip install '.[export]'")
    from focusseg.export import NotExportable, network_to_onnx

    with pytest.raises(NotExportable) as exc:
        network_to_onnx(_network("lambda3d"), 1, _patch("lambda3d"), "lambda3d", exporter="legacy")
    assert exc.value.network == "lambda3d" and exc.value.format == "onnx"
    assert "ONNX Runtime refuses the graph" in exc.value.reason and "perm" in exc.value.reason
    assert "\n" not in exc.value.one_line()


def test_a_graph_that_differs_is_not_exportable() -> None:
    """The parity check is real: with a tolerance below float32 rounding the export is refused, naming it."""
    pytest.importorskip("onnxruntime", reason="pip install '.[export]'")
    from focusseg.export import NotExportable, network_to_onnx

    with pytest.raises(NotExportable, match=r"differs from PyTorch by .* \(> 1e-12\)"):
        network_to_onnx(_network("unet"), 1, _patch("unet"), "unet", exporter="legacy", tolerance=1e-12,
                        relative_tolerance=0.0)


def test_cli_onnx_export_of_a_crossval(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="pip install '.[export]'")
    from focusseg.cli import main
    from focusseg.export.graph import onnx_runtime_logits
    from focusseg.inference.predictor import Predictor

    cv = make_tiny_crossval(tmp_path / "cv")
    out = tmp_path / "cv_onnx.zip"
    assert main(["export", str(cv), "--out", str(out), "--format", "onnx"]) == 0
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["fold_0.onnx", "fold_1.onnx", "spec.json"]
        spec = json.loads(zf.read("spec.json"))
        graphs = {n: zf.read(n) for n in ("fold_0.onnx", "fold_1.onnx")}
    assert spec["format"] == "onnx" and [m["weight"] for m in spec["members"]] == [0.5, 0.5]
    assert spec["input"]["patch_size"] == [16, 16, 16] and spec["input"]["channels"] == 1
    assert spec["activation"] == {"name": "softmax", "axis": 1} and spec["tta"]["mirror_axes"] == [0]
    assert spec["sliding_window"]["overlap"] == 0.5 and spec["preprocessing"]["target_spacing"] == [1.5, 1.0, 2.0]
    assert spec["labels"] == {"background": 0, "sphere": 1, "cube": 2} and spec["postprocessing"] == STEPS[:1]
    x = torch.randn((1, 1, 16, 16, 16), generator=torch.Generator().manual_seed(7))
    for k in (0, 1):
        net = Predictor.from_run(cv / f"fold_{k}", device="cpu").network
        with torch.no_grad():
            ref = net(x).numpy()
        assert float(np.abs(onnx_runtime_logits(graphs[f"fold_{k}.onnx"], x.numpy()) - ref).max()) <= TOL


def test_cli_torchscript_export_of_a_run(tmp_path: Path) -> None:
    from focusseg.cli import main
    from focusseg.inference.predictor import Predictor

    run = make_tiny_run(tmp_path / "run")
    out = tmp_path / "ts.zip"
    assert main(["export", str(run), "--out", str(out), "--format", "torchscript", "--checkpoint", "best"]) == 0
    with zipfile.ZipFile(out) as zf:
        spec = json.loads(zf.read("spec.json"))
        loaded = torch.jit.load(io.BytesIO(zf.read("model.pt")), map_location="cpu")
    assert spec["format"] == "torchscript" and spec["members"][0]["file"] == "model.pt"
    assert spec["postprocessing"] == STEPS
    x = torch.randn((2, 1, 16, 16, 16), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), Predictor.from_run(run, device="cpu").network(x).numpy(),
                                   atol=TOL, rtol=0)
