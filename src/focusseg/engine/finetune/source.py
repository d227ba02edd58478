"""The checkpoint a run is fine-tuned from: reading it, matching its tensors onto a network, the loaded-tensors table.

A source is a run folder (its ``checkpoint_best.pt``, else ``checkpoint_final.pt``) or a ``.pt`` file, loaded
``weights_only`` onto the CPU; or an nnU-Net v2 model folder (its first fold's ``checkpoint_final.pth``), one of its
``fold_K`` folders or an nnU-Net ``.pth`` checkpoint, loaded without executing code
(:func:`focusseg.nnunet.load_nnunet_checkpoint`): its ``network_weights`` match a run training the ``nnunet``
network with a plan converted from the same model (``focusseg.nnunet.convert.plan_from_nnunet``).
Tensors are matched by name and shape, as nnU-Net's ``load_pretrained_weights``
does, but leniently: a tensor of another shape or missing from the source keeps the network's fresh
initialisation, and only a source of which no tensor matches is refused. See ``docs/finetuning.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from focusseg.errors import CheckpointError, MissingFileError
from focusseg.io.checkpoint import load_checkpoint
from focusseg.nnunet import load_nnunet_checkpoint
from focusseg.nnunet.convert import checkpoint_files

#: The files a run folder is fine-tuned from, in order of preference.
RUN_CHECKPOINTS = ("checkpoint_best.pt", "checkpoint_final.pt")
#: Prefixes a state dict saved elsewhere may carry (DDP, torch.compile); removed before matching.
STRIP_PREFIXES = ("module.", "_orig_mod.")
#: The file ending of nnU-Net's checkpoints (focusseg writes ``.pt``).
NNUNET_SUFFIX = ".pth"
#: How many non-loaded tensors the printed table shows (the log line lists them all).
SHOWN_ROWS = 40


@dataclass
class Source:
    """A source checkpoint: the file, its sha256 and its network weights (CPU tensors)."""

    path: Path
    sha256: str
    weights: dict[str, torch.Tensor]


def resolve_source(path: str | Path) -> Path:
    """The checkpoint file ``path`` names.

    Args:
        path: a run folder, an nnU-Net model folder or fold folder, or a checkpoint file (``~`` expanded).

    Returns:
        The folder's ``checkpoint_best.pt`` (else ``checkpoint_final.pt``); an nnU-Net model folder's first fold's
        ``checkpoint_final.pth`` (``fold_all``'s when it has no numbered fold); an nnU-Net fold folder's
        ``checkpoint_final.pth``; or the file itself; resolved.

    Raises:
        CheckpointError: a folder with no checkpoint.
        MissingFileError: nothing at ``path``, an nnU-Net model folder without a final checkpoint.
    """
    p = Path(path).expanduser()
    if p.is_dir() and (p / "plans.json").is_file() and (p / "dataset.json").is_file():
        files = checkpoint_files(p, "final")
        return files[next(iter(files))].resolve()
    if p.is_dir() and (p / "checkpoint_final.pth").is_file():
        return (p / "checkpoint_final.pth").resolve()
    if p.is_dir():
        for name in RUN_CHECKPOINTS:
            if (p / name).is_file():
                return (p / name).resolve()
        raise CheckpointError(f"--init-from: the folder has no {' or '.join(RUN_CHECKPOINTS)}", p,
                              hint="name a trained run folder or a .pt checkpoint file")
    if not p.exists():
        raise MissingFileError("--init-from: no such run folder or checkpoint", p,
                               hint="name a trained run folder or a .pt checkpoint file")
    return p.resolve()


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes (read in 1 MiB chunks); recorded in the plan to pin the source."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _strip(name: str) -> str:
    """``name`` without the leading :data:`STRIP_PREFIXES` (repeatedly) and inner ``._orig_mod.`` segments."""
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name.replace("._orig_mod.", ".")


def network_weights(state: dict[str, Any], path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The network state dict inside a loaded checkpoint, prefixes stripped.

    Looked for, in order: ``network`` (focusseg's exported and latest checkpoints), ``task.network`` (a latest
    checkpoint), ``network_weights`` (nnU-Net v2; its networks name tensors otherwise than focusseg's, so only a
    network with the same names matches), ``state_dict``, and the whole dict as a plain ``{name: tensor}``.

    Args:
        state: the loaded checkpoint.
        path: the file it came from, for the error message.

    Returns:
        ``{name: tensor}`` with ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) prefixes removed.

    Raises:
        CheckpointError: no candidate is a non-empty ``{str: Tensor}`` dict.
    """
    task = state.get("task")
    candidates = [state.get("network"), task.get("network") if isinstance(task, dict) else None,
                  state.get("network_weights"), state.get("state_dict"), state]
    for c in candidates:
        if isinstance(c, dict) and c and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in c.items()):
            return {_strip(k): v for k, v in c.items()}
    keys = ", ".join(sorted(str(k) for k in state)[:8]) or "nothing"
    raise CheckpointError(f"not a focusseg checkpoint: no network weights in it (it holds {keys})", path,
                          hint="--init-from takes a run folder of `focusseg train` or its checkpoint_*.pt")


def read_source(path: str | Path) -> Source:
    """Resolve (:func:`resolve_source`), load (``weights_only``, CPU) and hash a source checkpoint (an nnU-Net
    ``.pth`` through :func:`~focusseg.nnunet.load_nnunet_checkpoint`: tensors and numpy scalars only).

    Raises:
        CheckpointError: no checkpoint there, a corrupt file, or no network weights in it.
        MissingFileError: nothing at ``path``.
    """
    file = resolve_source(path)
    if file.suffix == NNUNET_SUFFIX:  # nnU-Net's checkpoint: numpy scalars beside the weights, read safely
        return Source(file, file_sha256(file), dict(load_nnunet_checkpoint(file).network_weights))
    state = load_checkpoint(file)
    return Source(file, file_sha256(file), network_weights(state, file))


def member_weights(weights: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """The weights for network ``index`` of the run being trained.

    A cycle run's export is a mean ensemble whose tensors are named ``members.K.*``: network ``index`` takes
    member ``index`` modulo the number of members (a single network takes member 0). Any other state dict is
    returned as is."""
    members = sorted({int(k.split(".")[1]) for k in weights if k.startswith("members.") and k.split(".")[1].isdigit()})
    if not members or not all(k.startswith("members.") for k in weights):
        return weights
    m = members[index % len(members)]
    prefix = f"members.{m}."
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


@dataclass
class LoadReport:
    """What :func:`load_matching` did.

    ``mismatched``: ``(name, source shape, network shape)``; ``missing``: network tensors the source lacks
    (re-initialised); ``unused``: source tensors the network lacks (skipped); ``loaded_values`` /
    ``total_values``: numbers of values loaded / in the network."""

    loaded: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    loaded_values: int = 0
    total_values: int = 0
    source: str = ""
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # the network's shapes, for the table
    unused_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # the skipped source tensors' shapes

    @property
    def reinitialised(self) -> list[str]:
        """The network's tensors not loaded: the mismatched ones, then those the source lacks."""
        return [n for n, _, _ in self.mismatched] + list(self.missing)

    def as_dict(self) -> dict[str, Any]:
        """The fields of the ``init_from`` event line: counts and every name."""
        return {"source": self.source, "loaded": len(self.loaded), "mismatched": len(self.mismatched),
                "reinitialised": len(self.missing), "unused": len(self.unused),
                "loaded_values": self.loaded_values, "total_values": self.total_values,
                "loaded_tensors": list(self.loaded),
                "mismatched_tensors": [{"name": n, "source": list(s), "network": list(t)}
                                       for n, s, t in self.mismatched],
                "reinitialised_tensors": list(self.missing), "unused_tensors": list(self.unused)}


def match_shapes(target: dict[str, torch.Size | tuple[int, ...]], source: dict[str, torch.Tensor]) -> LoadReport:
    """Match ``source`` tensors onto a network by name and shape, touching no tensor (meta-device networks work).

    Args:
        target: the network's tensors, name -> shape.
        source: the source's tensors, name -> tensor (only shapes are read).

    Returns:
        The :class:`LoadReport` of what loading would do.
    """
    r = LoadReport()
    for name, shape in target.items():
        tshape = tuple(int(s) for s in shape)
        r.shapes[name] = tshape
        n = 1
        for s in tshape:
            n *= s
        r.total_values += n
        if name not in source:
            r.missing.append(name)
        elif tuple(source[name].shape) != tshape:
            r.mismatched.append((name, tuple(int(s) for s in source[name].shape), tshape))
        else:
            r.loaded.append(name)
            r.loaded_values += n
    r.unused = [k for k in source if k not in target]
    r.unused_shapes = {k: tuple(int(s) for s in source[k].shape) for k in r.unused}
    return r


def load_matching(network: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "") -> LoadReport:
    """Load into ``network`` every tensor of ``state_dict`` whose name and shape match (parameters and buffers).

    Every other tensor of the network keeps its current (fresh) values; nothing is loaded when nothing matches
    (the caller decides whether that is an error). Values are copied into the network's tensors, keeping their
    device, dtype and memory format.

    Args:
        network: the network to load into.
        state_dict: the source tensors (prefixes as in :func:`network_weights` are stripped).
        source: the source's name, recorded in the report.

    Returns:
        The :class:`LoadReport`.
    """
    state_dict = {_strip(k): v for k, v in state_dict.items()}
    own = network.state_dict()
    report = match_shapes({k: v.shape for k, v in own.items()}, state_dict)
    report.source = source
    if report.loaded:
        merged = dict(own)
        for name in report.loaded:
            merged[name] = state_dict[name]
        network.load_state_dict(merged)
    return report


def report_table(report: LoadReport, title: str | None = None, limit: int = SHOWN_ROWS) -> Table:
    """The report as a rich table: one row per tensor not loaded (mismatched / re-initialised / skipped, at most
    ``limit``, then a row counting the rest) and one row for all the loaded ones."""
    pct = 100.0 * report.loaded_values / report.total_values if report.total_values else 0.0
    table = Table(title=title or f"--init-from {report.source}: {len(report.loaded)} tensors loaded "
                                 f"({pct:.1f} % of the network's values), {len(report.mismatched)} mismatched, "
                                 f"{len(report.missing)} re-initialised, {len(report.unused)} skipped",
                  title_justify="left")
    table.add_column("tensor", overflow="fold")
    for col in ("source shape", "network shape", "status"):
        table.add_column(col, no_wrap=True)
    rows = [(n, _shape(s), _shape(t), "mismatched: re-initialised") for n, s, t in report.mismatched]
    rows += [(n, "-", _shape(report.shapes.get(n)), "not in source: re-initialised") for n in report.missing]
    rows += [(n, _shape(report.unused_shapes.get(n)), "-", "not in network: skipped") for n in report.unused]
    for row in rows[:limit]:
        table.add_row(*row)
    if len(rows) > limit:
        table.add_row(f"... {len(rows) - limit} more (all listed in log.jsonl)", "", "", "")
    table.add_row(f"({len(report.loaded)} tensors)", "same", "same", "loaded")
    return table


def _shape(s: Iterable[int] | None) -> str:
    return "-" if s is None else "[" + ", ".join(str(int(x)) for x in s) + "]"


def print_report(report: LoadReport, console: Console | None = None) -> None:
    """Print :func:`report_table` on ``console`` (default: stderr, as the epoch lines; 160 columns wide when stderr
    is not a terminal, so a log file keeps whole tensor names)."""
    if console is None:
        console = Console(stderr=True)
        if not console.is_terminal:
            console = Console(stderr=True, width=160)
    console.print(report_table(report))


def no_match_error(source: Source | Path | str, n_source: int) -> CheckpointError:
    """The error for a source of which no tensor matches the network (almost always another network family)."""
    path = source.path if isinstance(source, Source) else Path(source)
    return CheckpointError(f"--init-from: none of the checkpoint's {n_source} tensors matches the network by name "
                           "and shape", path,
                           hint="fine-tune from a run of the same network (compare the two runs' plan.json "
                                "'network'; set it with --set network=...)")
