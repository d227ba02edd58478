"""Loading a trained network for inference: which checkpoint of a run folder predicts, and the checks a loaded
checkpoint passes before its network is built.

Trust: a run's checkpoint is loaded with ``weights_only=True`` onto the CPU (no code can run,
:func:`focusseg.io.checkpoint.load_checkpoint`), then checked here: a plan with the fields inference needs, finite
weights that fit the network the plan describes, and a network within the cost bounds (parameters, activation
memory), known from a build on the meta device before anything is allocated (:func:`build_network`). Every refusal
is a :class:`~focusseg.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from focusseg.errors import CheckpointError, FocussegError, MissingFileError, UsageError, one_line
from focusseg.nets.from_plan import build_inference_module
from focusseg.runfolder import fold_dirs, is_crossval_dir
from focusseg.settings import inference_settings

CHECKPOINTS = ("best", "final", "latest")
#: Plan fields inference needs; a checkpoint whose plan lacks one is refused when loaded, not mid-prediction.
REQUIRED_PLAN_KEYS = ("channel_names", "labels", "n_classes", "patch_size", "network", "training", "inference",
                      "normalization", "target_spacing")
TRAIN_HINT = "train first: focusseg train DATA --out RUN_DIR"


def select_checkpoint(run_dir: Path, which: str) -> Path:
    """``run_dir/checkpoint_<which>.pt`` (``best`` falls back to ``final``, then ``latest``): the one rule for which
    checkpoint of a run folder predicts and is exported."""
    if which not in CHECKPOINTS:
        raise UsageError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {which!r}")
    if not run_dir.exists():
        raise MissingFileError("run folder not found", run_dir, hint=TRAIN_HINT)
    if not run_dir.is_dir():
        raise UsageError("not a run folder (a file)", run_dir)
    names = [which] if which != "best" else list(CHECKPOINTS)
    for name in names:
        p = run_dir / f"checkpoint_{name}.pt"
        if p.is_file():
            return p
    wanted = " or ".join(f"checkpoint_{n}.pt" for n in names)
    others = sorted(p.name for p in run_dir.glob("checkpoint_*.pt") if p.is_file())
    hint = f"this run folder has {', '.join(others)}: pass --checkpoint" if others else TRAIN_HINT
    raise MissingFileError(f"no {wanted} in this run folder", run_dir, hint=hint)


def model_files(path: str | Path, which: str = "best") -> list[Path]:
    """The checkpoint files ``focusseg predict`` loads from ``path``: a run folder's :func:`select_checkpoint`, or
    that of every finished fold of a cross-validation folder (for ``--expect-sha256`` and the digests printed).

    Raises:
        MissingFileError / UsageError: as :func:`select_checkpoint`.
    """
    path = Path(path)
    if is_crossval_dir(path):
        return [select_checkpoint(d, which) for d in fold_dirs(path)]
    return [select_checkpoint(path, which)]


def checkpoint_parts(state: Mapping, path: str | Path | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(plan, network weights)`` of a loaded checkpoint, checked: the plan is a dict with
    :data:`REQUIRED_PLAN_KEYS`, the weights a dict of tensors. A :class:`CheckpointError` naming ``path``
    otherwise."""
    plan = state.get("plan") if isinstance(state, Mapping) else None
    if not isinstance(plan, dict):
        raise CheckpointError(f"holds no plan (a {type(plan).__name__}): not a focusseg checkpoint", path)
    missing = [k for k in REQUIRED_PLAN_KEYS if k not in plan]
    if missing:
        raise CheckpointError(f"its plan lacks {', '.join(missing)}: not a focusseg checkpoint, or a damaged one",
                              path)
    if not isinstance(plan["inference"], dict) or not isinstance(plan["training"], dict):
        raise CheckpointError("its plan's 'inference' and 'training' must be objects", path)
    if not isinstance(plan["channel_names"], (dict, list)) or not plan["channel_names"]:
        raise CheckpointError(f"its plan's channel_names {plan['channel_names']!r} is not a non-empty mapping", path)
    weights = state.get("network")
    if not isinstance(weights, dict) or not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError("holds no network weights (a dict of tensors under 'network')", path)
    return plan, weights


#: Most parameters a plan's network may have (2e9 fp32 values = 8 GiB of weights; the largest STU-Net has 1.4e9).
MAX_PARAMETERS = 2_000_000_000
#: Feature maps of the first stage alive at once while one batch of windows passes (its input, normalised and
#: activated copies, the skip kept for the decoder) in :func:`activation_bytes`.
ACTIVATION_FACTOR = 4
#: Largest estimated activation memory of one inference batch (:func:`activation_bytes`): above any single
#: accelerator's memory, so only an absurd plan is refused.
MAX_ACTIVATION_BYTES = 256 << 30
#: Factory functions whose result is a weight (sized by the network) rather than a value the constructor computes
#: with (``arange``, ``linspace``, ``tensor`` ... stay on the CPU in :func:`meta_network`'s second attempt).
_WEIGHT_FACTORIES = (torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint,
                     torch.empty_strided, torch.eye)


class _WeightsOnMeta(TorchFunctionMode):
    """Weight-sized tensors created without a device go to the meta device; small value tensors (``linspace``,
    ``arange``, ``tensor``) stay on the CPU, for constructors that compute with them (``.item()``)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = dict(kwargs or {})
        if func in _WEIGHT_FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _build(plan: dict, source: str | Path | None) -> torch.nn.Module:
    try:
        return build_inference_module(plan)
    except FocussegError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"its plan does not build a network ({type(exc).__name__}: "
                              f"{one_line(exc)[:200]})", source) from exc


def meta_network(plan: dict, source: str | Path | None = None) -> torch.nn.Module | None:
    """The plan's inference module with its weights on the meta device: shapes without memory, so a plan's cost
    is known before anything is allocated for it. Built with ``torch.device("meta")``; a constructor that computes
    with tensor values (``.item()``, which meta tensors cannot give) is built again with only its weight-sized
    tensors on the meta device.

    Args:
        plan: the checkpoint's plan.
        source: the file it came from, named in every error.

    Returns:
        the meta module, or None when neither way builds it (the caller then builds it for real and checks it).

    Raises:
        CheckpointError: a plan that builds no network (an unknown name, bad arguments).
    """
    for mode in (lambda: torch.device("meta"), _WeightsOnMeta):
        try:
            with mode():
                return _build(plan, source)
        except (RuntimeError, NotImplementedError):  # a constructor that needs real values (meta tensors have none)
            continue
    return None


def parameter_count(network: torch.nn.Module) -> int:
    """Parameters of ``network`` (meta or real), counted once each."""
    return sum(p.numel() for p in network.parameters())


def first_stage_width(network: torch.nn.Module, default: int) -> int:
    """Output channels of the first convolution registered in ``network`` (the full-resolution stage of the
    encoders focusseg builds), or ``default`` when it has none."""
    convs = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    for module in network.modules():
        if isinstance(module, convs):
            return int(module.out_channels)
    return default


def activation_bytes(plan: dict, width: int) -> int:
    """Estimated activation memory of one inference batch of windows:
    ``width x patch voxels x inference batch x 4 bytes (fp32) x ACTIVATION_FACTOR``, where ``width`` is the first
    stage's width (:func:`first_stage_width`): the first stage runs at full resolution and holds the largest
    feature maps; deeper stages are smaller by their downsampling. An order of magnitude, not a measurement."""
    batch = inference_settings(plan).batch_size
    return int(width) * math.prod(int(p) for p in plan["patch_size"]) * int(batch) * 4 * ACTIVATION_FACTOR


def check_fit(network: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | Path | None) -> None:
    """Refuse weights whose names or shapes differ from ``network``'s (a meta module: nothing allocated).

    Raises:
        CheckpointError: missing or unexpected weights, or a weight of another shape (the first few named).
    """
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    optional = ("num_batches_tracked",)  # load_state_dict fills a missing BatchNorm counter itself
    missing = [k for k in expected if k not in state_dict and not k.endswith(optional)]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k}: weights {list(state_dict[k].shape)}, network {list(shape)}" for k, shape in expected.items()
              if k in state_dict and tuple(state_dict[k].shape) != shape]
    problems = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("shape of", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{what} {', '.join(items[:3])}{more}")
    if problems:
        raise CheckpointError(f"network weights do not fit the network its plan describes ({'; '.join(problems)})",
                              source)


def build_network(plan: dict, state_dict: Mapping[str, torch.Tensor], source: str | Path | None) -> torch.nn.Module:
    """The plan's inference module with ``state_dict`` loaded, on the CPU (moved to a device by its caller).

    Before anything is allocated, the network is built on the meta device (:func:`meta_network`) and refused when
    it has more than :data:`MAX_PARAMETERS` parameters, when its weights' names or shapes differ from
    ``state_dict`` (:func:`check_fit`), or when one inference batch would need more than
    :data:`MAX_ACTIVATION_BYTES` of activations (:func:`activation_bytes`); then it is built for real.

    Args:
        plan: the checkpoint's plan (:func:`checkpoint_parts` has checked its fields).
        state_dict: the network weights.
        source: the file they came from, named in every error.

    Returns:
        the network with the weights loaded, on the CPU.

    Raises:
        CheckpointError: weights that are not finite, a plan that builds no network or one over a cost bound, or
            weights that do not fit it.
    """
    for name, t in state_dict.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"network weight {name!r} holds NaN/inf (a diverged training?)", source,
                                  hint="use another checkpoint (--checkpoint) or retrain with a lower learning rate")
    meta = meta_network(plan, source)
    checked = meta is not None
    if meta is not None:
        check_cost(plan, meta, source)
        check_fit(meta, state_dict, source)
        meta = None
    try:
        network = _build(plan, source)
    except RuntimeError as exc:
        raise CheckpointError(f"its plan does not build a network (RuntimeError: {one_line(exc)[:200]})",
                              source) from exc
    if not checked:  # built for real only: the same bounds, checked now
        check_cost(plan, network, source)
    try:
        network.load_state_dict(state_dict)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = one_line(exc)[:240]
        raise CheckpointError(f"network weights do not fit the network its plan describes ({first})", source) from exc
    return network


def check_cost(plan: dict, network: torch.nn.Module, source: str | Path | None) -> None:
    """Refuse a network over :data:`MAX_PARAMETERS` parameters or :data:`MAX_ACTIVATION_BYTES` of estimated
    activations per inference batch (:func:`activation_bytes`).

    Raises:
        CheckpointError: naming ``source``, the count or estimate and the bound.
    """
    n = parameter_count(network)
    if n > MAX_PARAMETERS:
        raise CheckpointError(f"its plan's network has {n:,} parameters (at most {MAX_PARAMETERS:,}): refused "
                              "before allocating it", source)
    width = first_stage_width(network, default=len(plan["channel_names"]))
    need = activation_bytes(plan, width)
    if need > MAX_ACTIVATION_BYTES:
        raise CheckpointError(f"its plan needs ~{need / 2**30:,.0f} GiB of activations per inference batch (first "
                              f"stage width {width} x patch {list(plan['patch_size'])} x batch "
                              f"{inference_settings(plan).batch_size} x 4 B x {ACTIVATION_FACTOR}; at most "
                              f"{MAX_ACTIVATION_BYTES / 2**30:,.0f} GiB): refused", source)
