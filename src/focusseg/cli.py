"""The ``focusseg`` command: check, plan, preprocess, train, report, compare, crossval, best, predict, ensemble,
postprocess, evaluate, demo, nets, recipes."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="focusseg: 3D medical image segmentation whose training focuses on what is hard.")
console = Console()
err = Console(stderr=True)

DATA = typer.Argument(..., help="An nnU-Net v2 raw dataset folder (dataset.json, imagesTr/, labelsTr/).")

CONFIGURATION = typer.Option(None, "--configuration", help="3d (patches, the default) or 2d (slices along the "
                                                            "lowest-resolution axis, nnU-Net's 2d): same as --set "
                                                            "configuration=2d.")


@app.command()
def check(data: Path = DATA, workers: int = typer.Option(2, help="Parallel processes.")) -> None:
    """Validate a dataset before training: one line per problem, naming the file; exit 1 on any problem.

    Example: `focusseg check ../shared/data/Dataset004_Hippocampus`
    """
    _check_or_fail(data, workers=workers, progress=True)
    console.print(f"[green]{data}: no problems found[/green]")


@app.command()
def plan(data: Path = DATA, out: Path | None = typer.Option(None, help="Where to write plan.json (default: print)."),
         device: str = typer.Option("auto", help="Plan for cpu or cuda (auto: this machine). Planning for cuda "
                                                 "needs no GPU here."),
         gpu_memory: float | None = typer.Option(
             None, "--gpu-memory", help="GB of the card to plan for (cuda; default: the visible card's memory, or "
                                        "the m preset's 8 GB when none is visible)."),
         preset: str | None = typer.Option(
             None, help="GPU budget: m (8 GB), l (24), xl (40), or whole (the card minus max(1 GB, 10 %))."),
         set_: list[str] = typer.Option([], "--set", help="Override a field: --set training.batch_size=4"),
         configuration: str | None = CONFIGURATION,
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
    `focusseg plan DATA --device cuda --gpu-memory 80 --recipe fp-pet --out plan.json`
    """
    from focusseg.devices import resolve_device
    from focusseg.errors import UsageError
    from focusseg.planning.fingerprint import compute_fingerprint
    from focusseg.planning.planner import make_plan
    from focusseg.recipes import FORMS, load_recipe
    from focusseg.workflows.plan import finish_plan

    overrides = _parse_set(set_, configuration)
    if recipe_form is not None and recipe_form not in FORMS:
        raise UsageError(f"--recipe-form must be one of {', '.join(FORMS)}, got {recipe_form!r}")
    chosen_recipe = load_recipe(recipe) if recipe else None
    gpu_asked = gpu_memory is not None or preset is not None
    if device == "auto" and gpu_asked:
        dev = "cuda"  # a GPU budget was asked for: plan for a card, visible here or not
    elif str(device).startswith("cuda"):
        dev = str(device)  # planning for a card needs none on this machine
    else:
        dev = resolve_device(device).type
    if gpu_asked and not dev.startswith("cuda"):
        raise UsageError(f"--gpu-memory and --preset plan for a GPU, but --device is {device!r}",
                         hint="use --device cuda (no GPU needed to plan)")
    if not no_check:
        _check_or_fail(data)
    from focusseg.io.dataset import load_dataset_spec

    p = make_plan(compute_fingerprint(data, progress=True), device=dev, gpu_memory_gb=gpu_memory, preset=preset,
                  spec=load_dataset_spec(data))  # the spec carries region-based labels (focusseg.regions)
    p = finish_plan(p, chosen_recipe, overrides, dev, recipe_form)  # as training finishes it
    if chosen_recipe is not None:
        p["recipe"] = chosen_recipe["name"]
    text = json.dumps(p, indent=2)
    if out:
        from focusseg.io.atomic import save_json

        save_json(p, out)
        console.print(f"plan written to {out}")
    else:
        print(text)


@app.command()
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
          configuration: str | None = CONFIGURATION,
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
    Example: `focusseg train ../shared/data/Dataset004_Hippocampus --out runs/hippo --fold 0 --time-budget 30`
    """
    from focusseg.errors import UsageError
    from focusseg.recipes import FORMS, load_recipe
    from focusseg.reporting.observers import make_loggers
    from focusseg.workflows.train import run_training

    if devices != 1:
        from focusseg.engine.distributed import World, launch_self

        if devices < 1:
            raise UsageError(f"--devices must be a whole number >= 1, got {devices}")
        if not World.env_says_distributed():  # relaunch this command on N processes; they find the world in env
            raise typer.Exit(launch_self(_without_option(_cli_argv(ctx), "--devices"),
                                         devices))
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other (continue the run, or start it again)")
    if time_budget is not None and not time_budget > 0:
        raise UsageError(f"--time-budget must be a positive number of minutes, got {time_budget}")
    if recipe_form is not None and recipe_form not in FORMS:
        raise UsageError(f"--recipe-form must be one of {', '.join(FORMS)}, got {recipe_form!r}")
    chosen_recipe = load_recipe(recipe)
    if recipe_form is not None:
        chosen_recipe["form"] = recipe_form  # recipes.recipe_plan: a forced form wins over the device's
    summary = run_training(data, out, fold=fold, recipe=chosen_recipe, overrides=_parse_set(set_, configuration),
                           time_budget_min=time_budget, device=device, resume=resume, plan_path=plan_file,
                           preprocessed_dir=preprocessed, progress=not no_progress, check=not no_check,
                           overwrite=overwrite, init_from=init_from, freeze_encoder_epochs=freeze_encoder_epochs,
                           warmup_epochs=warmup_epochs, callbacks=make_loggers(logger))
    console.print_json(data=summary)


@app.command()
def report(folder: Path = typer.Argument(..., help="A run folder (`focusseg train`) or a cross-validation folder."),
           out: Path | None = typer.Option(None, help="The HTML file to write (default: FOLDER/report.html).")
           ) -> None:
    """Write one self-contained, offline HTML page of a run or cross-validation: header, training curves,
    strategy panels, timing, validation table and violin plots, slice overlays (best, median, worst case).

    Works on a run in progress (it says what is not there yet). `focusseg train` writes it when it ends.
    Example: `focusseg report runs/hippo` (then open runs/hippo/report.html)
    """
    from focusseg.reporting import write_report

    console.print(f"report written to {write_report(folder, out)}")


@app.command()
def compare(folders: list[Path] = typer.Argument(..., help="Two or more run or cross-validation folders; the "
                                                            "first is the baseline."),
            out: Path = typer.Option(Path("compare.html"), help="The HTML file to write.")) -> None:
    """Compare runs on one offline HTML page: curves overlaid, per-class Dice with differences against the first.

    Example: `focusseg compare runs/default runs/cbs --out compare.html`
    """
    from focusseg.reporting import write_compare

    console.print(f"comparison written to {write_compare(folders, out)}")


@app.command()
def crossval(data: Path = DATA, out: Path = typer.Option(..., help="The cross-validation folder (fold_K runs inside)."),
             folds: str = typer.Option("all", help="Folds to train: a list 0,1,2, a range 0-4, or all."),
             recipe: str = typer.Option("default", help="A recipe name (`focusseg recipes`) or a path to a JSON."),
             time_budget: float | None = typer.Option(None, help="Minutes of wall time per fold."),
             device: str = typer.Option("auto", help="cpu, cuda or auto."),
             resume: bool = typer.Option(False, "--resume", help="Continue folds that have checkpoints."),
             set_: list[str] = typer.Option([], "--set", help="Override a plan field: --set training.max_epochs=50"),
             configuration: str | None = CONFIGURATION,
             no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
             no_check: bool = typer.Option(False, "--no-check", help="Skip the dataset check."),
             overwrite: bool = typer.Option(False, "--overwrite", help="Train the chosen folds again from scratch.")
             ) -> None:
    """Train folds of a 5-fold cross-validation into OUT/fold_K with one shared plan and preprocessed store, pool
    their held-out predictions (metrics per fold and pooled), choose post-processing on the pool.

    Finished folds are kept; a fold can be trained alone (`--folds 3`), also on another machine into the same
    folder. Then `focusseg predict OUT IN_DIR OUT_DIR` ensembles every finished fold.
    Example: `focusseg crossval ../shared/data/Dataset004_Hippocampus --out cv/hippo --folds 0-4 --time-budget 10`
    """
    from rich.table import Table

    from focusseg.errors import UsageError
    from focusseg.recipes import load_recipe
    from focusseg.runfolder import describe_rows
    from focusseg.workflows.crossval import run_crossval

    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other (continue the folds, or start them again)")
    if time_budget is not None and not time_budget > 0:
        raise UsageError(f"--time-budget must be a positive number of minutes, got {time_budget}")

    def report(fold: int, status: str, summary: dict) -> None:
        dice = (summary.get("final_validation") or {}).get("mean_dice")
        console.print(f"fold {fold}: {status}" + (f", held-out mean Dice {dice:.4f}" if dice is not None else ""))

    result = run_crossval(data, out, folds, recipe=load_recipe(recipe), overrides=_parse_set(set_, configuration),
                          time_budget_min=time_budget, device=device, resume=resume, overwrite=overwrite,
                          check=not no_check, progress=not no_progress, on_fold=report)
    rows = describe_rows(result)
    table = Table(*rows[0], title=f"cross-validation ({out})")
    for r in rows[1:]:
        table.add_row(*r)
    console.print(table)
    post = result.get("postprocessing")
    if post is not None:
        console.print(f"post-processing chosen on the pooled validation: {post['steps'] or 'none'}")
    console.print(f"-> {out / 'crossval.json'}; predict with: focusseg predict {out} IN_DIR OUT_DIR")


@app.command()
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
    console.print(f"best: {result['best']} -> {out / 'best.json'}\n{result['predict']}")


@app.command()
def predict(run_dir: Path = typer.Argument(..., help="A run folder (`focusseg train`), a cross-validation folder "
                                                     "(`focusseg crossval`: its folds are ensembled) or a model "
                                                     "bundle .zip (`focusseg export`)."),
            in_dir: Path = typer.Argument(..., help="Images as <case>_<CCCC>.nii.gz (nnU-Net imagesTs layout), or "
                                                    "DICOM: one series per case folder CASE/ (channels: "
                                                    "CASE/0000/, CASE/0001/ ...)."),
            out_dir: Path = typer.Argument(..., help="Receives <case>.nii.gz with the input's shape and affine."),
            overlap: float = typer.Option(0.5, help="Sliding-window overlap in [0, 1)."),
            tta: bool = typer.Option(True, "--tta/--no-tta", help="Mirror test-time augmentation."),
            checkpoint: str = typer.Option("best", help="best, final or latest."),
            ensemble: list[Path] = typer.Option([], "--ensemble", help="Another run to ensemble with (repeat)."),
            weights: str | None = typer.Option(None, help="Comma-separated ensemble weights, RUN_DIR first."),
            uncertainty: str | None = typer.Option(
                None, help="Also write <case>_uncertainty.nii.gz: entropy, variance or inverse_confidence."),
            postprocess: bool = typer.Option(
                True, "--postprocess/--no-postprocess",
                help="Apply the run's post-processing (chosen on its validation; single runs only)."),
            output_format: str | None = typer.Option(
                None, "--output-format", help="nifti, nrrd, mha or dicom-seg (DICOM input only: CASE.dcm, a "
                                              "DICOM Segmentation referencing the series; needs focusseg[dicom]). "
                                              "Default: each input's own format, .nii.gz for DICOM."),
            save_probabilities: bool = typer.Option(
                False, "--save-probabilities", help="Also write <case>_probabilities.npz (float16 class "
                                                    "probabilities on the original grid, for `focusseg ensemble`)."),
            postprocessing_file: Path | None = typer.Option(
                None, "--postprocessing-file", help="Apply the steps of this postprocessing.json instead (e.g. the "
                                                    "one `focusseg best` chose for an ensemble)."),
            num_parts: int | None = typer.Option(
                None, "--num-parts", help="Split the cases into K shares (sorted, every K-th) and predict one of "
                                          "them (--part-id): machines or GPUs each take a share. Under torchrun: "
                                          "one share per rank, automatically."),
            part_id: int | None = typer.Option(None, "--part-id", help="Which share (0 .. K-1) with --num-parts."),
            device: str = typer.Option("auto", help="cpu, cuda or auto.")) -> None:
    """Segment every case of a folder (one run, or a weighted ensemble of runs of any architectures).

    Example: `focusseg predict runs/hippo imagesTs/ predictions/ --overlap 0.5 --no-tta`

    Ensemble: `focusseg predict runs/stunet imagesTs/ preds/ --ensemble runs/swin --ensemble runs/vnet
    --weights 0.5,0.3,0.2 --uncertainty entropy`

    DICOM: `focusseg predict runs/hippo dicom/ preds/ --output-format dicom-seg` (dicom/CASE/ holds one series;
    multi-channel: dicom/CASE/0000/, dicom/CASE/0001/ ...; a case lacking a channel folder fails in one line)
    """
    from focusseg.devices import resolve_device
    from focusseg.errors import UsageError
    from focusseg.inference.predictor import OUTPUT_FORMATS, EnsemblePredictor, Predictor, predict_folder

    if output_format is not None and output_format not in OUTPUT_FORMATS:  # before any run is loaded
        raise UsageError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    if not 0 <= overlap < 1:
        raise UsageError(f"--overlap must be in [0, 1), got {overlap}")
    if checkpoint not in ("best", "final", "latest"):
        raise UsageError(f"--checkpoint must be best, final or latest, got {checkpoint!r}")
    part = _part_option(num_parts, part_id)
    dev = resolve_device(device)
    if part is not None and dev.type == "cuda" and torch_cuda_count() > 1:
        import torch

        dev = torch.device("cuda", part[0] % torch.cuda.device_count())  # one GPU per share on a multi-GPU node
    try:
        w = [float(x) for x in weights.split(",")] if weights else None
    except ValueError as exc:
        raise UsageError(f"--weights must be comma-separated numbers, got {weights!r}") from exc
    from focusseg.inference.predictor import crossval_predictor
    from focusseg.runfolder import is_crossval_dir

    if run_dir.suffix.lower() == ".zip":  # a model bundle (`focusseg export`): verified, no run folder needed
        from focusseg.export import load_bundle

        if ensemble or w or checkpoint != "best":
            raise UsageError("a model bundle carries its members, weights and checkpoint: no --ensemble, "
                             "--weights or --checkpoint", run_dir)
        predictor = load_bundle(run_dir, dev, uncertainty, postprocess, postprocessing_file)
        console.print(f"model bundle {run_dir}: {len(predictor.members)} member(s)")
    elif is_crossval_dir(run_dir):  # cross-validation folders: every finished fold, the pool's post-processing
        if w:
            raise UsageError("cross-validation folders are weighted per fold (equal): no --weights")
        if not all(is_crossval_dir(e) for e in ensemble):
            raise UsageError("ensemble a cross-validation folder with other cross-validation folders only")
        predictor = crossval_predictor([run_dir, *ensemble], checkpoint, dev, uncertainty, postprocess,
                                       postprocessing_file)
        console.print(f"ensemble of {len(predictor.members)} fold(s) of {', '.join(map(str, [run_dir, *ensemble]))}")
    else:
        members = [Predictor.from_run(r, checkpoint, dev) for r in [run_dir, *ensemble]]
        steps = None if postprocess else []
        if postprocess and postprocessing_file is not None:
            from focusseg.inference.postprocess_selection import read_postprocessing_file

            steps = read_postprocessing_file(postprocessing_file)
        predictor = EnsemblePredictor(members, w, uncertainty, postprocessing=steps)
    if predictor.postprocessing:
        console.print(f"post-processing: {predictor.postprocessing}")
    written = predict_folder(predictor, in_dir, out_dir, overlap=overlap, tta=tta,
                             save_probabilities=save_probabilities, output_format=output_format, part=part)
    console.print(f"{len(written)} segmentation(s) written to {out_dir}")


@app.command()
def ensemble(pred_dirs: list[Path] = typer.Argument(..., help="Prediction folders written with --save-probabilities."),
             out: Path = typer.Option(..., help="Receives <case><ending> for every case present in all folders."),
             weights: str | None = typer.Option(None, help="Comma-separated weights, one per folder (default equal)."),
             save_probabilities: bool = typer.Option(False, "--save-probabilities",
                                                     help="Also write the ensemble's mean probabilities.")) -> None:
    """Ensemble prediction folders from their saved probabilities (weighted mean, argmax; region-based runs:
    each region where the mean sigmoid > 0.5, painted in regions_class_order).

    Example: `focusseg ensemble preds/unet preds/stunet --out preds/ensemble`
    """
    from focusseg.errors import UsageError
    from focusseg.inference.probabilities import ensemble_folders

    try:
        w = [float(x) for x in weights.split(",")] if weights else None
    except ValueError as exc:
        raise UsageError(f"--weights must be comma-separated numbers, got {weights!r}") from exc
    written = ensemble_folders(pred_dirs, out, w, save_probabilities)
    console.print(f"{len(written)} segmentation(s) written to {out}")


@app.command()
def export(run_dir: Path = typer.Argument(..., help="A run folder (`focusseg train`) or a cross-validation folder "
                                                     "(`focusseg crossval`: one member per finished fold)."),
           out: Path = typer.Option(..., help="The .zip to write (atomically)."),
           checkpoint: str = typer.Option("best", help="best, final or latest."),
           fmt: str = typer.Option("bundle", "--format", help="bundle (for `focusseg predict model.zip`), onnx or "
                                                              "torchscript (graph(s) + spec.json)."),
           exporter: str = typer.Option("auto", help="ONNX only: legacy, dynamo, or auto (legacy, then dynamo)."),
           ) -> None:
    """Export a trained model as one portable file.

    `bundle` (default): manifest.json (version, date, SHA-256 of every file), each member's plan.json and
    safetensors weights, the chosen post-processing; `focusseg predict model.zip IN OUT` predicts exactly as the run
    folder did. `onnx` / `torchscript`: each member's network as <member>.onnx / .pt (checked against PyTorch)
    plus spec.json (patch, channels, normalisation, spacing, labels, sliding window, softmax, TTA axes).
    Examples: `focusseg export runs/hippo --out hippo.zip`, `focusseg export cv/hippo --out hippo_onnx.zip
    --format onnx`
    """
    from focusseg.errors import UsageError
    from focusseg.export import FORMATS, export_graphs, write_bundle

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if checkpoint not in ("best", "final", "latest"):
        raise UsageError(f"--checkpoint must be best, final or latest, got {checkpoint!r}")
    if fmt == "bundle":
        write_bundle(run_dir, out, checkpoint)
        console.print(f"model bundle written to {out}; predict with: focusseg predict {out} IN_DIR OUT_DIR")
        return
    spec = export_graphs(run_dir, out, fmt, checkpoint, exporter)
    for m in spec["members"]:
        diff = m.get("onnx_runtime_max_abs_diff", m.get("max_abs_diff"))
        check = "unverified (onnxruntime not installed)" if diff is None else f"max |diff| vs PyTorch {diff:.2g}"
        console.print(f"{m['file']}: {m.get('exporter')} exporter, {check}")
    console.print(f"{fmt} export written to {out} (graphs + spec.json)")


@app.command()
def postprocess(run_dir: Path = typer.Argument(..., help="A run folder with validation/predictions (after train)."),
                min_gain: float = typer.Option(0.0, help="Keep a step only if it raises a class's Dice by more."),
                candidates: str | None = typer.Option(
                    None, help='JSON list of candidate steps, e.g. \'[{"name": "keep_largest_component"}]\'.')
                ) -> None:
    """(Re)choose post-processing on a run's validation predictions; writes RUN_DIR/postprocessing.json.

    Each candidate (largest component, small-component removal, erosion, dilation) is tried per class and kept
    only where it raises that class's mean validation Dice; a region-based run chooses per region (component
    steps only, kept where no other region's Dice falls). Example: `focusseg postprocess runs/hippo`
    """
    import json

    from rich.table import Table

    from focusseg.errors import UsageError
    from focusseg.inference.postprocess_selection import choose_postprocessing_for_run

    plan = _read_run_plan(run_dir)
    labels = sorted(int(v) for v in plan["labels"].values() if int(v) != 0)
    try:
        steps = json.loads(candidates) if candidates else None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--candidates is not valid JSON ({exc})") from exc
    res = choose_postprocessing_for_run(run_dir, labels, steps, min_gain)
    table = Table("class", "step", "Dice before", "Dice after", "kept")
    for t in res["trials"]:
        table.add_row(str(t["label"]), json.dumps(t["step"]), f"{t['dice_before']:.4f}", f"{t['dice_after']:.4f}",
                      "yes" if t["accepted"] else "")
    console.print(table)
    console.print(f"chosen: {res['steps'] or 'none'} -> {run_dir / 'postprocessing.json'}")


@app.command()
def evaluate(pred_dir: Path = typer.Argument(..., help="Predicted <case>.nii.gz files."),
             gt_dir: Path = typer.Argument(..., help="Reference <case>.nii.gz files."),
             out: Path = typer.Option(..., help="Writes metrics.csv, summary.json and plots here."),
             nsd_tolerance: float = typer.Option(1.0, help="NSD tolerance in mm."),
             connectivity: int = typer.Option(26, help="Connectivity for lesion-wise scores: 6, 18 or 26."),
             labels: str | None = typer.Option(None, help="Comma-separated labels (default: all found)."),
             workers: int = typer.Option(2, help="Parallel processes."),
             ignore_label: str | None = typer.Option(
                 None, "--ignore-label",
                 help="Reference value of unannotated voxels, left out of every metric: a number, a dataset "
                      "folder / dataset.json (its 'ignore' label) or a run folder / plan.json; 'none' for none. "
                      "Default: the 'ignore' label of GT_DIR/../dataset.json when there is one."),
             regions: str | None = typer.Option(
                 None, "--regions",
                 help="Evaluate label-value regions (nnU-Net region-based training) instead of labels: a dataset "
                      "folder / dataset.json or a run folder / plan.json that declares them; 'none' for labels. "
                      "Default: the regions of GT_DIR/../dataset.json when it declares some.")) -> None:
    """Score predictions against references: Dice, IoU, precision/recall, NSD, HD95, ASSD, FPV/FNV, lesion-wise.

    With an ignore label (nnU-Net's, for partially annotated references) the voxels where the reference holds it
    count for nothing. Example: `focusseg evaluate predictions/ labelsTs/ --out eval/ --nsd-tolerance 2`
    """
    from focusseg.errors import UsageError
    from focusseg.metrics import evaluate_folders

    if connectivity not in (6, 18, 26):
        raise UsageError(f"--connectivity must be 6, 18 or 26, got {connectivity}")
    if not nsd_tolerance > 0:
        raise UsageError(f"--nsd-tolerance must be a positive distance in mm, got {nsd_tolerance}")
    try:
        lab = [int(x) for x in labels.split(",")] if labels else None
    except ValueError as exc:
        raise UsageError(f"--labels must be comma-separated integers, got {labels!r}") from exc
    found = _evaluate_regions(regions, gt_dir) if lab is None else None
    ignore = _evaluate_ignore_label(ignore_label, gt_dir) if found is None else None
    import torch

    from focusseg.engine.distributed import world_for

    # under torchrun: each process scores its share of the cases (Gloo, CPU), rank 0 writes the files
    with world_for(torch.device("cpu")) as world:
        summary = evaluate_folders(pred_dir, gt_dir, out, labels=lab, nsd_tolerance=nsd_tolerance,
                                   connectivity=connectivity, workers=workers, ignore_label=ignore,
                                   regions=found[0] if found else None, region_names=found[1] if found else None,
                                   world=world, progress=world.is_main)
    console.print_json(data=summary.get("overall", summary))
    console.print(f"metrics: {out / 'metrics.csv'}  summary: {out / 'summary.json'}")


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), help="Folder for the demo dataset and run."),
         minutes: float = typer.Option(2.5, help="Training time budget in minutes.")) -> None:
    """Generate a small synthetic dataset, then plan -> preprocess -> train -> predict -> evaluate (< 5 min, CPU).

    Example: `focusseg demo --out runs/demo`
    """
    from focusseg.workflows.demo import run_demo

    run_demo(out, minutes=minutes, console=console)


@app.command()
def recipes(name: str | None = typer.Argument(None, help="Show only this recipe (a name or a path to a JSON).")
            ) -> None:
    """List the packaged recipes (one per paper system), each with its two forms side by side: the CPU form
    (scaled down for a CPU; what it changes from the paper) and the GPU form (the paper's own configuration; where
    focusseg still differs). Training picks the form by device (gpu on cuda), `--recipe-form cpu|gpu` forces one.

    Example: `focusseg recipes flare21-fast`
    """
    from rich.table import Table

    from focusseg.recipes import form_settings, load_recipe, recipe_names, recipe_plan

    for r in [load_recipe(name)] if name else [load_recipe(n) for n in recipe_names()]:
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


@app.command()
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

    dev = resolve_device(device)
    timed = dev.type == "cuda" if time_steps is None else time_steps
    if plan_file is not None:
        from focusseg.errors import PlanError
        from focusseg.planning.profile import describe_plan

        try:
            planned = json.loads(Path(plan_file).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlanError(f"unreadable plan ({' '.join(str(exc).split())})", plan_file) from exc
        if not isinstance(planned, dict) or not all(k in planned for k in ("network", "patch_size",
                                                                             "channel_names", "n_classes")):
            raise PlanError("not a focusseg plan (needs network, patch_size, channel_names, n_classes)", plan_file)
        try:
            from focusseg.workflows.plan import fit_patch_to_network

            planned = fit_patch_to_network(planned)  # as training does: a recipe's network may need a rounder patch
            row = describe_plan(planned, dev, measure_time=timed)
        except (ValueError, TypeError, KeyError) as exc:
            raise PlanError(f"the planned network does not build ({' '.join(str(exc).split())})", plan_file) from exc
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


def _parse_set(assignments: list[str], configuration: str | None = None) -> dict:
    """``--set`` assignments as nested overrides, plus ``--configuration`` (``configuration: "2d"``)."""
    from focusseg.errors import UsageError
    from focusseg.planning.planner import CONFIGURATIONS, parse_set

    try:
        overrides = parse_set(assignments)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if configuration is not None:
        if configuration not in CONFIGURATIONS:
            raise UsageError(f"--configuration must be one of {', '.join(CONFIGURATIONS)}, got {configuration!r}")
        overrides["configuration"] = configuration
    return overrides


def _check_or_fail(data: Path, workers: int = 2, progress: bool = False) -> None:
    """Run the dataset check; raise :class:`CheckFailed` with every problem (one ``error:`` line each)."""
    from focusseg.data.check import check_dataset
    from focusseg.errors import CheckFailed

    problems = check_dataset(data, workers=workers, progress=progress)
    if problems:
        raise CheckFailed(problems)


def _evaluate_regions(option: str | None, gt_dir: Path) -> tuple[list[list[int]], list[str]] | None:
    """``evaluate --regions``: ``none``, or a source for :func:`~focusseg.metrics.evaluate.read_regions`; unset:
    the regions of ``GT_DIR/../dataset.json`` when it declares some (said in one line)."""
    from focusseg.errors import FocussegError
    from focusseg.metrics.evaluate import read_regions

    if option is not None and option.strip().lower() == "none":
        return None
    if option is not None:
        return read_regions(Path(option.strip()))
    candidate = gt_dir.parent / "dataset.json"
    if not candidate.is_file():
        return None
    try:
        found = read_regions(candidate)
    except FocussegError:  # not this command's business: evaluate labels
        return None
    if found is not None:
        err.print(f"regions {', '.join(found[1])} (from {candidate}): Dice per region; --regions none to "
                  "evaluate labels", highlight=False)
    return found


def _evaluate_ignore_label(option: str | None, gt_dir: Path) -> int | None:
    """``evaluate --ignore-label``: a number, ``none``, or a source for
    :func:`~focusseg.metrics.evaluate.read_ignore_label`; unset: the ignore label of ``GT_DIR/../dataset.json``
    (an nnU-Net dataset's labelsTr / labelsTs) when that file declares one (said in one line)."""
    from focusseg.errors import FocussegError, UsageError
    from focusseg.metrics.evaluate import read_ignore_label

    if option is None:
        candidate = gt_dir.parent / "dataset.json"
        if not candidate.is_file():
            return None
        try:
            found = read_ignore_label(candidate)
        except FocussegError:  # not this command's business: evaluate without one
            return None
        if found is not None:
            err.print(f"ignore label {found} (from {candidate}): its voxels count for nothing; "
                      "--ignore-label none to evaluate them", highlight=False)
        return found
    text = option.strip()
    if text.lower() == "none":
        return None
    if text.lstrip("+-").isdigit():
        value = int(text)
        if value <= 0:
            raise UsageError(f"--ignore-label must be a positive label value, got {value}")
        return value
    return read_ignore_label(Path(text))


def _part_option(num_parts: int | None, part_id: int | None) -> tuple[int, int] | None:
    """``(part id, number of parts)`` from ``--num-parts/--part-id``, else from torchrun's ``RANK/WORLD_SIZE``."""
    from focusseg.engine.distributed import part_from_env
    from focusseg.errors import UsageError

    if num_parts is None and part_id is None:
        return part_from_env()
    if num_parts is None or part_id is None:
        raise UsageError("--num-parts and --part-id go together (e.g. --num-parts 4 --part-id 0)")
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise UsageError(f"--part-id must be in 0..{num_parts - 1} for --num-parts {num_parts}, got {part_id}")
    return part_id, num_parts


def torch_cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _cli_argv(ctx: typer.Context) -> list[str]:
    """The command line this invocation was given (``main`` passes it in the click context), else ``sys.argv``."""
    import sys

    obj = ctx.find_root().obj
    argv = obj.get("argv") if isinstance(obj, dict) else None
    return list(argv if argv is not None else sys.argv[1:])


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(f"{name}="):
            out.append(a)
    return out


def _read_run_plan(run_dir: Path) -> dict:
    from focusseg.errors import CheckpointError, MissingFileError

    path = run_dir / "plan.json"
    if not path.is_file():
        raise MissingFileError("no plan.json: not a focusseg run folder", run_dir, hint="train a run first")
    try:
        plan = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"unreadable plan ({' '.join(str(exc).split())})", path) from exc
    if not isinstance(plan, dict) or not isinstance(plan.get("labels"), dict):
        raise CheckpointError("not a focusseg plan (no 'labels')", path)
    return plan


def main(argv: list[str] | None = None) -> int:
    """The one handler of the CLI: an expected error (:class:`~focusseg.errors.FocussegError`) prints
    ``error: <file>: <problem>`` (and a hint) on stderr; anything else prints one short line, and its traceback
    only with ``--debug`` (anywhere on the command line). Returns the exit code (0 on success)."""
    import sys

    from focusseg.errors import CheckFailed, FocussegError

    click_error, abort = _click_exception_types()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=args, prog_name="focusseg", standalone_mode=False, obj={"argv": list(args)})
        return rv if isinstance(rv, int) else 0
    except click_error as exc:  # bad options: click's own usage message
        exc.show()
        return int(exc.exit_code)
    except (*abort, KeyboardInterrupt):
        _print_error("interrupted")
        return 130
    except FocussegError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        details = _detail_lines(exc)
        for line in details:
            _print_error(line)
        summary = exc.one_line()
        if details and isinstance(exc, CheckFailed):
            summary = f"{len(exc.problems)} problems found (each named above)"
        _print_error(summary, exc.hint)
        return int(exc.exit_code)
    except Exception as exc:  # a bug, or a library failure we did not foresee: never a wall of traceback
        from focusseg.engine.distributed import peer_failure

        lost = peer_failure(exc)
        if lost is not None:  # training on several processes: another rank died or stopped answering
            _print_error(lost, "the first error above (or torchrun's summary) names the rank that failed; resume "
                               "with --resume")
            return 4
        if debug:
            import traceback

            traceback.print_exc()
        where = _innermost_frame(exc)
        message = " ".join(str(exc).split()) or "(no message)"
        _print_error(f"unexpected {type(exc).__name__}: {message}{where}",
                     None if debug else "run again with --debug for the traceback, and please report it")
        return 3


def _click_exception_types() -> tuple[type, tuple[type, ...]]:
    """click's ``ClickException`` and the ``Abort`` types (typer >= 0.2x vendors click; older typer uses it)."""
    try:
        from click.exceptions import Abort, ClickException

        aborts: tuple[type, ...] = (Abort, typer.Abort)
    except ImportError:  # typer's vendored click (its Abort is typer.Abort)
        from typer._click.exceptions import ClickException

        aborts = (typer.Abort,)
    return ClickException, aborts


def _detail_lines(exc: BaseException, limit: int = 50) -> list[str]:
    """One line per problem of a :class:`CheckFailed` or per failed case of a :class:`PartialFailure`."""
    from focusseg.errors import CheckFailed, FocussegError, PartialFailure

    if isinstance(exc, CheckFailed) and len(exc.problems) > 1:
        items = [" ".join(str(p).split()) for p in exc.problems]
    elif isinstance(exc, PartialFailure):
        items = [f.one_line() if isinstance(f, FocussegError) else " ".join(str(f).split()) for f in exc.failures]
    else:
        return []
    if len(items) > limit:
        items = items[:limit] + [f"... {len(items) - limit} more"]
    return items


def _print_error(message: str, hint: str | None = None) -> None:
    import sys

    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def _innermost_frame(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return ""
    return f" (at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno})"


if __name__ == "__main__":
    raise SystemExit(main())
