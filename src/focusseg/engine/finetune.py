"""Fine-tuning: start a run from another run's weights (issue 15 part 6).

``focusseg train DATA --out RUN --init-from SOURCE [--freeze-encoder-epochs N] [--warmup-epochs N]``

SOURCE is a run folder (its ``checkpoint_best.pt``, else ``checkpoint_final.pt``) or a ``.pt`` file, loaded with
:func:`focusseg.io.checkpoint.load_checkpoint` (``weights_only=True``, onto the CPU). The weights are taken
from the checkpoint's ``network`` entry (focusseg's exported and latest checkpoints), ``task.network`` (a latest
checkpoint), ``network_weights`` (nnU-Net v2's key; its architectures name their tensors otherwise than focusseg's
networks, so only a network with the same names matches) or, failing those, a plain ``{name: tensor}`` state dict;
``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) prefixes are removed.

Which tensors are loaded (:func:`load_matching`). Reference: nnU-Net's ``load_pretrained_weights``
(documentation/pretraining_and_finetuning.md). nnU-Net transfers every tensor whose name and shape match, never
the segmentation layers (keys containing ``.seg_layers.``), and refuses the checkpoint when any other tensor of
the network is missing or has another shape (its plans must be aligned between the datasets first). The reading
chosen here keeps the name-and-shape rule but is lenient and explicit instead of strict:

- every tensor of the network (parameters and buffers) whose name and shape match a source tensor is loaded --
  the head too, when classes and channels are the same (same number of classes does not have to mean the same
  classes; with other classes the head's shape differs and it is not loaded);
- a tensor whose shape differs (the head with another number of classes, the first convolution with another
  number of input channels) or that the source lacks keeps the fresh initialisation of the new network
  ("re-initialised"); source tensors the network does not have are skipped;
- the table of loaded / mismatched / re-initialised / skipped tensors is printed and logged (a ``init_from``
  event line in ``log.jsonl``); a checkpoint of which **no** tensor matches is refused (:class:`CheckpointError`),
  as a checkpoint of another network family almost always is a mistake.

nnU-Net's recent expansion of the first convolution to more input channels (repeating the source channels) is
not done: another channel count re-initialises the first convolution.

Freezing (:class:`FreezeEncoder`, ``--freeze-encoder-epochs N``): for the first N epochs the encoder's loaded
parameters do not train (``requires_grad`` off and their gradients ``None``, so neither the step, momentum nor
weight decay of SGD/AdamW/Ranger21 touches them: they stay bit-identical), then everything trains. Encoder tensors
that were re-initialised (the first convolution with another channel count) train from the start: frozen, they would
stay random. **The encoder** is found by one probing forward pass of the network on the meta device (no memory, no
compute), in eval mode, with one patch of the plan's size: every module with parameters of its own that runs *before
the first module whose output is larger than its input* along a spatial axis (the first upsampling: a transposed
convolution, an interpolation, an ``UpCat``) is encoder; the bottleneck counts as encoder; everything that runs from
the first upsampling on (decoder, skip fusion, output block) and every module that does not run in eval mode
(deep-supervision heads, unused layers, which get no gradient anyway) is not. The rule reads the network's
behaviour, not its attribute names, so it holds for every family in the registry: MONAI ``UNet`` (``model.0``, each
level's ``submodule.0`` and the bottom layer), ``DynUNet`` (``input_block``, ``downsamples``, ``bottleneck``),
``BasicUNet`` (``conv_0``, ``down_1..4``), STU-Net (``encoder.*``), SwinUNETR (``swinViT`` and ``encoder1..4``,
``encoder10``), UNETR (``vit`` and ``encoder1``; its ``encoder2..4`` upsample the ViT tokens). Buffers (e.g.
BatchNorm running statistics) are not parameters and still update in train mode; focusseg's networks use instance
norm. A network that cannot run on the meta device (SwinUNETR) is probed once on the training device instead.

Warmup (:class:`WarmupLR`, installed by :class:`LRWarmup`, ``--warmup-epochs N``): the learning rate rises
linearly from ``scheduled / W`` to the scheduled value over ``W = N * iterations_per_epoch`` iterations (factor
``(it + 1) / W``), around whatever controller the plan names (poly, cosine, metric-driven, ...); the controller's
own state (what the checkpoint saves) is the unscaled schedule.

Resume: the settings are recorded in the plan (``plan["training"]["init_from"] = {"source", "sha256",
"freeze_encoder_epochs", "warmup_epochs", "reinitialised"}``; ``reinitialised`` lists the network's tensors not
loaded), so ``plan.json`` says what was done. A resumed run never loads the
source again (its checkpoint holds the weights); freezing and warmup continue from the checkpoint's epoch and
iteration.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from focusseg.errors import CheckpointError, MissingFileError, PlanError, UsageError

#: The files a run folder is fine-tuned from, in order of preference.
RUN_CHECKPOINTS = ("checkpoint_best.pt", "checkpoint_final.pt")
#: Prefixes a state dict saved elsewhere may carry (DDP, torch.compile); removed before matching.
STRIP_PREFIXES = ("module.", "_orig_mod.")
#: The plan key recording the fine-tuning settings.
PLAN_KEY = "init_from"
#: How many non-loaded tensors the printed table shows (the log line lists them all).
SHOWN_ROWS = 40


# ---------------------------------------------------------------------------------------------------------- source


@dataclass
class Source:
    """A source checkpoint: the file, its sha256 and its network weights (CPU tensors)."""

    path: Path
    sha256: str
    weights: dict[str, torch.Tensor]


def resolve_source(path: str | Path) -> Path:
    """The checkpoint file ``path`` names: a run folder's ``checkpoint_best.pt`` (else ``checkpoint_final.pt``),
    or the file itself. :class:`MissingFileError` / :class:`CheckpointError` naming the path when there is none."""
    p = Path(path).expanduser()
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
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _strip(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name.replace("._orig_mod.", ".")


def network_weights(state: dict[str, Any], path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The network state dict inside a loaded checkpoint (see the module docstring for the keys looked at),
    prefixes stripped. :class:`CheckpointError` when it holds none."""
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
    """Resolve, load (``weights_only``, CPU) and hash a source checkpoint."""
    from focusseg.io.checkpoint import load_checkpoint

    file = resolve_source(path)
    state = load_checkpoint(file)
    return Source(file, file_sha256(file), network_weights(state, file))


def member_weights(weights: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """The weights for one network of the run: a cycle run's export (``members.K.*``, a mean ensemble) gives
    its member ``index`` (modulo the number of members; member 0 for a single network); anything else as is."""
    members = sorted({int(k.split(".")[1]) for k in weights if k.startswith("members.") and k.split(".")[1].isdigit()})
    if not members or not all(k.startswith("members.") for k in weights):
        return weights
    m = members[index % len(members)]
    prefix = f"members.{m}."
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


# -------------------------------------------------------------------------------------------------------- matching


@dataclass
class LoadReport:
    """What :func:`load_matching` did. ``mismatched``: ``(name, source shape, network shape)``;
    ``missing``: network tensors the source lacks (re-initialised); ``unused``: source tensors the network
    lacks (skipped)."""

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
        return [n for n, _, _ in self.mismatched] + list(self.missing)

    def as_dict(self) -> dict[str, Any]:
        """For the ``init_from`` event line: counts and every name."""
        return {"source": self.source, "loaded": len(self.loaded), "mismatched": len(self.mismatched),
                "reinitialised": len(self.missing), "unused": len(self.unused),
                "loaded_values": self.loaded_values, "total_values": self.total_values,
                "loaded_tensors": list(self.loaded),
                "mismatched_tensors": [{"name": n, "source": list(s), "network": list(t)}
                                       for n, s, t in self.mismatched],
                "reinitialised_tensors": list(self.missing), "unused_tensors": list(self.unused)}


def match_shapes(target: dict[str, torch.Size | tuple[int, ...]], source: dict[str, torch.Tensor]) -> LoadReport:
    """The report of matching ``source`` tensors onto a network with tensors ``target`` (name -> shape), without
    touching any tensor (works with meta-device networks)."""
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
    """Load into ``network`` every tensor of ``state_dict`` whose name and shape match; every other tensor of
    the network keeps its current (fresh) values. Returns the :class:`LoadReport`; loads nothing when nothing
    matches (the caller decides whether that is an error)."""
    state_dict = {_strip(k): v for k, v in state_dict.items()}
    own = network.state_dict()
    report = match_shapes({k: v.shape for k, v in own.items()}, state_dict)
    report.source = source
    if report.loaded:
        merged = dict(own)
        for name in report.loaded:
            merged[name] = state_dict[name]
        network.load_state_dict(merged)  # copies into the parameters (their device, dtype and memory format)
    return report


def report_table(report: LoadReport, title: str | None = None, limit: int = SHOWN_ROWS) -> Any:
    """A rich table: one row per tensor not loaded (mismatched / re-initialised / skipped, up to ``limit``) and
    one row for all the loaded ones."""
    from rich.table import Table

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


def print_report(report: LoadReport, console: Any | None = None) -> None:
    """Print :func:`report_table` (on stderr by default, as the epoch lines)."""
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
        if not console.is_terminal:  # a log file: wide enough for whole tensor names
            console = Console(stderr=True, width=160)
    console.print(report_table(report))


def no_match_error(source: Source | Path | str, n_source: int) -> CheckpointError:
    path = source.path if isinstance(source, Source) else Path(source)
    return CheckpointError(f"--init-from: none of the checkpoint's {n_source} tensors matches the network by name "
                           "and shape", path,
                           hint="fine-tune from a run of the same network (compare the two runs' plan.json "
                                "'network'; set it with --set network=...)")


# ---------------------------------------------------------------------------------------------------- the plan


def check_options(init_from: str | Path | None, freeze_encoder_epochs: int | None, warmup_epochs: int | None,
                  run_dir: str | Path | None = None, resume: bool = False) -> dict[str, Any] | None:
    """The fine-tuning options as one dict (None when none is given); :class:`UsageError` for a negative
    number, freezing or warmup without ``--init-from`` or a source inside the run folder being (re)started."""
    for flag, v in (("--freeze-encoder-epochs", freeze_encoder_epochs), ("--warmup-epochs", warmup_epochs)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise UsageError(f"{flag} must be a whole number of epochs >= 0, got {v!r}")
    if init_from is None:
        if freeze_encoder_epochs or warmup_epochs:
            raise UsageError("--freeze-encoder-epochs and --warmup-epochs fine-tune: they need --init-from",
                             hint="a resumed run keeps the settings recorded in its plan.json (training.init_from)")
        return None
    if run_dir is not None and not resume:
        from focusseg.io.paths import is_inside

        src = Path(init_from).expanduser()
        if src.exists() and is_inside(src, Path(run_dir)):
            raise UsageError("--init-from names the run folder being trained (--out), whose checkpoints training "
                             "replaces", src, hint="fine-tune into another --out")
    return {"init_from": init_from, "freeze_encoder_epochs": int(freeze_encoder_epochs or 0),
            "warmup_epochs": int(warmup_epochs or 0)}


def plan_entry(source: Source, freeze_encoder_epochs: int = 0, warmup_epochs: int = 0) -> dict[str, Any]:
    return {"source": str(source.path), "sha256": source.sha256, "freeze_encoder_epochs": int(freeze_encoder_epochs),
            "warmup_epochs": int(warmup_epochs)}


def settings(plan: dict) -> dict[str, Any] | None:
    """The plan's ``training.init_from`` entry (None when the run starts from scratch)."""
    entry = (plan.get("training") or {}).get(PLAN_KEY)
    if entry in (None, {}, False):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
        raise PlanError(f"training.{PLAN_KEY} must be an object with a 'source' path (a run folder or .pt), got "
                        f"{entry!r}")
    for key in ("freeze_encoder_epochs", "warmup_epochs"):
        v = entry.get(key, 0)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise PlanError(f"training.{PLAN_KEY}.{key} must be a whole number of epochs >= 0, got {v!r}")
    return entry


def prepare(plan: dict, options: dict[str, Any] | None) -> Source | None:
    """A fresh run: read the source named by ``options`` (from :func:`check_options`) or by the plan's
    ``training.init_from`` (a plan reused from a fine-tuned run), check before any preprocessing that some tensor
    matches the planned network, and record the source, its sha256, the settings and the tensors that will be
    re-initialised (``reinitialised``: what freezing leaves trainable) in the plan. Returns the source for
    :func:`callbacks_for` (None: from scratch)."""
    if options is not None:
        source = read_source(options["init_from"])
        freeze, warmup = options["freeze_encoder_epochs"], options["warmup_epochs"]
    else:
        entry = settings(plan)
        if entry is None:
            return None
        source = read_source(entry["source"])
        if entry.get("sha256") and entry["sha256"] != source.sha256:
            raise CheckpointError("--init-from: the checkpoint the plan records has changed since (sha256 differs)",
                                  source.path, hint="fine-tune with --init-from to record the file as it is now")
        freeze, warmup = entry.get("freeze_encoder_epochs", 0), entry.get("warmup_epochs", 0)
    report = match_shapes(_planned_shapes(plan), member_weights(source.weights, 0))
    if not report.loaded:
        raise no_match_error(source, len(source.weights))
    plan.setdefault("training", {})[PLAN_KEY] = {**plan_entry(source, freeze, warmup),
                                                 "reinitialised": report.reinitialised}
    if freeze:
        try:
            encoder = planned_encoder_names(plan)
        except Exception:  # noqa: BLE001  (no meta support: the real network is probed at train start)
            encoder = None
        if encoder == []:
            raise _no_encoder_error(plan)
    return source


def keep_on_resume(stored: dict, requested: dict, options: dict[str, Any] | None) -> None:
    """A resumed run: the stored plan's ``init_from`` entry goes into the requested plan unchanged (the source is
    not loaded again: the checkpoint holds the weights). Asking for other freeze/warmup settings, or for
    ``--init-from`` on a run that started from scratch, is a :class:`UsageError`; the same source is a note."""
    entry = (stored.get("training") or {}).get(PLAN_KEY)
    if entry is not None:
        requested.setdefault("training", {})[PLAN_KEY] = entry
    if options is None:
        return
    if entry is None:
        raise UsageError("--resume cannot add --init-from: this run started from scratch",
                         hint="fine-tune into a new run (another --out, or --overwrite)")
    for key in ("freeze_encoder_epochs", "warmup_epochs"):
        if options[key] and options[key] != entry.get(key, 0):
            raise UsageError(f"--resume cannot change {key.replace('_', '-')}: stored {entry.get(key, 0)}, requested "
                             f"{options[key]}", hint="resume without it (the stored settings continue)")
    print(f"note: --init-from is not applied again on --resume (the checkpoint holds the weights; the run started "
          f"from {entry['source']})", file=sys.stderr)


def _planned_shapes(plan: dict) -> dict[str, torch.Size]:
    """Name -> shape of one planned network, built on the meta device (no memory), else on the CPU."""
    from focusseg.nets.from_plan import build_network_from_plan

    try:
        with torch.device("meta"):
            net = build_network_from_plan(plan)
    except Exception:  # noqa: BLE001  (a network that cannot be built on the meta device)
        net = build_network_from_plan(plan)
    return {k: v.shape for k, v in net.state_dict().items()}


# ------------------------------------------------------------------------------------------------------- callbacks


def task_networks(task: Any) -> list[nn.Module]:
    """The trained network(s) of a task: ``SupervisedTask.network``, ``CycleTrainingTask.networks``."""
    if hasattr(task, "networks"):
        return list(task.networks)
    return [task.network]


class InitFrom:
    """Callback: at ``on_train_start`` (after the parts are built, before the first step) load the source into
    every network of the task, print the table and log it as an ``init_from`` event line. Only used for fresh
    runs (:func:`callbacks_for`)."""

    def __init__(self, source: Source, entry: dict[str, Any] | None = None) -> None:
        self.source: Source | None = source
        self.entry = entry or {}
        self.reports: list[LoadReport] = []

    def on_train_start(self, trainer: Any) -> None:
        from focusseg.runfolder import EpochLog

        source = self.source
        assert source is not None
        nets = task_networks(trainer.parts.task)
        self.reports = [load_matching(net, member_weights(source.weights, i), str(source.path))
                        for i, net in enumerate(nets)]
        if not any(r.loaded for r in self.reports):
            raise no_match_error(source, len(source.weights))
        print_report(self.reports[0])
        extra = {"networks": len(nets)} if len(nets) > 1 else {}
        EpochLog(trainer.run_dir).event("init_from", sha256=source.sha256,
                                        freeze_encoder_epochs=self.entry.get("freeze_encoder_epochs", 0),
                                        warmup_epochs=self.entry.get("warmup_epochs", 0), **extra,
                                        **self.reports[0].as_dict())
        self.source = None  # the weights are in the networks now: free the CPU copy


def encoder_parameter_names(network: nn.Module, example: torch.Tensor) -> list[str]:
    """The encoder's parameter names by the rule of the module docstring: one forward of ``example`` (on the
    network's device; meta works) in eval mode without gradients, recording the order in which modules start
    and which ones upsample (input and output with the example's number of dims, no spatial axis smaller in the
    output and one larger; ``nn.Linear`` never counts: on channels-last transformer tokens it widens the feature
    axis); every parameter of a module that starts before the first such module. Empty when nothing upsamples.
    The network's train/eval mode is restored."""
    order: dict[int, int] = {}
    ups: list[int] = []
    ndim = example.dim()

    def pre(module: nn.Module, args: tuple) -> None:
        order.setdefault(id(module), len(order))

    def post(module: nn.Module, args: tuple, out: Any) -> None:
        if isinstance(module, nn.Linear):  # acts on the last (feature) axis of channels-last tokens: never spatial
            return
        x = args[0] if args else None
        y = next((o for o in out if isinstance(o, torch.Tensor)), None) if isinstance(out, (list, tuple)) else out
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dim() == y.dim() == ndim):
            return
        grow = [int(b) - int(a) for a, b in zip(x.shape[2:], y.shape[2:])]
        if min(grow) >= 0 and max(grow) > 0:
            ups.append(order[id(module)])

    handles = []
    for m in network.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    was_training = network.training
    try:
        network.eval()
        with torch.no_grad():
            network(example)
    finally:
        for h in handles:
            h.remove()
        network.train(was_training)
    if not ups:
        return []
    first_up = min(ups)
    names: list[str] = []
    seen: set[int] = set()
    for mname, m in network.named_modules():
        idx = order.get(id(m))
        if idx is None or idx >= first_up:
            continue
        for pname, p in m.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                names.append(f"{mname}.{pname}" if mname else pname)
    return names


def _no_encoder_error(plan: dict) -> PlanError:
    net = plan.get("network")
    name = net.get("name") if isinstance(net, dict) else net
    return PlanError(f"--freeze-encoder-epochs: found no encoder in network {name!r} (no module upsamples in its "
                     "forward pass)", hint="fine-tune without --freeze-encoder-epochs")


def planned_encoder_names(plan: dict) -> list[str]:
    """:func:`encoder_parameter_names` of the plan's network, probed on the meta device at the plan's patch."""
    from focusseg.nets.from_plan import build_network_from_plan

    with torch.device("meta"):
        net = build_network_from_plan(plan)
        x = torch.zeros(1, len(plan["channel_names"]), *[int(s) for s in plan["patch_size"]])
    return encoder_parameter_names(net, x)


class FreezeEncoder:
    """Callback: the encoder (module docstring) does not train while ``trainer.epoch < epochs``; its tensors named
    in ``keep_trainable`` (those ``--init-from`` re-initialised, e.g. the first convolution with another channel
    count: freezing them would keep them random) train from the start.

    Frozen parameters get ``requires_grad = False`` and ``grad = None`` before every step of those epochs, so the
    optimiser skips them entirely (no step, no momentum, no weight decay); from epoch ``epochs`` on they train
    again. Checked before every batch, so a resumed run freezes exactly as long as an uninterrupted one.
    ``freeze_encoder`` / ``unfreeze_encoder`` event lines go to ``log.jsonl``."""

    def __init__(self, epochs: int, plan: dict | None = None, keep_trainable: Iterable[str] = ()) -> None:
        self.epochs = int(epochs)
        self.plan = plan
        self.keep_trainable = set(keep_trainable)
        self.names: list[str] = []
        self.params: list[torch.nn.Parameter] = []
        self.frozen = False

    def on_train_start(self, trainer: Any) -> None:
        if self.epochs <= 0 or trainer.epoch >= self.epochs:
            return
        plan = self.plan if self.plan is not None else trainer.plan
        nets = task_networks(trainer.parts.task)
        try:
            self.names = planned_encoder_names(plan)
        except Exception:  # noqa: BLE001  (no meta support: probe the real network on its device)
            p = next(nets[0].parameters())
            x = torch.zeros(1, len(plan["channel_names"]), *[int(s) for s in plan["patch_size"]], device=p.device,
                            dtype=p.dtype)
            self.names = encoder_parameter_names(nets[0], x)
        self.names = [n for n in self.names if n not in self.keep_trainable]  # re-initialised: trains from the start
        wanted = set(self.names)
        self.params = [p for net in nets for n, p in net.named_parameters() if n in wanted]
        if not self.params:
            raise _no_encoder_error(plan)
        self._sync(trainer)

    def before_batch(self, trainer: Any, requests: Any) -> None:
        if self.params:
            self._sync(trainer)

    def _sync(self, trainer: Any) -> None:
        from focusseg.runfolder import EpochLog

        want = trainer.epoch < self.epochs
        if want and not self.frozen:
            for p in self.params:
                p.requires_grad_(False)
                p.grad = None
            self.frozen = True
            EpochLog(trainer.run_dir).event("freeze_encoder", at_epoch=trainer.epoch, until_epoch=self.epochs,
                                            tensors=len(self.names),
                                            values=sum(p.numel() for p in self.params))
        elif not want and self.frozen:
            for p in self.params:
                p.requires_grad_(True)
            self.frozen = False
            EpochLog(trainer.run_dir).event("unfreeze_encoder", at_epoch=trainer.epoch)


class WarmupLR:
    """An LR controller wrapped with a linear warmup: ``step(it)`` lets the wrapped controller set the scheduled
    rate, then multiplies every parameter group's rate by ``(it + 1) / W`` while ``it < W``.

    The wrapped controller's state is the unscaled schedule (``state_dict`` is its own, so checkpoints are the same
    with and without warmup). A controller that does not rewrite the rate on a call (poly and cosine on the
    validation call) is not scaled twice: a group whose rate is still the one written here is scaled from the
    unscaled value remembered with it. Anything else (``max_iterations``, ...) is the wrapped controller's."""

    _own = ("controller", "optimizers", "warmup_iterations", "_written")

    def __init__(self, controller: Any, optimizers: list[torch.optim.Optimizer], warmup_iterations: int) -> None:
        object.__setattr__(self, "controller", controller)
        object.__setattr__(self, "optimizers", list(optimizers))
        object.__setattr__(self, "warmup_iterations", int(warmup_iterations))
        object.__setattr__(self, "_written", {})

    def factor(self, iteration: int) -> float:
        w = self.warmup_iterations
        return 1.0 if w <= 0 or iteration >= w else (max(int(iteration), 0) + 1) / w

    def step(self, iteration: int, metric: float | None = None) -> float:
        lr = self.controller.step(iteration, metric)
        f = self.factor(iteration)
        for opt in self.optimizers:
            for group in opt.param_groups:
                cur = float(group["lr"])
                prev = self._written.get(id(group))
                base = prev[1] if prev is not None and cur == prev[0] else cur
                group["lr"] = base * f
                self._written[id(group)] = (group["lr"], base)
        return lr * f if isinstance(lr, (int, float)) else lr

    def state_dict(self) -> dict[str, Any]:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state)

    def __getattr__(self, name: str) -> Any:
        if name in WarmupLR._own:  # not set yet (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.controller, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in WarmupLR._own:
            object.__setattr__(self, name, value)
        else:
            setattr(self.controller, name, value)


class LRWarmup:
    """Callback: at ``on_train_start`` wrap the run's LR controller in :class:`WarmupLR` over ``epochs`` epochs
    (``epochs * training.iterations_per_epoch`` iterations; a resumed run continues at its iteration)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = int(epochs)

    def on_train_start(self, trainer: Any) -> None:
        if self.epochs <= 0 or isinstance(trainer.parts.lr, WarmupLR):
            return
        ipe = int(trainer.plan["training"]["iterations_per_epoch"])
        trainer.parts.lr = WarmupLR(trainer.parts.lr, trainer.parts.task.optimizers, self.epochs * ipe)


def callbacks_for(plan: dict, resume: bool, source: Source | None = None) -> list[Any]:
    """The callbacks the plan's ``training.init_from`` asks for: :class:`InitFrom` (fresh runs only, with the
    source :func:`prepare` read), :class:`FreezeEncoder` and :class:`LRWarmup` (fresh and resumed runs)."""
    entry = settings(plan)
    if entry is None:
        return []
    out: list[Any] = []
    if not resume:
        if source is None:
            source = read_source(entry["source"])
        out.append(InitFrom(source, entry))
    if entry.get("freeze_encoder_epochs", 0):
        out.append(FreezeEncoder(entry["freeze_encoder_epochs"], plan, entry.get("reinitialised", ())))
    if entry.get("warmup_epochs", 0):
        out.append(LRWarmup(entry["warmup_epochs"]))
    return out


__all__ = [
    "FreezeEncoder",
    "InitFrom",
    "LRWarmup",
    "LoadReport",
    "Source",
    "WarmupLR",
    "callbacks_for",
    "check_options",
    "encoder_parameter_names",
    "keep_on_resume",
    "load_matching",
    "match_shapes",
    "network_weights",
    "planned_encoder_names",
    "prepare",
    "print_report",
    "read_source",
    "report_table",
    "resolve_source",
]
