"""Training commands: ``train`` (one fold into a run folder; ``--devices N`` relaunches itself under torchrun),
``crossval`` (folds of a cross-validation), ``best`` (rank cross-validations and their ensembles)."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from focusseg.cli.options import (
    CONFIGURATION_OPTION,
    DATA,
    NNUNET_PLANS_OPTION,
    check_recipe_form,
    check_time_budget,
    console,
    invoked_argv,
    split_configuration,
    without_option,
)


def train(ctx: typer.Context, data: Path = DATA,
          out: Path = typer.Option(..., help="The run folder (plan, checkpoints, log)."),
          fold: str = typer.Option("0", help="Fold 0-4 of the 5-fold split, or 'all'."),
          recipe: str = typer.Option("default", help="A recipe name (`focusseg recipes`) or a path to a JSON."),
          recipe_form: str | None = typer.Option(
              None, "--recipe-form", help="The recipe's cpu (scaled-down) or gpu (the paper's) form; default: gpu on "
                                          "cuda, cpu otherwise (a resumed run keeps its form)."),
          time_budget: float | None = typer.Option(None, help="Minutes of wall time; stops there, keeps best."),
          device: str = typer.Option("auto", help="cpu, cuda or auto."),
          resume: bool = typer.Option(False, "--resume", help="Continue from checkpoint_latest.pt exactly."),
          plan_file: Path | None = typer.Option(None, "--plan", help="Use this plan.json instead of planning."),
          preprocessed: Path | None = typer.Option(None, help="Preprocessed store to (re)use."),
          set_: list[str] = typer.Option([], "--set", help="Override a plan field: --set training.max_epochs=50"),
          configuration: str | None = CONFIGURATION_OPTION,
          nnunet_plans: Path | None = NNUNET_PLANS_OPTION,
          no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
          no_check: bool = typer.Option(False, "--no-check", help="Skip the dataset check before training."),
          overwrite: bool = typer.Option(
              False, "--overwrite", help="Delete this run folder's earlier focusseg results and start clean."),
          init_from: Path | None = typer.Option(
              None, "--init-from", help="Fine-tune: start from this run folder's best checkpoint (or a .pt file); "
                                        "every tensor whose name and shape match is loaded."),
          freeze_encoder_epochs: int | None = typer.Option(
              None, "--freeze-encoder-epochs", help="With --init-from: the encoder does not train for N epochs."),
          warmup_epochs: int | None = typer.Option(
              None, "--warmup-epochs", help="With --init-from: the learning rate rises linearly over N epochs."),
          devices: int = typer.Option(
              1, "--devices", help="Train on N processes (N GPUs on cuda, N CPU processes with Gloo): launches itself "
                                   "through torchrun (same as `torchrun --nproc_per_node=N -m focusseg train ...`)."),
          logger: str = typer.Option(
              "none", "--logger", help="Also log scalars to: none, or tensorboard (RUN/tensorboard/; needs the "
                                       "tensorboard package, extra `tracking`).")
          ) -> None:
    """Check the dataset, plan, preprocess and train one fold; then predict and score the held-out cases.

    A run folder belongs to one fold and one plan: training into it again needs `--resume` (continue; only
    schedule/inference changes such as `--set training.max_epochs=...` are accepted) or `--overwrite`.
    Example: `focusseg train data/Dataset004_Hippocampus --out runs/hippo --fold 0 --time-budget 30`;
    on nnU-Net's plans: `focusseg train DATA --out runs/nn --nnunet-plans nnUNetPlans.json --configuration 3d_fullres`
    """
    from focusseg.api import train as train_fold
    from focusseg.errors import UsageError
    from focusseg.reporting.observers import make_loggers

    if devices != 1:
        from focusseg.engine.distributed import World, launch_self

        if devices < 1:
            raise UsageError(f"--devices must be a whole number >= 1, got {devices}")
        if not World.env_says_distributed():  # relaunch this command on N processes; they find the world in env
            raise typer.Exit(launch_self(without_option(invoked_argv(ctx), "--devices"), devices))
    # --resume with --overwrite: refused by run_training, with the same message
    check_time_budget(time_budget)
    check_recipe_form(recipe_form)
    overrides, nnunet_configuration = split_configuration(set_, configuration, nnunet_plans)
    run = train_fold(data, out, fold=fold, recipe=recipe, recipe_form=recipe_form,
                     overrides=overrides, time_budget=time_budget, device=device,
                     resume=resume, plan=plan_file, preprocessed=preprocessed, progress=not no_progress,
                     check=not no_check, overwrite=overwrite, init_from=init_from,
                     freeze_encoder_epochs=freeze_encoder_epochs, warmup_epochs=warmup_epochs,
                     callbacks=make_loggers(logger), nnunet_plans=nnunet_plans, configuration=nnunet_configuration)
    console.print_json(data=run.summary)


def crossval(data: Path = DATA,
             out: Path = typer.Option(..., help="The cross-validation folder (fold_K runs inside)."),
             folds: str = typer.Option("all", help="Folds to train: a list 0,1,2, a range 0-4, or all."),
             recipe: str = typer.Option("default", help="A recipe name (`focusseg recipes`) or a path to a JSON."),
             time_budget: float | None = typer.Option(None, help="Minutes of wall time per fold."),
             device: str = typer.Option("auto", help="cpu, cuda or auto."),
             resume: bool = typer.Option(False, "--resume", help="Continue folds that have checkpoints."),
             set_: list[str] = typer.Option([], "--set", help="Override a plan field: --set training.max_epochs=50"),
             configuration: str | None = CONFIGURATION_OPTION,
             nnunet_plans: Path | None = NNUNET_PLANS_OPTION,
             no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
             no_check: bool = typer.Option(False, "--no-check", help="Skip the dataset check."),
             overwrite: bool = typer.Option(False, "--overwrite", help="Train the chosen folds again from scratch.")
             ) -> None:
    """Train folds of a 5-fold cross-validation into OUT/fold_K with one shared plan and preprocessed store, pool
    their held-out predictions (metrics per fold and pooled), choose post-processing on the pool.

    Finished folds are kept; a fold can be trained alone (`--folds 3`), also on another machine into the same
    folder. Then `focusseg predict OUT IN_DIR OUT_DIR` ensembles every finished fold.
    Example: `focusseg crossval data/Dataset004_Hippocampus --out cv/hippo --folds 0-4 --time-budget 10`
    """
    from rich.table import Table

    from focusseg.api import crossval as train_folds
    from focusseg.runfolder import CROSSVAL_JSON, describe_rows

    check_time_budget(time_budget)  # resume with overwrite: refused by the api function

    def report(fold: int, status: str, summary: dict) -> None:
        dice = (summary.get("final_validation") or {}).get("mean_dice")
        console.print(f"fold {fold}: {status}" + (f", held-out mean Dice {dice:.4f}" if dice is not None else ""))

    overrides, nnunet_configuration = split_configuration(set_, configuration, nnunet_plans)
    result = train_folds(data, out, folds, recipe=recipe, overrides=overrides,
                         time_budget=time_budget, device=device, resume=resume, overwrite=overwrite,
                         check=not no_check, progress=not no_progress, on_fold=report, nnunet_plans=nnunet_plans,
                         configuration=nnunet_configuration).result
    rows = describe_rows(result)
    table = Table(*rows[0], title=f"cross-validation ({out})")
    for r in rows[1:]:
        table.add_row(*r)
    console.print(table)
    post = result.get("postprocessing")
    if post is not None:
        console.print(f"post-processing chosen on the pooled validation: {post['steps'] or 'none'}")
    console.print(f"-> {out / CROSSVAL_JSON}; predict with: focusseg predict {shlex.quote(str(out))} IN_DIR OUT_DIR",
                  markup=False)


def best(cv_dirs: list[Path] = typer.Argument(..., help="Cross-validation folders (`focusseg crossval`), one dataset."),
         out: Path = typer.Option(..., help="Receives the pairwise ensembles' validation predictions and best.json."),
         pairs: bool = typer.Option(True, "--pairs/--no-pairs", help="Also score every pairwise ensemble."),
         device: str = typer.Option("auto", help="cpu, cuda or auto (for predicting the ensembles).")) -> None:
    """Rank cross-validations and their pairwise ensembles on pooled validation Dice; print the winner's command.

    Example: `focusseg best cv/default cv/fp-pet --out cv/best`
    """
    from rich.table import Table

    from focusseg.devices import resolve_device
    from focusseg.workflows.best import find_best

    result = find_best(cv_dirs, out, pairs=pairs, device=resolve_device(device))
    table = Table("rank", "candidate", "cases", "pooled mean Dice", "post-processing",
                  title=f"best configuration (folds {', '.join(result['folds'])})")
    for i, c in enumerate(result["ranking"], 1):
        dice = "-" if c["mean_dice"] is None else f"{c['mean_dice']:.4f}"
        table.add_row(str(i), c["name"], str(c["cases"]), dice, str(c["postprocessing"] or "none"))
    console.print(table)
    console.print(f"best: {result['best']} -> {out / 'best.json'}\n{result['predict']}", markup=False)
