"""Options and checks shared by several ``focusseg`` commands, each written once.

The checks refuse a bad argument with a :class:`~focusseg.errors.UsageError` before the command does any work
(a fingerprint, loading a run); what the layers below check as well is left to them. Imports of focusseg's
modules happen inside the functions, so that starting the CLI stays light (no torch).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

#: Where commands print their results (stdout) and their notes about chosen defaults (stderr).
console = Console()
err = Console(stderr=True)

DATA = typer.Argument(..., help="An nnU-Net v2 raw dataset folder (dataset.json, imagesTr/, labelsTr/).")

#: ``--configuration`` of plan / train / crossval: focusseg's 3d / 2d, or with --nnunet-plans nnU-Net's configuration.
CONFIGURATION_OPTION = typer.Option(
    None, "--configuration", help="3d (patches, the default) or 2d (slices along the lowest-resolution axis, "
                                  "nnU-Net's 2d): same as --set configuration=2d. With --nnunet-plans: the plans' "
                                  "configuration, 3d_fullres (default) or 3d_lowres (3d_cascade_fullres and 2d are "
                                  "refused).")
#: ``--nnunet-plans`` of plan / train / crossval.
NNUNET_PLANS_OPTION = typer.Option(
    None, "--nnunet-plans", help="Train on nnU-Net's plans: this nnUNetPlans.json's --configuration (spacing, patch, "
                                 "batch, normalisation, network) with the dataset's dataset.json, instead of "
                                 "focusseg's planner. Recipes and --set apply on top; a recipe's network is ignored "
                                 "(one warning line).")


def split_configuration(set_: list[str], configuration: str | None, nnunet_plans: Path | None
                        ) -> tuple[dict, str | None]:
    """``(overrides, nnU-Net configuration)``: ``--configuration`` is focusseg's (an override) without
    ``--nnunet-plans`` and the plans' configuration with it."""
    if nnunet_plans is None:
        return parse_overrides(set_, configuration), None
    return parse_overrides(set_, None), configuration


#: The key of the click context object under which :func:`focusseg.cli.main` passes its command line.
ARGV_KEY = "argv"


def parse_overrides(assignments: list[str], configuration: str | None = None) -> dict:
    """``--set`` assignments as nested plan overrides, plus ``--configuration`` (``configuration: "2d"``).

    Args:
        assignments: ``KEY=VALUE`` strings (``training.batch_size=4``; the value is JSON where it parses).
        configuration: ``3d``, ``2d`` or None.

    Returns:
        The overrides (:func:`focusseg.planning.planner.parse_set`), with ``configuration`` when given.

    Raises:
        UsageError: a malformed assignment or an unknown configuration.
    """
    from focusseg.errors import UsageError
    from focusseg.planning.planner import parse_set
    from focusseg.planning.twod import CONFIGURATIONS

    try:
        overrides = parse_set(assignments)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if configuration is not None:
        if configuration not in CONFIGURATIONS:
            raise UsageError(f"--configuration must be one of {', '.join(CONFIGURATIONS)}, got {configuration!r}")
        overrides["configuration"] = configuration
    return overrides


def check_recipe_form(recipe_form: str | None) -> None:
    """Refuse a ``--recipe-form`` that is not a recipe form (:data:`focusseg.recipes.FORMS`); None passes.

    Raises:
        UsageError: an unknown form (checked here, before planning, rather than after the fingerprint).
    """
    from focusseg.errors import UsageError
    from focusseg.recipes import FORMS

    if recipe_form is not None and recipe_form not in FORMS:
        raise UsageError(f"--recipe-form must be one of {', '.join(FORMS)}, got {recipe_form!r}")


def check_time_budget(minutes: float | None) -> None:
    """Refuse a ``--time-budget`` that is not a positive number of minutes; None (no budget) passes.

    Raises:
        UsageError: zero, negative or NaN minutes.
    """
    from focusseg.errors import UsageError

    if minutes is not None and not minutes > 0:
        raise UsageError(f"--time-budget must be a positive number of minutes, got {minutes}")


def check_checkpoint(checkpoint: str) -> None:
    """Refuse a ``--checkpoint`` that is not one of :data:`focusseg.inference.loading.CHECKPOINTS` (best,
    final, latest), before any run is loaded.

    Raises:
        UsageError: any other name.
    """
    from focusseg.errors import UsageError
    from focusseg.inference.loading import CHECKPOINTS

    if checkpoint not in CHECKPOINTS:
        raise UsageError(f"--checkpoint must be {', '.join(CHECKPOINTS[:-1])} or {CHECKPOINTS[-1]}, "
                         f"got {checkpoint!r}")


def parse_weights(weights: str | None) -> list[float] | None:
    """``--weights 0.5,0.3,0.2`` as numbers; None or empty: no weights (equal).

    Raises:
        UsageError: an item that is not a number.
    """
    from focusseg.errors import UsageError

    try:
        return [float(x) for x in weights.split(",")] if weights else None
    except ValueError as exc:
        raise UsageError(f"--weights must be comma-separated numbers, got {weights!r}") from exc


def part_option(num_parts: int | None, part_id: int | None) -> tuple[int, int] | None:
    """``(part id, number of parts)`` from ``--num-parts/--part-id``, else from ``RANK/WORLD_SIZE`` when torchrun
    launched this process (:func:`focusseg.engine.distributed.prediction_share`: the same variables set without
    torchrun are ignored with a warning); None: all cases.

    Raises:
        UsageError: one option without the other, or a part id outside ``0 .. num_parts - 1``.
    """
    from focusseg.engine.distributed import prediction_share
    from focusseg.errors import UsageError

    if num_parts is None and part_id is None:
        return prediction_share()
    if num_parts is None or part_id is None:
        raise UsageError("--num-parts and --part-id go together (e.g. --num-parts 4 --part-id 0)")
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise UsageError(f"--part-id must be in 0..{num_parts - 1} for --num-parts {num_parts}, got {part_id}")
    return part_id, num_parts


def check_dataset_or_fail(data: Path, workers: int = 2, progress: bool = False) -> None:
    """Run the dataset check (:func:`focusseg.data.check.check_dataset`).

    Raises:
        CheckFailed: with every problem found (the handler prints one ``error:`` line each).
    """
    from focusseg.data.check import check_dataset
    from focusseg.errors import CheckFailed

    problems = check_dataset(data, workers=workers, progress=progress)
    if problems:
        raise CheckFailed(problems)


def invoked_argv(ctx: typer.Context) -> list[str]:
    """The command line of this invocation (:func:`focusseg.cli.main` passes it in the click context under
    :data:`ARGV_KEY`), else ``sys.argv``; a command that relaunches itself (``train --devices N``) needs it."""
    obj = ctx.find_root().obj
    argv = obj.get(ARGV_KEY) if isinstance(obj, dict) else None
    return list(argv if argv is not None else sys.argv[1:])


def without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE`` (e.g. ``--devices`` before a relaunch under torchrun)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(f"{name}="):
            out.append(a)
    return out
