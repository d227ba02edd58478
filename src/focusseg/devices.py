"""Devices: resolve the ``--device`` a user names, and what the CPU can do natively (bf16)."""

from __future__ import annotations

import torch

from focusseg.errors import UsageError


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA device", hint="use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device {device!r} is not a device torch knows (cpu, cuda, cuda:N, auto)") from exc


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles, as oneDNN uses them)."""
    probe = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(f()) for f in probe if callable(f))

