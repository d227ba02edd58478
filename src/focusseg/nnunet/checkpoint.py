"""nnU-Net v2 checkpoints (``fold_K/checkpoint_final.pth``) read without executing code.

nnU-Net's trainer ``torch.save``s one dict: ``network_weights`` (the state dict), ``optimizer_state``,
``grad_scaler_state``, ``logging`` (per-epoch losses and Dice as numpy scalars), ``_best_ema`` (a numpy float),
``current_epoch``, ``init_args`` (plans, configuration, fold, dataset.json, device), ``trainer_name`` and
``inference_allowed_mirroring_axes``. The numpy scalars make a plain ``weights_only=True`` load fail, and nnU-Net
itself loads with ``weights_only=False`` (any pickle runs). :func:`load_nnunet_checkpoint` loads with
``weights_only=True`` and allows exactly the globals a numpy scalar needs (:data:`NUMPY_SCALAR_GLOBALS`): the
scalar constructor under its numpy 1 and numpy 2 names, ``numpy.dtype`` and the three dtype classes nnU-Net's
scalars have (float64, float32, int64). Any other global is refused in one line naming it, before it is called.

The file is memory-mapped (``mmap=True``), so the optimizer state -- as large as the weights, or twice -- is never
read into memory; the network weights are copied out (float32, finite) and everything else is dropped.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from focusseg.errors import CheckpointError, MissingFileError, one_line
from focusseg.io.checkpoint import check_zip_bounds

#: Largest checkpoint file read: nnU-Net's biggest residual-encoder checkpoints (weights plus optimizer state) are
#: a few GiB; the file is memory-mapped, so only the weights are read into memory.
MAX_CHECKPOINT_BYTES = 8 << 30
#: Most tensors in ``network_weights`` (a 12-stage residual encoder U-Net has a few thousand).
MAX_WEIGHT_TENSORS = 100_000
#: Longest trainer or configuration name kept from a checkpoint.
MAX_NAME_CHARS = 200
#: The highest image axis a mirroring axis may name (nnU-Net's images are 2D or 3D).
MAX_MIRROR_AXIS = 2

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL (\S+)")


def _numpy_scalar_globals() -> list[Any]:
    """The allowlist of :data:`NUMPY_SCALAR_GLOBALS`: the scalar constructor (numpy 2's ``numpy._core`` and, under
    its old name, numpy 1's ``numpy.core``), ``numpy.dtype`` and the dtype classes of float64, float32 and int64."""
    scalar = np.dtype("f8").type(0).__reduce__()[0]  # numpy's scalar constructor, wherever this numpy keeps it
    dtype_classes = [type(np.dtype(code)) for code in ("f8", "f4", "i8")]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
            np.dtype, *dtype_classes]


#: Globals a ``weights_only`` load may call beyond torch's own: numpy scalars of float64, float32 and int64 (what
#: nnU-Net's ``logging``, ``_best_ema`` and ``current_epoch`` hold). Nothing else.
NUMPY_SCALAR_GLOBALS: tuple[Any, ...] = tuple(_numpy_scalar_globals())


@dataclass(frozen=True)
class NnunetCheckpoint:
    """What focusseg keeps of an nnU-Net checkpoint.

    Attributes:
        path: the file.
        network_weights: parameter and buffer name -> CPU tensor (floating tensors float32, all finite).
        trainer_name: the nnU-Net trainer class that wrote it (``nnUNetTrainer``...).
        configuration: the plans configuration it was trained with (``3d_fullres``...), or None when absent.
        mirror_axes: the image axes nnU-Net mirrors at inference (None: the trainer did not record them).
    """

    path: Path
    network_weights: OrderedDict[str, torch.Tensor]
    trainer_name: str
    configuration: str | None
    mirror_axes: tuple[int, ...] | None


def _refusal(exc: Exception) -> str:
    """One line for a ``weights_only`` refusal, naming the refused global (or object) where the message has it."""
    text = one_line(exc)
    found = _GLOBAL_IN_MESSAGE.search(text)
    if found:
        name = found.group(1)
        return (f"refused: its pickle names the Python global {name!r}, which could run code when loaded (an nnU-Net "
                "checkpoint holds tensors, plain data and numpy scalars only)")
    detail = text.split("WeightsUnpickler error:", 1)[-1].strip()
    for marker in ("unrecognized function", "Can only build", "Can only create new object", "Can only append",
                   "Can only extend", "persistent_load"):
        if marker in detail:
            return f"refused: its pickle needs an object beyond tensors, plain data and numpy scalars ({detail[:160]})"
    return f"corrupt checkpoint ({detail[:160]})"


def _read_raw(path: Path) -> Any:
    """``torch.load`` under ``weights_only=True`` with :data:`NUMPY_SCALAR_GLOBALS` allowed, memory-mapped."""
    try:
        with torch.serialization.safe_globals(list(NUMPY_SCALAR_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_refusal(exc), path) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError) as exc:
        raise CheckpointError(f"truncated or corrupt checkpoint ({one_line(exc, typed=True)[:160]})", path) from None


def _weights(raw: Any, path: Path) -> OrderedDict[str, torch.Tensor]:
    """``network_weights`` checked (names, tensors, finite) and copied out of the mapped file as float32."""
    if not isinstance(raw, Mapping) or not raw:
        raise CheckpointError("network_weights is not a non-empty dict of tensors: not an nnU-Net checkpoint", path)
    if len(raw) > MAX_WEIGHT_TENSORS:
        raise CheckpointError(f"network_weights holds {len(raw):,} entries (at most {MAX_WEIGHT_TENSORS:,})", path)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, value in raw.items():
        if not isinstance(name, str) or not name or len(name) > 1000:
            raise CheckpointError(f"network_weights has a key that is not a parameter name: {str(name)[:80]!r}", path)
        if type(value) is not torch.Tensor and type(value) is not torch.nn.Parameter:
            raise CheckpointError(f"network_weights[{name!r}] is a {type(value).__name__}, not a tensor", path)
        if value.layout != torch.strided or value.is_quantized or value.is_complex():
            raise CheckpointError(f"network_weights[{name!r}] is not a dense real tensor", path)
        if value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"network_weights[{name!r}] holds NaN or infinite values: a diverged or "
                                      "damaged checkpoint", path)
            value = value.detach().to(torch.float32, copy=True)
        else:
            value = value.detach().clone()
        out[name] = value
    return out


def _name(value: Any, what: str, path: Path) -> str:
    if not isinstance(value, str) or len(value) > MAX_NAME_CHARS or not _NAME.fullmatch(value):
        raise CheckpointError(f"{what} = {str(value)[:80]!r} is not a class or configuration name", path)
    return value


def _mirror_axes(value: Any, path: Path) -> tuple[int, ...] | None:
    if value is None:
        return None
    ok = isinstance(value, (list, tuple)) and len(value) <= MAX_MIRROR_AXIS + 1
    axes = tuple(value) if ok else ()
    ok = ok and all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a <= MAX_MIRROR_AXIS for a in axes)
    if not ok or len(set(axes)) != len(axes):
        raise CheckpointError(f"inference_allowed_mirroring_axes = {str(value)[:80]}: must be null or distinct image "
                              f"axes in [0, {MAX_MIRROR_AXIS}]", path)
    return axes


def load_nnunet_checkpoint(path: str | Path, max_bytes: int = MAX_CHECKPOINT_BYTES) -> NnunetCheckpoint:
    """Load an nnU-Net v2 checkpoint **without executing code** and keep only what inference needs.

    Args:
        path: ``checkpoint_final.pth`` or ``checkpoint_best.pth``.
        max_bytes: the largest file accepted.

    Returns:
        the weights, trainer name, configuration name and mirroring axes (:class:`NnunetCheckpoint`).

    Raises:
        MissingFileError: no such file.
        CheckpointError: larger than ``max_bytes``, not a torch zip file, zip records claiming more than the file
            backs, a pickle naming any global beyond tensors and numpy scalars (named in the message, never
            called), or weights / fields of the wrong type, NaN or infinite weights.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("no such nnU-Net checkpoint", path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError("empty checkpoint file (a killed write?)", path)
    if size > max_bytes:
        raise CheckpointError(f"is {size:,} bytes, more than the {max_bytes:,} an nnU-Net checkpoint is read up to",
                              path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError("not a torch zip checkpoint (nnU-Net v2 writes torch's zip format)", path)
    check_zip_bounds(path)
    raw = _read_raw(path)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"not an nnU-Net checkpoint (holds a {type(raw).__name__}, not a dict)", path)
    missing = [k for k in ("network_weights", "trainer_name") if k not in raw]
    if missing:
        raise CheckpointError(f"not an nnU-Net checkpoint (no {', '.join(missing)})", path)
    init_args = raw.get("init_args")
    configuration = None
    if isinstance(init_args, Mapping) and init_args.get("configuration") is not None:
        configuration = _name(init_args["configuration"], "init_args.configuration", path)
    trainer = _name(raw["trainer_name"], "trainer_name", path)
    axes = _mirror_axes(raw.get("inference_allowed_mirroring_axes"), path)
    weights = _weights(raw["network_weights"], path)
    del raw, init_args  # the mapped optimizer state, logging and plans go with it
    return NnunetCheckpoint(path, weights, trainer, configuration, axes)


__all__ = ["MAX_CHECKPOINT_BYTES", "NUMPY_SCALAR_GLOBALS", "NnunetCheckpoint", "load_nnunet_checkpoint"]
