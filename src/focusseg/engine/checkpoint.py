"""Atomic checkpoints: write to a temporary file in the same folder, fsync, then rename over the target, so a
kill at any moment leaves either the old or the new checkpoint, never a torn one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from focusseg.io.atomic import atomic_path


def save_atomic(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint or artefact **without executing code** (``weights_only=True``) onto the CPU.

    Callers move what they need to the device themselves (RNG states, sampler and weighter state stay on the
    CPU). ``map_location`` is accepted for compatibility but only ``"cpu"`` is used. Any failure (missing,
    truncated, corrupt, or a pickle that needs arbitrary Python objects) raises :class:`CheckpointError`
    naming the file."""
    import pickle
    import zipfile

    from focusseg.errors import CheckpointError, MissingFileError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError("no such checkpoint", path)
    if path.stat().st_size == 0:
        raise CheckpointError("empty checkpoint file (a killed write?)", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = " ".join(str(exc).split())
        if "weights_only" in reason or "Unsupported global" in reason or "GLOBAL" in reason:
            raise CheckpointError(
                "refusing to load: it holds Python objects beyond tensors and plain data, which could run code "
                f"when unpickled ({reason[:160]})", path,
                hint="only load checkpoints written by focusseg; a file from elsewhere may be malicious") from exc
        raise CheckpointError(f"corrupt checkpoint ({reason[:160]})", path) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise CheckpointError(f"truncated or corrupt checkpoint ({type(exc).__name__}: {reason[:160]})", path) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"not a focusseg checkpoint (holds a {type(state).__name__})", path)
    return state


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), **{k: g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def load_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    for k, g in generators.items():
        g.set_state(state[k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
