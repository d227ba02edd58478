"""Portable models: ``focusseg export RUN_OR_CV --out model.zip``.

* :mod:`focusseg.export.bundle`: a self-contained, checksummed zip (``manifest.json``, a ``plan.json`` and
  safetensors weights per member, the chosen post-processing) that ``focusseg predict model.zip IN OUT`` runs
  without the run folder, loading nothing that can execute code, within size bounds checked before anything is
  read (a zip bomb is refused), and carrying no absolute path of the exporting machine.
* :mod:`focusseg.export.graph`: the network(s) as ONNX (checked against ONNX Runtime) or TorchScript, with a
  JSON spec of everything around the network (normalisation, spacing, patch, sliding window, softmax, TTA).
"""

from focusseg.export.bundle import (
    BUNDLE_FORMAT_VERSION,
    ExportSource,
    load_bundle,
    load_source,
    portable,
    read_bundle,
    write_bundle,
)
from focusseg.export.graph import FORMATS, NotExportable, export_graphs, network_to_onnx, network_to_torchscript

__all__ = ["BUNDLE_FORMAT_VERSION", "FORMATS", "ExportSource", "NotExportable", "export_graphs", "load_bundle",
           "load_source", "network_to_onnx", "network_to_torchscript", "portable", "read_bundle",
           "write_bundle"]
