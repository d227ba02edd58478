"""The network's inference forward, prepared once per predictor: as it is, with faster kernels for its thin
convolutions, or compiled.

``inference.accelerate`` in the plan (or ``accelerate=`` of
:func:`~focusseg.inference.sliding_window.sliding_window_predict`) chooses:

- ``"none"``: the module itself.
- ``"thin"``: the module with its 3D convolutions of few output channels on faster CPU kernels
  (:func:`~focusseg.nets.layout.thin_inference`: channels-last 3D, and the stride-2 transposed ones as phase
  convolutions; parameters untouched). Outputs equal the plain ones to float rounding (about 1e-6 of the logits).
- ``"compile"``: ``torch.compile`` (inductor) with ``freezing`` on (weights as constants, which lets inductor
  pre-pack convolutions and fuse normalisation and activation into generated kernels). The sliding window pads
  its last window batch to the full size, so one graph (one window batch shape) serves every case. Compilation
  costs seconds to tens of seconds; inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``) shortens it in later
  processes. Outputs differ from the eager ones by float rounding and the kernels' summation order (up to 5e-3 on
  the logits of the MS benchmark's UNet, argmax 99.999 % equal).

Which one is faster depends on the network, the batch, the number of cases and the machine: ``BENCHMARKS.md`` has
the measurements. TorchScript (trace + freeze) was measured too and left out: its API is deprecated in torch 2.13
and its tracing cost more than it saved on one case.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from focusseg.nets.layout import thin_inference
from focusseg.settings.inference import ACCELERATIONS


class InferenceForward:
    """Callable ``forward(x)`` of ``network`` in eval mode, prepared per :data:`ACCELERATIONS` (module docstring).

    Args:
        network: the network (its parameters are not changed; it is put in eval mode).
        how: ``"none"``, ``"thin"`` or ``"compile"`` (``"thin"`` prepares the layers of ``network`` itself, here).

    Raises:
        ValueError: an unknown ``how``.
    """

    def __init__(self, network: nn.Module, how: str = "none") -> None:
        if how not in ACCELERATIONS:
            raise ValueError(f"accelerate must be one of {', '.join(ACCELERATIONS)}, got {how!r}")
        self.network = network.eval()
        self.how = how
        if how == "thin":
            thin_inference(self.network)
        self._compiled: Any = None

    @property
    def prepared(self) -> bool:
        """Whether the compiled module exists (built on the first call)."""
        return self._compiled is not None

    @property
    def fixed_batch(self) -> bool:
        """Whether every call should have the same batch size (a compiled graph is specialised to its shapes)."""
        return self.how == "compile"

    def __call__(self, x: torch.Tensor) -> Any:
        if self.how == "compile":
            if self._compiled is None:
                self._compiled = torch.compile(self.network, dynamic=False, options={"freezing": True})
            return self._compiled(x)
        return self.network(x)


__all__ = ["ACCELERATIONS", "InferenceForward"]
