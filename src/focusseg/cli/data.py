"""Commands about a dataset and what can be trained on it: ``check``, ``plan``, ``recipes``, ``nets``, ``demo``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from focusseg.cli.options import (
    CONFIGURATION_OPTION,
    DATA,
    NNUNET_PLANS_OPTION,
    check_recipe_form,
    console,
    split_configuration,
)

if TYPE_CHECKING:
    import torch


def check(data: Path = DATA, workers: int = typer.Option(2, help="Parallel processes.")) -> None:
    """Validate a dataset before training: one line per problem, naming the file; exit 1 on any problem.

    Example: `focusseg check data/Dataset004_Hippocampus`
    """
    from focusseg.api import check as check_data

    check_data(data, workers=workers, progress=True).raise_for_problems()
    console.print(f"[green]{data}: no problems found[/green]")


def plan(data: Path = DATA, out: Path | None = typer.Option(None, help="Where to write plan.json (default: print)."),
         device: str = typer.Option("auto", help="Plan for cpu or cuda (auto: this machine). Planning for cuda "
                                                 "needs no GPU here."),
         gpu_memory: float | None = typer.Option(
             None, "--gpu-memory", help="GB of the card to plan for (cuda; default: the visible card's memory, or "
                                        "the m preset's 8 GB when none is visible)."),
         preset: str | None = typer.Option(
             None, help="GPU budget: m (8 GB), l (24), xl (40), or whole (the card minus max(1 GB, 10 %)); or "
                        "nnU-Net's Residual Encoder presets resenc-m, resenc-l, resenc-xl (the plan and network "
                        "nnUNetPlannerResEncM/L/XL give, on any device)."),
         set_: list[str] = typer.Option([], "--set", help="Override a field: --set training.batch_size=4"),
         configuration: str | None = CONFIGURATION_OPTION,
         nnunet_plans: Path | None = NNUNET_PLANS_OPTION,
         recipe: str | None = typer.Option(None, help="Apply a recipe's plan overrides."),
         recipe_form: str | None = typer.Option(
             None, "--recipe-form", help="The recipe's cpu (scaled-down) or gpu (the paper's) form; default: the "
                                         "form of the device planned for."),
         no_check: bool = typer.Option(False, "--no-check", help="Skip the dataset check (`focusseg check`).")
         ) -> None:
    """Fingerprint a dataset and write a human-readable plan (every field can be overridden).

    The dataset is checked first (as `focusseg check`); any problem stops here. For cuda, patch, batch and the
    DynUNet's per-axis strides and kernels are chosen to fit a GPU-memory budget (`--gpu-memory`, `--preset`);
    the plan records `gpu_memory_gb`, `preset` and `memory_estimate_gb`. A recipe is applied in the form of the
    device planned for (`recipe_form`: gpu = the paper's configuration, cpu = the scaled-down one; `focusseg
    recipes` shows both), as training applies it. Examples:
    `focusseg plan DATA --out plan.json --set patch_size=[48,64,48]`,
    `focusseg plan DATA --device cuda --gpu-memory 80 --preset l --out plan.json`,
    `focusseg plan DATA --device cuda --gpu-memory 80 --recipe fp-pet --out plan.json`,
    `focusseg plan DATA --nnunet-plans nnUNetPlans.json --configuration 3d_fullres --out plan.json`
    """
    from focusseg.api import plan as plan_data

    overrides, nnunet_configuration = split_configuration(set_, configuration, nnunet_plans)
    check_recipe_form(recipe_form)
    p = plan_data(data, out=out, device=device, gpu_memory=gpu_memory, preset=preset, overrides=overrides,
                  recipe=recipe, recipe_form=recipe_form, check=not no_check, progress=True,
                  nnunet_plans=nnunet_plans, configuration=nnunet_configuration)
    if out:
        console.print(f"plan written to {out}")
    else:
        print(json.dumps(p, indent=2))


def recipes(name: str | None = typer.Argument(None, help="Show only this recipe (a name or a path to a JSON).")
            ) -> None:
    """List the packaged recipes (one per paper system), each with its two forms side by side: the CPU form
    (scaled down for a CPU; what it changes from the paper) and the GPU form (the paper's own configuration; where
    focusseg still differs). Training picks the form by device (gpu on cuda), `--recipe-form cpu|gpu` forces one.

    Example: `focusseg recipes flare21-fast`
    """
    from rich.table import Table

    from focusseg.api import resolve_recipe
    from focusseg.plugins import RECIPES
    from focusseg.recipes import form_settings, recipe_names, recipe_plan

    chosen = [resolve_recipe(name)] if name else [resolve_recipe(n) for n in recipe_names()]
    if not name:  # then the recipes plugins registered (resolve_recipe loaded the installed plugins)
        chosen += [resolve_recipe(n) for n in RECIPES.names() if n not in recipe_names()]
    for r in chosen:
        table = Table(title=f"{r['name']}: {r.get('description', '')}", title_justify="left", show_lines=True,
                      expand=True)
        table.add_column("", style="bold", no_wrap=True)
        table.add_column("CPU form (scaled down)", ratio=1)
        table.add_column("GPU form (the paper's)", ratio=1)
        cpu, gpu = form_settings(recipe_plan(r, "cpu", "cpu")[0]), form_settings(recipe_plan(r, "cuda", "gpu")[0])
        for key in cpu:
            table.add_row(key, cpu[key], gpu[key])
        table.add_row("notes", str(r.get("scaled_down", "")), str((r.get("gpu") or {}).get("notes", "")))
        console.print(table, highlight=False)
        if r.get("paper"):
            console.print(f"paper: {r['paper']}\n", highlight=False)


def nets(patch: str = typer.Option("64,64,64", help="Patch size, comma-separated."),
         in_channels: int = typer.Option(1), out_channels: int = typer.Option(3),
         names: str | None = typer.Option(None, help="Comma-separated names (default: all)."),
         device: str = typer.Option("auto"),
         time_steps: bool | None = typer.Option(
             None, "--time/--no-time", help="Time a training step on the device (default: on CUDA only)."),
         plan_file: Path | None = typer.Option(
             None, "--plan", help="Describe this plan.json's network at its patch and batch instead.")) -> None:
    """List networks with parameter count, FLOPs for a patch, and a training-step time on this device.

    With `--plan plan.json`: the planned network's parameters, forward GFLOPs (one sample, counted on the meta
    device), estimated training memory at the plan's patch and batch (the planner's estimate; not a measurement)
    and the plan's GPU budget. Example: `focusseg nets --plan runs/hippo/plan.json`
    """
    from rich.table import Table

    from focusseg.devices import resolve_device
    from focusseg.plugins import load_plugins

    load_plugins()  # the installed plugins' networks are listed too
    dev = resolve_device(device)
    timed = dev.type == "cuda" if time_steps is None else time_steps
    if plan_file is not None:
        _describe_planned_network(plan_file, dev, timed)
        return
    from focusseg.nets import network_names
    from focusseg.planning.profile import describe_networks

    size = tuple(int(x) for x in patch.split(","))
    chosen = names.split(",") if names else network_names()
    rows = describe_networks(chosen, size, in_channels, out_channels, dev, measure_time=timed)
    table = Table(title=f"networks at patch {size}")
    for col in rows[0].keys() if rows else []:
        table.add_column(str(col))
    for r in rows:
        table.add_row(*[f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()])
    console.print(table)


def _describe_planned_network(plan_file: Path, dev: torch.device, timed: bool) -> None:
    """``nets --plan``: one table of the planned network (:func:`focusseg.planning.profile.describe_plan`)."""
    from rich.table import Table

    from focusseg.errors import PlanError, one_line
    from focusseg.planning.profile import describe_plan
    from focusseg.runfolder import read_plan
    from focusseg.workflows.plan import fit_patch_to_network

    planned = read_plan(plan_file)
    if not all(k in planned for k in ("network", "patch_size", "channel_names", "n_classes")):
        raise PlanError("not a focusseg plan (needs network, patch_size, channel_names, n_classes)", plan_file)
    try:
        planned = fit_patch_to_network(planned)  # as training does: a recipe's network may need a rounder patch
        row = describe_plan(planned, dev, measure_time=timed)
    except (ValueError, TypeError, KeyError) as exc:
        raise PlanError(f"the planned network does not build ({one_line(exc)})", plan_file) from exc
    table = Table(title=f"planned network ({plan_file})")
    table.add_column("")
    table.add_column("value")
    units = {"gflops": " GFLOPs forward / sample", "train_memory_gb": " GB (estimate)", "budget_gb": " GB",
             "step_s": " s"}
    for key, v in row.items():
        text = "-" if v is None else (f"{v:,.3g}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int)
                                                                               else str(v)))
        table.add_row(key, text + (units.get(key, "") if v is not None else ""))
    console.print(table)


def demo(out: Path = typer.Option(Path("runs/demo"), help="Folder for the demo dataset and run."),
         minutes: float = typer.Option(2.5, help="Training time budget in minutes.")) -> None:
    """Generate a small synthetic dataset, then plan -> preprocess -> train -> predict -> evaluate (< 5 min, CPU).

    Example: `focusseg demo --out runs/demo`
    """
    from focusseg.workflows.demo import run_demo

    run_demo(out, minutes=minutes, console=console)
