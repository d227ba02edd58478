"""Commands that score and show results: ``evaluate`` (metrics of a prediction folder), ``report`` (one HTML page
of a run or cross-validation), ``compare`` (runs side by side). None of them imports torch at start-up."""

from __future__ import annotations

from pathlib import Path

import typer

from focusseg.cli.options import console, err


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
                      "Default: the regions of GT_DIR/../dataset.json when it declares some."),
             plots: bool = typer.Option(True, "--plots/--no-plots",
                                        help="Draw the Dice and NSD violin plots (--no-plots: tables only, "
                                             "no matplotlib).")) -> None:
    """Score predictions against references: Dice, IoU, precision/recall, NSD, HD95, ASSD, FPV/FNV, lesion-wise.

    With an ignore label (nnU-Net's, for partially annotated references) the voxels where the reference holds it
    count for nothing. Example: `focusseg evaluate predictions/ labelsTs/ --out eval/ --nsd-tolerance 2`
    """
    from focusseg.errors import UsageError
    from focusseg.workflows.evaluate import evaluate as evaluate_predictions

    if connectivity not in (6, 18, 26):
        raise UsageError(f"--connectivity must be 6, 18 or 26, got {connectivity}")
    if not nsd_tolerance > 0:
        raise UsageError(f"--nsd-tolerance must be a positive distance in mm, got {nsd_tolerance}")
    try:
        lab = [int(x) for x in labels.split(",")] if labels else None
    except ValueError as exc:
        raise UsageError(f"--labels must be comma-separated integers, got {labels!r}") from exc
    found = _regions_option(regions, gt_dir) if lab is None else None
    ignore = _ignore_label_option(ignore_label, gt_dir) if found is None else None
    summary = evaluate_predictions(pred_dir, gt_dir, out, labels=lab, nsd_tolerance=nsd_tolerance,
                                   connectivity=connectivity, workers=workers, ignore_label=ignore,
                                   regions=found[0] if found else None, region_names=found[1] if found else None,
                                   progress=True, plots=plots)
    console.print_json(data=summary.get("overall", summary))
    console.print(f"metrics: {out / 'metrics.csv'}  summary: {out / 'summary.json'}")


def _regions_option(option: str | None, gt_dir: Path) -> tuple[list[list[int]], list[str]] | None:
    """``--regions``: ``none``, or a source for :func:`~focusseg.metrics.evaluate.read_regions`; unset: the
    regions of ``GT_DIR/../dataset.json`` when it declares some (said in one line)."""
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


def _ignore_label_option(option: str | None, gt_dir: Path) -> int | None:
    """``--ignore-label``: a number, ``none``, or a source for :func:`~focusseg.metrics.evaluate.read_ignore_label`;
    unset: the ignore label of ``GT_DIR/../dataset.json`` (an nnU-Net dataset's labelsTr / labelsTs) when that
    file declares one (said in one line)."""
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


def compare(folders: list[Path] = typer.Argument(..., help="Two or more run or cross-validation folders; the "
                                                            "first is the baseline."),
            out: Path = typer.Option(Path("compare.html"), help="The HTML file to write.")) -> None:
    """Compare runs on one offline HTML page: curves overlaid, per-class Dice with differences against the first.

    Example: `focusseg compare runs/default runs/cbs --out compare.html`
    """
    from focusseg.reporting import write_compare

    console.print(f"comparison written to {write_compare(folders, out)}")
