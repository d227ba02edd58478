"""Loading a trained network for inference: which checkpoint of a run folder predicts, and the checks a loaded
checkpoint passes before its network is built.

Trust: a run's checkpoint is loaded with ``weights_only=True`` onto the CPU (no code can run,
:func:`focusseg.io.checkpoint.load_checkpoint`), then checked here: a plan with the fields inference needs, finite
weights that fit the network the plan describes. Every refusal is a :class:`~focusseg.errors.CheckpointError`
naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from focusseg.errors import CheckpointError, FocussegError, MissingFileError, UsageError, one_line
from focusseg.nets.from_plan import build_inference_module

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


def build_network(plan: dict, state_dict: Mapping[str, torch.Tensor], source: str | Path | None) -> torch.nn.Module:
    """The plan's inference module with ``state_dict`` loaded, on the CPU (moved to a device by its caller).

    Args:
        plan: the checkpoint's plan (:func:`checkpoint_parts` has checked its fields).
        state_dict: the network weights.
        source: the file they came from, named in every error.

    Returns:
        the network with the weights loaded, on the CPU.

    Raises:
        CheckpointError: weights that are not finite, a plan that builds no network, or weights that do not fit it.
    """
    for name, t in state_dict.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"network weight {name!r} holds NaN/inf (a diverged training?)", source,
                                  hint="use another checkpoint (--checkpoint) or retrain with a lower learning rate")
    try:
        network = build_inference_module(plan)
    except FocussegError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"its plan does not build a network ({type(exc).__name__}: "
                              f"{one_line(exc)[:200]})", source) from exc
    try:
        network.load_state_dict(state_dict)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = one_line(exc)[:240]
        raise CheckpointError(f"network weights do not fit the network its plan describes ({first})", source) from exc
    return network
