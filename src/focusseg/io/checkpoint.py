"""Checkpoints: written atomically (a temporary file in the same folder, fsync, rename over the target), loaded
without executing code (``weights_only=True``) onto the CPU.

``checkpoint_latest.pt`` keeps one predecessor: before a new latest is written, the existing one is renamed to
``checkpoint_previous.pt``, so a latest that is later found truncated or corrupt (a disk fault, a copy cut
short) still leaves a good checkpoint to resume from (:func:`load_resume_state`).

Everything saved is made plain first (:func:`plain`): tensors, dicts, lists, tuples, str, int, float, bool and
None only -- numpy arrays become tensors and numpy scalars Python numbers -- so that ``weights_only`` loading
always works and nothing in a checkpoint can name a Python class.

Provenance: :func:`file_sha256` streams a file's SHA-256 (``focusseg predict`` prints it, ``--expect-sha256``
pins it through :func:`check_sha256` before the file is parsed).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections import OrderedDict
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from focusseg.errors import CheckpointError, MissingFileError, RunFolderError, UsageError, one_line
from focusseg.io.atomic import atomic_path, fsync_dir

LATEST, PREVIOUS = "checkpoint_latest.pt", "checkpoint_previous.pt"
#: The keys a resumable checkpoint holds (what :func:`load_resume_state` checks before training uses it).
RESUME_KEYS = ("task", "lr", "sampler", "weighter", "rng", "epoch", "iteration", "max_iterations", "best", "elapsed",
               "history")


#: Most bytes a checkpoint's compressed zip records may inflate beyond their size in the file: ``torch.save`` stores
#: every record uncompressed, and ``torch.load`` allocates each record's claimed size, so this bounds what loading
#: may allocate beyond the file's own size.
MAX_INFLATION_BYTES = 256 << 20
#: Bytes hashed per read by :func:`file_sha256` (the file is streamed, never read whole).
HASH_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


def file_sha256(path: str | Path, chunk: int = HASH_CHUNK) -> str:
    """The SHA-256 of a file's bytes (lower-case hex), read in ``chunk``-byte pieces so a file of any size is
    hashed in constant memory, and before anything parses it.

    Args:
        path: the file.
        chunk: bytes per read.

    Returns:
        the 64-character hex digest.

    Raises:
        MissingFileError: no such file. CheckpointError: it cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("no such file to hash", path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    except OSError as exc:
        raise CheckpointError(f"cannot be read ({exc.strerror or type(exc).__name__})", path) from None
    return digest.hexdigest()


def parse_sha256(text: str) -> str:
    """A SHA-256 digest given on the command line: 64 hex digits, optionally prefixed ``sha256:`` (pip's
    ``--hash`` form); returned lower-case.

    Raises:
        UsageError: anything else (a digest of another length, another algorithm, non-hex characters).
    """
    value = str(text).strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:"):]
    if not _HEX64.fullmatch(value):
        shown = str(text)[:80]
        raise UsageError(f"--expect-sha256 {shown!r} is not a SHA-256 digest (64 hex digits)",
                         hint="compute one with: sha256sum FILE")
    return value


def check_sha256(path: str | Path, expected: Collection[str]) -> str:
    """The file's SHA-256 (:func:`file_sha256`), refused unless it is one of ``expected`` (when any are given):
    the ``--require-hashes`` rule, applied before the file is parsed.

    Args:
        path: the file (a model bundle or a checkpoint).
        expected: accepted digests (lower-case hex, :func:`parse_sha256`); empty accepts any.

    Returns:
        the file's digest.

    Raises:
        CheckpointError: the digest is not one of ``expected`` (names the file and both digests).
    """
    digest = file_sha256(path)
    if expected and digest not in expected:
        want = " or ".join(sorted(expected)[:4])
        raise CheckpointError(f"SHA-256 is {digest}, not the expected {want}: refused (a different or changed file)",
                              path, hint="check where the file came from before trusting it")
    return digest


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle names Python objects beyond tensors and plain data (it could run code)."""


def plain(obj: Any, where: str = "state") -> Any:
    """``obj`` with numpy arrays turned into tensors, numpy scalars into Python numbers and ``Path`` into str;
    containers rebuilt only where something changed (a module's state dict keeps its ``_metadata``). Anything
    else that ``weights_only`` loading would refuse raises ``TypeError`` naming where it sits."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, torch.dtype, torch.device,
                                       torch.Size)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj, copy=True))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        items = [(plain(k, where), plain(v, f"{where}[{k!r}]")) for k, v in obj.items()]
        if isinstance(obj, dict) and all(k2 is k and v2 is v for (k2, v2), (k, v) in zip(items, obj.items())):
            return obj
        out: dict = OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
        meta = getattr(obj, "_metadata", None)
        if meta is not None and isinstance(out, OrderedDict):
            out._metadata = meta  # type: ignore[attr-defined]
        return out
    if isinstance(obj, (list, tuple)):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        return type(obj)(items) if type(obj) in (list, tuple) else list(items)
    raise TypeError(f"{where}: a {type(obj).__name__} cannot go into a checkpoint (tensors and plain data only)")


def save_atomic(obj: Any, path: str | Path) -> Path:
    """Save ``plain(obj)`` to ``path`` atomically and durably."""
    path = Path(path)
    data = plain(obj)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(data, f)
        f.flush()
        os.fsync(f.fileno())
    return path


def save_latest(obj: Any, run_dir: str | Path) -> Path:
    """Write ``run_dir/checkpoint_latest.pt``, first renaming the existing one to ``checkpoint_previous.pt``.
    A kill between the two leaves ``previous`` only, which :func:`load_resume_state` resumes from."""
    run_dir = Path(run_dir)
    latest = run_dir / LATEST
    if latest.is_file():
        os.replace(latest, run_dir / PREVIOUS)
        fsync_dir(run_dir)
    return save_atomic(obj, latest)


def check_zip_bounds(path: str | Path) -> None:
    """Refuse a checkpoint whose zip records claim more than the file can back, before ``torch.load`` allocates
    them: a stored record claiming another size than it holds, records claiming more compressed bytes in all than
    the file has (overlapping records), or compressed records that together inflate more than
    :data:`MAX_INFLATION_BYTES` (a zip bomb: ``torch.save`` never compresses). A file that is not a zip is left to
    ``torch.load`` (its own error, or the legacy format).

    Raises:
        CheckpointError: naming the file and the record.
    """
    import zipfile

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return
    size = path.stat().st_size
    for info in infos:
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise CheckpointError(f"record {info.filename[:120]} is stored uncompressed but claims {info.file_size:,} "
                                  f"bytes in {info.compress_size:,}: a forged checkpoint", path)
    packed = sum(info.compress_size for info in infos)
    if packed > size:
        raise CheckpointError(f"its records claim {packed:,} bytes, more than the file's {size:,}: a forged "
                              "checkpoint (overlapping records)", path)
    inflation = sum(max(0, i.file_size - i.compress_size) for i in infos if i.compress_type != zipfile.ZIP_STORED)
    if inflation > MAX_INFLATION_BYTES:
        raise CheckpointError(f"its compressed records would inflate by {inflation:,} bytes beyond their size in "
                              f"the file (at most {MAX_INFLATION_BYTES:,}; torch.save compresses nothing): a zip "
                              "bomb, refused", path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint or artefact **without executing code** (``weights_only=True``) onto the CPU.

    Callers move what they need to the device themselves (RNG states, sampler and weighter state stay on the
    CPU). ``map_location`` is accepted for compatibility but only ``"cpu"`` is used. Any failure (missing,
    truncated, corrupt, zip records that claim more than the file backs (:func:`check_zip_bounds`), or a pickle
    that needs arbitrary Python objects) raises :class:`CheckpointError` naming the file
    (:class:`UnsafeCheckpointError` for the last)."""
    import pickle
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise MissingFileError("no such checkpoint", path)
    if path.stat().st_size == 0:
        raise CheckpointError("empty checkpoint file (a killed write?)", path)
    check_zip_bounds(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = one_line(exc)
        if "weights_only" in reason or "Unsupported global" in reason or "GLOBAL" in reason:
            raise UnsafeCheckpointError(
                "refusing to load: it holds Python objects beyond tensors and plain data, which could run code "
                f"when unpickled ({reason[:160]})", path,
                hint="only load checkpoints written by focusseg; a file from elsewhere may be malicious") from exc
        raise CheckpointError(f"corrupt checkpoint ({reason[:160]})", path) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as exc:
        reason = one_line(exc)
        raise CheckpointError(f"truncated or corrupt checkpoint ({type(exc).__name__}: {reason[:160]})", path) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"not a focusseg checkpoint (holds a {type(state).__name__})", path)
    return state


def _load_resumable(path: Path) -> dict[str, Any]:
    state = load_checkpoint(path)
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"not a resumable focusseg checkpoint (no {', '.join(missing)})", path)
    return state


def load_resume_state(run_dir: str | Path) -> tuple[dict[str, Any], Path]:
    """The state to resume ``run_dir`` from and the file it came from: ``checkpoint_latest.pt``, or, when that
    is missing, truncated or corrupt, ``checkpoint_previous.pt`` (with one warning line on stderr).

    Raises :class:`RunFolderError` when neither exists (nothing to resume), :class:`UnsafeCheckpointError` at
    once for a file that could run code (no fall-back: someone replaced it), and :class:`CheckpointError` when
    neither can be loaded."""
    run_dir = Path(run_dir)
    latest, previous = run_dir / LATEST, run_dir / PREVIOUS
    if not latest.is_file() and not previous.is_file():
        raise RunFolderError(f"nothing to resume: no {LATEST} in the run folder", run_dir,
                             hint="train without --resume to start")
    first_error: CheckpointError | None = None
    if latest.is_file():
        try:
            return _load_resumable(latest), latest
        except UnsafeCheckpointError:
            raise
        except CheckpointError as exc:
            first_error = exc
    if previous.is_file():
        try:
            state = _load_resumable(previous)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as exc:
            raise CheckpointError(
                f"cannot resume: {LATEST} and {PREVIOUS} are both unusable ({exc.problem})", run_dir,
                hint="restore a good checkpoint_latest.pt from a backup, or start again with --overwrite") from exc
        why = first_error.problem if first_error is not None else "missing"
        print(f"warning: {latest}: {why}; resuming from {PREVIOUS} (epoch {state['epoch']})", file=sys.stderr)
        return state, previous
    assert first_error is not None
    raise CheckpointError(
        f"cannot resume: {first_error.problem}, and there is no {PREVIOUS} to fall back to", latest,
        hint="restore the file from a backup, or start again with --overwrite") from first_error


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """The RNG states (CPU byte tensors) of torch, the given generators and CUDA."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), **{k: g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _byte_state(t: Any) -> torch.Tensor:
    return torch.as_tensor(t).to("cpu", torch.uint8)


def load_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Restore :func:`rng_state`'s output (the states are set from CPU byte tensors)."""
    torch.set_rng_state(_byte_state(state["torch"]))
    for k, g in generators.items():
        g.set_state(_byte_state(state[k]))
    if "cuda" in state and torch.cuda.is_available():
        states = [_byte_state(s) for s in state["cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:  # another number of GPUs than the run was started on: seed what matches
            for i, s in enumerate(states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
