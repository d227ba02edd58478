"""Export a run's (or every fold's) network as an ONNX or TorchScript graph, plus a JSON spec of what surrounds it.

One zip (written atomically at ``--out``) holds ``spec.json`` and one graph per member (``model`` for a run,
``fold_K`` per fold). The graph maps ``image (B, C, *patch)`` float32, normalised and resampled as the spec says,
to ``logits (B, K, *patch)``; everything around it (normalisation, resampling, Gaussian sliding window, mirrors,
activation, argmax, post-processing) is the consumer's, as the spec describes. The spec names the source folder
only, and absolute paths in the plans are reduced to base names (:func:`focusseg.export.bundle.portable`).

ONNX: the legacy exporter first (except for :data:`DYNAMO_FIRST`), then the dynamo exporter (needs
``onnxscript``); each graph is checked with ONNX Runtime against PyTorch on a seeded patch, within
:data:`ONNX_TOLERANCE` (+ :data:`RELATIVE_TOLERANCE` of the logits' magnitude), else :class:`NotExportable`.
TorchScript: ``torch.jit.trace`` in eval mode, checked the same way. Neither graph keeps the exporter's records of
source files (absolute paths of the exporting machine). Spec fields and exporter limits: ``docs/export.md``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from focusseg import __version__
from focusseg.errors import FocussegError, UsageError, one_line
from focusseg.export.bundle import load_source, portable
from focusseg.io.atomic import atomic_path
from focusseg.nets.from_plan import build_inference_module
from focusseg.settings import inference_settings, network_settings

#: ``focusseg export --format``: a bundle (:mod:`focusseg.export.bundle`), a graph (this module) or an nnU-Net v2
#: model folder (:mod:`focusseg.export.nnunet`).
FORMATS = ("bundle", "onnx", "torchscript", "nnunet")
EXPORTERS = ("auto", "legacy", "dynamo")
#: The export check: ``max |graph - PyTorch| <= ONNX_TOLERANCE + RELATIVE_TOLERANCE * max |PyTorch|`` on the
#: logits of the check patches. float32 rounding grows with the logits' magnitude and the network's depth (a deep
#: STU-Net with logits ~30 differs from its own float64 result by ~1e-4), hence the small relative term.
ONNX_TOLERANCE = 1e-4
RELATIVE_TOLERANCE = 1e-5
#: Networks the legacy exporter gets wrong, so ``auto`` goes to the dynamo exporter first (module docstring).
DYNAMO_FIRST = frozenset({"lambda3d"})
SPEC = "spec.json"
SPEC_VERSION = 1


class NotExportable(FocussegError):
    """A network that cannot be exported in the asked format (``reason`` says why: each exporter's failure, or
    a graph whose outputs differ from PyTorch's by more than the tolerance)."""

    def __init__(self, network: str, fmt: str, reason: str, hint: str | None = None) -> None:
        self.network, self.format, self.reason = network, fmt, reason
        super().__init__(f"network {network!r} cannot be exported as {fmt}: {reason}", None, hint)


def _check_input(in_channels: int, patch: tuple[int, ...], seed: int = 0, batch: int = 1) -> torch.Tensor:
    """The seeded random patch every graph is checked on (N(0, 1): what z-scored images look like)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, in_channels, *patch), generator=gen)


def _eager(network: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return network(x).float().numpy()


def _onnx_bytes(network: nn.Module, x: torch.Tensor, exporter: str, opset: int | None) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(network, (x,), buf, dynamo=False, opset_version=opset or 17, input_names=["image"],
                              output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
            return buf.getvalue()
        import contextlib
        import logging

        quiet = logging.getLogger("torch.onnx")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                program = torch.onnx.export(network, (x,), dynamo=True, opset_version=opset or 18, verbose=False,
                                            input_names=["image"], output_names=["logits"],
                                            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
            return program.model_proto.SerializeToString()
        finally:
            quiet.setLevel(level)


#: ONNX node metadata that records the exporting machine's source files (the dynamo exporter's stack traces).
SOURCE_METADATA = ("pkg.torch.onnx.stack_trace",)


def onnx_without_sources(model: bytes) -> bytes:
    """The ONNX graph without the records of where it was exported: node doc strings (the legacy exporter's source
    lines) and :data:`SOURCE_METADATA` (the dynamo exporter's stack traces, with the absolute paths of the
    exporting machine's Python files), in the main graph, its subgraphs and its functions. Computation unchanged."""
    import onnx

    proto = onnx.load_from_string(model)
    graphs = [proto.graph]
    node_lists = [f.node for f in proto.functions]
    while graphs:
        graph = graphs.pop()
        graph.doc_string = ""
        node_lists.append(graph.node)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
    for nodes in node_lists:
        for node in nodes:
            node.doc_string = ""
            props = getattr(node, "metadata_props", None)
            if props is not None:
                keep = [(p.key, p.value) for p in props if p.key not in SOURCE_METADATA]
                del props[:]
                for key, value in keep:
                    props.add(key=key, value=value)
    proto.doc_string = ""
    return proto.SerializeToString()


def torchscript_without_sources(archive: bytes) -> bytes:
    """The TorchScript archive without its ``*.debug_pkl`` records (source ranges naming the exporting machine's
    Python files, the caller's included); ``torch.jit.load`` needs none of them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as zin, zipfile.ZipFile(buf, "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith(".debug_pkl"):
                zout.writestr(info, zin.read(info))
    return buf.getvalue()


def onnx_runtime_logits(model: bytes, x: np.ndarray) -> np.ndarray:
    """Run an ONNX graph (``image`` -> ``logits``) with ONNX Runtime on the CPU (one thread, deterministic)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"image": x.astype(np.float32)})[0]


def network_to_onnx(network: nn.Module, in_channels: int, patch: tuple[int, ...] | list[int], name: str = "network",
                    exporter: str = "auto", opset: int | None = None,
                    tolerance: float = ONNX_TOLERANCE,
                    relative_tolerance: float = RELATIVE_TOLERANCE) -> tuple[bytes, dict[str, Any]]:
    """``(ONNX bytes, info)`` of ``network`` (eval mode, CPU) for input ``(B, in_channels, *patch)`` with a
    dynamic batch axis. ``name`` is the registry name (``auto`` tries the dynamo exporter first for
    :data:`DYNAMO_FIRST`). ``info``: exporter, opset, onnx_runtime_max_abs_diff (batch 1 and 2; None when
    onnxruntime is not installed, then the graph is unverified).

    Raises:
        NotExportable: no exporter produced a graph that loads in ONNX Runtime and matches PyTorch within
            ``tolerance + relative_tolerance x max |logits|`` (the reason of each attempt).
    """
    if exporter not in EXPORTERS:
        raise UsageError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    import onnx  # every exporter needs it: a missing package is named, not hidden among their failures

    try:
        import onnxruntime  # noqa: F401

        verify = True
    except ImportError:
        verify = False
    network = network.eval().to("cpu")
    patch = tuple(int(p) for p in patch)
    x1, x2 = _check_input(in_channels, patch, 0, 1), _check_input(in_channels, patch, 1, 2)
    ref1, ref2 = _eager(network, x1), _eager(network, x2)
    if exporter == "auto":
        attempts = ["dynamo", "legacy"] if name in DYNAMO_FIRST else ["legacy", "dynamo"]
    else:
        attempts = [exporter]
    bound = tolerance + relative_tolerance * max(float(np.abs(ref1).max()), float(np.abs(ref2).max()))
    reasons = []
    for how in attempts:
        try:
            data = _onnx_bytes(network, x1, how, opset)
        except Exception as exc:  # exporters raise many types (torch.onnx errors, unsupported op, export guards)
            reasons.append(f"{how} exporter: {type(exc).__name__}: {one_line(exc)[:300]}")
            continue
        data = onnx_without_sources(data)  # no path of the exporting machine in the graph

        used_opset = max((o.version for o in onnx.load_from_string(data).opset_import if o.domain in ("", "ai.onnx")),
                         default=None)
        info: dict[str, Any] = {"exporter": how, "opset": used_opset, "onnx_runtime_max_abs_diff": None}
        if not verify:
            return data, info
        try:
            diff = max(float(np.abs(onnx_runtime_logits(data, x1.numpy()) - ref1).max()),
                       float(np.abs(onnx_runtime_logits(data, x2.numpy()) - ref2).max()))
        except Exception as exc:  # onnxruntime's own error types: the graph does not load or run
            reasons.append(f"{how} exporter: ONNX Runtime refuses the graph ({type(exc).__name__}: "
                           f"{one_line(exc)[:300]})")
            continue
        if not diff <= bound:
            reasons.append(f"{how} exporter: ONNX Runtime differs from PyTorch by {diff:.3g} (> {bound:.3g})")
            continue
        info["onnx_runtime_max_abs_diff"] = diff
        return data, info
    hint = None
    if exporter in ("auto", "dynamo"):
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            hint = "the dynamo exporter needs onnxscript: pip install onnxscript"
    raise NotExportable(name, "onnx", "; ".join(reasons), hint)


def network_to_torchscript(network: nn.Module, in_channels: int, patch: tuple[int, ...] | list[int],
                           name: str = "network", tolerance: float = ONNX_TOLERANCE) -> tuple[bytes, dict[str, Any]]:
    """``(TorchScript bytes, info)``: ``torch.jit.trace`` of ``network`` at ``(1, in_channels, *patch)``, reloaded
    and checked against the eager network on batch 1 and 2 (``info["max_abs_diff"]``).

    Raises:
        NotExportable: tracing fails, or the traced graph differs by more than ``tolerance``.
    """
    network = network.eval().to("cpu")
    patch = tuple(int(p) for p in patch)
    x1, x2 = _check_input(in_channels, patch, 0, 1), _check_input(in_channels, patch, 1, 2)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(network, (x1,), check_trace=False)
            buf = io.BytesIO()
            torch.jit.save(traced, buf)
            data = torchscript_without_sources(buf.getvalue())  # no path of the exporting machine
            loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
        diff = max(float(np.abs(_eager(loaded, x1) - _eager(network, x1)).max()),
                   float(np.abs(_eager(loaded, x2) - _eager(network, x2)).max()))
    except Exception as exc:  # tracing raises many types (data-dependent control flow, unsupported ops)
        raise NotExportable(name, "torchscript", f"torch.jit.trace fails ({type(exc).__name__}: "
                                                 f"{one_line(exc)[:300]})") from exc
    if not diff <= tolerance:
        raise NotExportable(name, "torchscript", f"the traced graph differs from PyTorch by {diff:.3g} "
                                                 f"(> {tolerance}): the network's path depends on its input")
    return data, {"exporter": "torch.jit.trace", "max_abs_diff": diff}


def graph_spec(plan: dict[str, Any], postprocessing: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON spec of everything around the graph (module docstring), from the plan."""
    inf = inference_settings(plan)
    overlap = 0.5 if inf.overlap is None else inf.overlap  # the planner's value where a plan sets none
    regions = plan.get("regions")
    n_dims = len(plan["patch_size"])
    return {
        "input": {"name": "image", "layout": ["batch", "channel", *"xyz"[:n_dims]], "dtype": "float32",
                  "patch_size": list(plan["patch_size"]), "channels": len(plan["channel_names"])},
        "output": {"name": "logits", "layout": ["batch", "class", *"xyz"[:n_dims]],
                   "channels": len(regions) if regions else int(plan["n_classes"])},
        "channel_names": plan["channel_names"], "labels": plan["labels"], "n_classes": plan["n_classes"],
        "ignore_label": plan.get("ignore_label"), "regions": regions,
        "preprocessing": {
            "crop": "to the bounding box of voxels non-zero in any channel; predictions outside it are background",
            "normalization": plan["normalization"], "target_spacing": plan["target_spacing"],
            "resample_order_image": plan.get("resample_order_image", 3),
            "resample_separate_z": plan.get("resample_separate_z"),
            "resample_back": "probabilities linearly to the cropped original grid, then argmax"},
        "sliding_window": {"patch_size": list(plan["patch_size"]), "overlap": overlap,
                           "gaussian_sigma_scale": 1.0 / 8, "batch_size": inf.batch_size,
                           "weighting": "Gaussian importance map, sigma = patch * sigma_scale (nnU-Net)"},
        "activation": ({"name": "sigmoid", "per": "region"} if regions else {"name": "softmax", "axis": 1}),
        "tta": {"mirror_axes": list(inf.mirror_axes), "spatial_axes_from": 0,
                "average": "logits over all 2^n mirror subsets (identity included), before the activation",
                "noise_passes": inf.noise_passes},
        "postprocessing": postprocessing,
    }


def export_graphs(source: str | Path, out: str | Path, fmt: str = "onnx", checkpoint: str = "best",
                  exporter: str = "auto") -> dict[str, Any]:
    """Export every member of a run / cross-validation folder as ``fmt`` (onnx or torchscript) into the zip
    ``out`` (module docstring), atomically. Returns the spec written."""
    if fmt not in ("onnx", "torchscript"):
        raise UsageError(f"graph format must be onnx or torchscript, got {fmt!r}")
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise UsageError(f"the {fmt} export is a .zip file (graphs + {SPEC}), got --out {out}",
                         hint=f"e.g. --out model_{fmt}.zip")
    if out.is_dir():
        raise UsageError("--out is a folder; the export is one .zip file", out)
    src = load_source(source, checkpoint)
    files: dict[str, bytes] = {}
    members = []
    for m in src.members:
        plan = portable(m["plan"])  # no path of this machine in the spec
        net = build_inference_module(plan)
        net.load_state_dict(m["state_dict"])
        net_name = network_settings(plan).name
        args = (net, len(plan["channel_names"]), tuple(plan["patch_size"]), net_name)
        if fmt == "onnx":
            data, info = network_to_onnx(*args, exporter=exporter)
            file = f"{m['name']}.onnx"
        else:
            data, info = network_to_torchscript(*args)
            file = f"{m['name']}.pt"
        files[file] = data
        members.append({"name": m["name"], "file": file, "weight": m["weight"], "checkpoint": m["checkpoint"],
                        "network": plan["network"], "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                        **info})
    spec = {"format": fmt, "spec_version": SPEC_VERSION, "focusseg_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": {"kind": src.kind, "path": src.path.resolve().name, "checkpoint": checkpoint},
            "members": members,
            "ensemble": "weighted mean of the members' probabilities (after each member's activation)",
            **graph_spec(portable(src.members[0]["plan"]), src.postprocessing)}
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
            zf.writestr(SPEC, json.dumps(spec, indent=1, allow_nan=False) + "\n", compress_type=zipfile.ZIP_DEFLATED)
    return spec


__all__ = ["DYNAMO_FIRST", "EXPORTERS", "FORMATS", "NotExportable", "ONNX_TOLERANCE", "RELATIVE_TOLERANCE",
           "SOURCE_METADATA", "export_graphs", "graph_spec", "network_to_onnx", "network_to_torchscript",
           "onnx_runtime_logits", "onnx_without_sources", "torchscript_without_sources"]
