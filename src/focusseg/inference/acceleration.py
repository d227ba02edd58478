"""The network's inference forward, prepared once per predictor: as it is, traced and frozen, or compiled.

``inference.accelerate`` in the plan (or ``accelerate=`` of
:func:`~focusseg.inference.sliding_window.sliding_window_predict`) chooses:

- ``"none"``: the module itself.
- ``"jit"``: ``torch.jit.trace`` of the eval-mode network, then ``torch.jit.freeze`` and
  ``torch.jit.optimize_for_inference`` (weights folded in as constants, convolutions pre-packed for oneDNN on the
  CPU). Same operators, so the same numbers in fp32; one trace per input shape (the full window batch and, once
  per size, a smaller last batch), about a second each for a UNet. Used in fp32 only: under autocast the traced
  graph would fix the dtype casts of the first call, so with ``amp_dtype`` the module runs as it is.
- ``"compile"``: ``torch.compile`` (inductor) with ``freezing`` on (weights as constants, which lets inductor
  pre-pack convolutions and fuse normalisation and activation into generated kernels). Compiled once per window
  batch shape; the sliding window pads its last batch to the full size so one shape is compiled per case size
  class. Compilation costs seconds to tens of seconds; inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``)
  shortens it in later processes. Outputs differ from the eager ones by float rounding (about 1e-5 on logits).

Which one is faster depends on the network, the batch and the machine: ``BENCHMARKS.md`` has the measurements.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from focusseg.settings.inference import ACCELERATIONS


class InferenceForward:
    """Callable ``forward(x)`` of ``network`` in eval mode, prepared per :data:`ACCELERATIONS` (module docstring).

    Args:
        network: the network (its parameters are not changed; it is put in eval mode).
        how: ``"none"``, ``"jit"`` or ``"compile"``.
        amp_dtype: the autocast dtype the sliding window runs under, or None (fp32); ``"jit"`` applies in fp32
            only.

    Raises:
        ValueError: an unknown ``how``.
    """

    def __init__(self, network: nn.Module, how: str = "none", amp_dtype: torch.dtype | None = None) -> None:
        if how not in ACCELERATIONS:
            raise ValueError(f"accelerate must be one of {', '.join(ACCELERATIONS)}, got {how!r}")
        self.network = network.eval()
        self.how = "none" if how == "jit" and amp_dtype is not None else how
        self._traced: dict[tuple[Any, ...], Any] = {}
        self._compiled: Any = None

    @property
    def prepared(self) -> int:
        """How many input shapes have a traced graph (``"jit"``), 1 once compiled (``"compile"``), else 0."""
        return len(self._traced) if self.how == "jit" else int(self._compiled is not None)

    @property
    def fixed_batch(self) -> bool:
        """Whether every call should have the same batch size (a compiled graph is specialised to its shapes)."""
        return self.how == "compile"

    def __call__(self, x: torch.Tensor) -> Any:
        if self.how == "jit":
            key = (tuple(x.shape), x.dtype, x.device, x.is_contiguous(memory_format=torch.channels_last_3d))
            fn = self._traced.get(key)
            if fn is None:
                with torch.inference_mode(False), torch.no_grad():
                    example = x.clone()
                    traced = torch.jit.trace(self.network, example, check_trace=False, strict=False)
                    fn = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
                self._traced[key] = fn
            return fn(x)
        if self.how == "compile":
            if self._compiled is None:
                self._compiled = torch.compile(self.network, dynamic=False, options={"freezing": True})
            return self._compiled(x)
        return self.network(x)


__all__ = ["ACCELERATIONS", "InferenceForward"]
