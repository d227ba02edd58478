"""Commands that use trained models: ``predict`` (a run, an ensemble, a cross-validation or a model bundle),
``ensemble`` (saved probabilities), ``postprocess`` (choose a run's post-processing), ``export`` (bundle, ONNX,
TorchScript)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer

from focusseg.cli.options import check_checkpoint, console, parse_weights, part_option


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
            ensemble: list[Path] = typer.Option(
                [], "--ensemble", help="Another run (or nnU-Net model folder) to ensemble with (repeat)."),
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
            expect_sha256: list[str] = typer.Option(
                [], "--expect-sha256", help="Refuse a bundle or checkpoint whose SHA-256 is not this one (64 hex "
                                            "digits; repeat for an ensemble or cross-validation: every file loaded "
                                            "must match one), checked before the file is read."),
            folds: str | None = typer.Option(
                None, "--folds", help="An nnU-Net model folder's folds: comma-separated fold numbers (0,1), 'all' "
                                      "for its fold_all; default every fold_K present. Refused for focusseg runs, "
                                      "cross-validations and bundles."),
            device: str = typer.Option("auto", help="cpu, cuda or auto.")) -> None:
    """Segment every case of a folder (one run, or a weighted ensemble of runs of any architectures).

    Example: `focusseg predict runs/hippo imagesTs/ predictions/ --overlap 0.5 --no-tta`

    Ensemble: `focusseg predict runs/stunet imagesTs/ preds/ --ensemble runs/swin --ensemble runs/vnet
    --weights 0.5,0.3,0.2 --uncertainty entropy`

    DICOM: `focusseg predict runs/hippo dicom/ preds/ --output-format dicom-seg` (dicom/CASE/ holds one series;
    multi-channel: dicom/CASE/0000/, dicom/CASE/0001/ ...; a case lacking a channel folder fails in one line)

    nnU-Net: `focusseg predict nnUNetTrainer__nnUNetPlans__3d_fullres IN OUT --folds 0,1 --checkpoint final`
    predicts with an nnU-Net v2 model folder (its folds averaged); --ensemble takes runs and other nnU-Net
    folders (each folder's folds share its weight).

    Provenance: the SHA-256 of the bundle (or of each checkpoint) is printed before predicting; pin it with
    `--expect-sha256 HEX` (as pip's --require-hashes): a different file is refused before it is read.
    """
    from focusseg.api import Predictor
    from focusseg.devices import resolve_device
    from focusseg.errors import UsageError
    from focusseg.inference.folders import OUTPUT_FORMATS
    from focusseg.io.checkpoint import parse_sha256

    for h in expect_sha256:  # a malformed digest: a usage error before anything
        parse_sha256(h)
    if output_format is not None and output_format not in OUTPUT_FORMATS:  # before any run is loaded
        raise UsageError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    if not 0 <= overlap < 1:
        raise UsageError(f"--overlap must be in [0, 1), got {overlap}")
    check_checkpoint(checkpoint)
    chosen_folds = parse_folds(folds)
    part = part_option(num_parts, part_id)
    dev = resolve_device(device)
    if part is not None and dev.type == "cuda":
        import torch

        if torch.cuda.device_count() > 1:  # one GPU per share on a multi-GPU node
            dev = torch.device("cuda", part[0] % torch.cuda.device_count())
    # provenance: each file's SHA-256 is checked streaming before anything parses it (focusseg.api.Predictor.load)
    loaded = Predictor.load(run_dir, checkpoint, dev, postprocess, ensemble=ensemble, weights=parse_weights(weights),
                            uncertainty=uncertainty, postprocessing_file=postprocessing_file,
                            expect_sha256=expect_sha256, folds=chosen_folds)
    what = "model bundle" if loaded.kind == "bundle" else "checkpoint"
    for file, digest in loaded.digests:
        console.print(f"{what} {file}: sha256 {digest}", soft_wrap=True, markup=False)
    predictor = loaded.ensemble
    if loaded.kind == "bundle":
        console.print(f"model bundle {run_dir}: {len(predictor.members)} member(s)", markup=False)
    elif loaded.kind == "crossval":
        console.print(f"ensemble of {len(predictor.members)} fold(s) of {', '.join(map(str, [run_dir, *ensemble]))}",
                      markup=False)
    if predictor.postprocessing:
        console.print(f"post-processing: {predictor.postprocessing}", markup=False)
    written = loaded.predict_folder(in_dir, out_dir, overlap=overlap, tta=tta, save_probabilities=save_probabilities,
                                    output_format=output_format, progress=True, part=part)
    console.print(f"{len(written)} segmentation(s) written to {out_dir}")


def parse_folds(folds: str | None) -> list[int | str] | None:
    """``--folds``: comma-separated fold numbers in [0, 999] or ``all`` (nnU-Net's fold_all); None: not given.

    Raises:
        UsageError: anything else, or a fold given twice.
    """
    from focusseg.errors import UsageError

    if folds is None:
        return None
    out: list[int | str] = []
    for item in folds.split(","):
        item = item.strip()
        if item == "all":
            out.append("all")
        elif item.isdigit() and int(item) <= 999:
            out.append(int(item))
        else:
            raise UsageError(f"--folds must be comma-separated fold numbers (0-999) or 'all', got {folds!r}")
    if len(set(map(str, out))) != len(out):
        raise UsageError(f"--folds names a fold twice: {folds!r}")
    return out


def ensemble(pred_dirs: list[Path] = typer.Argument(..., help="Prediction folders written with --save-probabilities."),
             out: Path = typer.Option(..., help="Receives <case><ending> for every case present in all folders."),
             weights: str | None = typer.Option(None, help="Comma-separated weights, one per folder (default equal)."),
             save_probabilities: bool = typer.Option(False, "--save-probabilities",
                                                     help="Also write the ensemble's mean probabilities.")) -> None:
    """Ensemble prediction folders from their saved probabilities (weighted mean, argmax; region-based runs:
    each region where the mean sigmoid > 0.5, painted in regions_class_order).

    Example: `focusseg ensemble preds/unet preds/stunet --out preds/ensemble`
    """
    from focusseg.inference.probabilities import ensemble_folders

    written = ensemble_folders(pred_dirs, out, parse_weights(weights), save_probabilities)
    console.print(f"{len(written)} segmentation(s) written to {out}")


def export(run_dir: Path = typer.Argument(..., help="A run folder (`focusseg train`), a cross-validation folder "
                                                     "(`focusseg crossval`: one member per finished fold) or an "
                                                     "nnU-Net v2 model folder (one member per fold; bundle, ONNX "
                                                     "or TorchScript)."),
           out: Path = typer.Option(..., help="The .zip to write (atomically); with --format nnunet the new "
                                              "model folder."),
           checkpoint: str = typer.Option("best", help="best, final or latest."),
           fmt: str = typer.Option("bundle", "--format", help="bundle (for `focusseg predict model.zip`), onnx or "
                                                              "torchscript (graph(s) + spec.json), or nnunet (an "
                                                              "nnU-Net v2 model folder; runs whose network is "
                                                              "nnunet only)."),
           exporter: str = typer.Option("auto", help="ONNX only: legacy, dynamo, or auto (legacy, then dynamo)."),
           ) -> None:
    """Export a trained model as one portable file.

    `bundle` (default): manifest.json (version, date, SHA-256 of every file), each member's plan.json and
    safetensors weights, the chosen post-processing; `focusseg predict model.zip IN OUT` predicts exactly as the run
    folder did. `onnx` / `torchscript`: each member's network as <member>.onnx / .pt (checked against PyTorch)
    plus spec.json (patch, channels, normalisation, spacing, labels, sliding window, softmax, TTA axes).
    `nnunet`: an nnU-Net v2 model folder (dataset.json, plans.json, fold_K/checkpoint_final.pth, and nnU-Net's
    postprocessing.json where the post-processing has an equivalent) that nnU-Net's predictor and `focusseg
    predict FOLDER` read; only runs whose plan's network is `nnunet` (trained with --nnunet-plans, a resenc-*
    preset, or from an nnU-Net model folder) can be exported.
    Examples: `focusseg export runs/hippo --out hippo.zip`, `focusseg export cv/hippo --out hippo_onnx.zip
    --format onnx`, `focusseg export cv/nn --format nnunet --out nnUNetTrainer__nnUNetPlans__3d_fullres`
    """
    from focusseg.errors import UsageError
    from focusseg.export import FORMATS, export_graphs, write_bundle
    from focusseg.io.checkpoint import file_sha256

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    check_checkpoint(checkpoint)
    if fmt == "nnunet":
        from focusseg.export.nnunet import export_nnunet

        done = export_nnunet(run_dir, out, checkpoint)
        console.print(f"nnU-Net model folder written to {out} (configuration {done['configuration']}, fold(s) "
                      f"{', '.join(map(str, done['folds']))})", soft_wrap=True, markup=False)
        console.print(f"predict with: focusseg predict {shlex.quote(str(out))} IN_DIR OUT_DIR, or "
                      f"nnUNetv2_predict_from_modelfolder -m {shlex.quote(str(out))} -i IN_DIR -o OUT_DIR -f "
                      f"{' '.join(map(str, done['folds']))}", soft_wrap=True, markup=False)
        return
    if fmt == "bundle":
        write_bundle(run_dir, out, checkpoint)
        digest = file_sha256(out)
        console.print(f"model bundle written to {out}, sha256 {digest}", soft_wrap=True)
        console.print(f"predict with: focusseg predict {shlex.quote(str(out))} IN_DIR OUT_DIR --expect-sha256 {digest}",
                      soft_wrap=True, markup=False)
        return
    spec = export_graphs(run_dir, out, fmt, checkpoint, exporter)
    for m in spec["members"]:
        diff = m.get("onnx_runtime_max_abs_diff", m.get("max_abs_diff"))
        check = "unverified (onnxruntime not installed)" if diff is None else f"max |diff| vs PyTorch {diff:.2g}"
        console.print(f"{m['file']}: {m.get('exporter')} exporter, {check}")
    console.print(f"{fmt} export written to {out} (graphs + spec.json), sha256 {file_sha256(out)}", soft_wrap=True)


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
    from rich.table import Table

    from focusseg.errors import MissingFileError, PlanError, UsageError
    from focusseg.inference.postprocess_selection import choose_postprocessing_for_run
    from focusseg.runfolder import read_plan

    plan_path = run_dir / "plan.json"
    if not plan_path.is_file():
        raise MissingFileError("no plan.json: not a focusseg run folder", run_dir, hint="train a run first")
    plan = read_plan(plan_path)
    if not isinstance(plan.get("labels"), dict):
        raise PlanError("not a focusseg plan (no 'labels')", plan_path)
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
