"""Counting host synchronisations: the default training path reads the device at most once per iteration.

Two counters, one interface (``count``, ``by_thread``, ``reset``; used as a context manager):

- :class:`HostReadCounter` (any device, the CPU tests): counts every call that would make the host wait for a
  CUDA device if the tensor lived there (``item``, ``tolist``, ``cpu``, ``numpy``, ``__bool__``, ``__float__``,
  ...) on tensors of the watched device types, per thread; on a CPU machine the count is an upper bound of what
  the same code costs on a GPU. The exact list: ``docs/tasks.md``.
- :class:`CudaSyncCounter` (CUDA only): ``torch.cuda.set_sync_debug_mode("warn")`` and counts the
  "synchronizing CUDA operation" warnings: every real sync, including those inside torch, none that is not one.
"""

from __future__ import annotations

import threading
import warnings
from collections import Counter
from typing import Any

import torch

_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


class HostReadCounter:
    """Count host reads of tensors while active (patches ``torch.Tensor`` methods; restored on exit)."""

    def __init__(self, device_types: tuple[str, ...] = ("cpu", "cuda")) -> None:
        self.device_types = device_types
        self.by_thread: Counter[int] = Counter()
        self.by_method: Counter[str] = Counter()
        self._saved: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._inside = threading.local()

    @property
    def count(self) -> int:
        return sum(self.by_thread.values())

    def in_thread(self, ident: int | None = None) -> int:
        """Reads made by one thread (default: the calling one)."""
        return self.by_thread[threading.get_ident() if ident is None else ident]

    def reset(self) -> None:
        with self._lock:
            self.by_thread.clear()
            self.by_method.clear()

    def _record(self, name: str, tensor: torch.Tensor) -> None:
        if getattr(self._inside, "busy", False) or tensor.device.type not in self.device_types:
            return
        with self._lock:
            self.by_thread[threading.get_ident()] += 1
            self.by_method[name] += 1

    def _wrap(self, name: str, original: Any) -> Any:
        counter = self

        def wrapper(t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if name == "to":
                target = next((a for a in args if isinstance(a, (str, torch.device))), kwargs.get("device"))
                if target is None or torch.device(target).type != "cpu" or t.device.type == "cpu":
                    return original(t, *args, **kwargs)
            counter._record(name, t)
            counter._inside.busy = True  # a read implemented with another read counts once
            try:
                return original(t, *args, **kwargs)
            finally:
                counter._inside.busy = False

        return wrapper

    def __enter__(self) -> HostReadCounter:
        for name in (*_READS, "to"):
            original = getattr(torch.Tensor, name)
            self._saved[name] = original
            setattr(torch.Tensor, name, self._wrap(name, original))
        return self

    def __exit__(self, *exc: Any) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()


class CudaSyncCounter:
    """Count real CUDA host syncs while active (``torch.cuda.set_sync_debug_mode("warn")``, warnings recorded;
    the previous mode is restored on exit). All threads are counted together (``by_thread`` has one entry)."""

    def __init__(self) -> None:
        self._records: list[warnings.WarningMessage] = []
        self._ctx: Any = None
        self._mode = 0
        self._start = 0

    @property
    def count(self) -> int:
        return sum("synchroniz" in str(w.message) for w in self._records[self._start:])

    @property
    def by_thread(self) -> Counter[int]:
        return Counter({threading.get_ident(): self.count})

    def in_thread(self, ident: int | None = None) -> int:
        return self.count

    def reset(self) -> None:
        self._start = len(self._records)

    def __enter__(self) -> CudaSyncCounter:
        self._ctx = warnings.catch_warnings(record=True)
        self._records = self._ctx.__enter__()
        warnings.simplefilter("always")
        self._mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.cuda.set_sync_debug_mode(self._mode)
        self._ctx.__exit__(*exc)


def sync_counter(device: torch.device | str) -> HostReadCounter | CudaSyncCounter:
    """The exact counter on CUDA, the host-read counter elsewhere."""
    return CudaSyncCounter() if torch.device(device).type == "cuda" else HostReadCounter()
