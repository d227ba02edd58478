"""Scoring a folder of predictions (``focusseg evaluate``, :func:`focusseg.evaluate`) without importing torch.

Scoring label maps needs numpy, SciPy, nibabel and cc3d; torch is imported only when a launcher (``torchrun``)
started this process as one of several, to share the cases over a Gloo group. A one-process evaluation therefore
starts in a fraction of a second, and matplotlib is imported only when the plots are written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from focusseg.errors import UsageError
from focusseg.metrics import evaluate_folders


def evaluate(pred_dir: str | Path, gt_dir: str | Path, out: str | Path, labels: Sequence[int] | None = None,
             nsd_tolerance: float = 1.0, connectivity: int = 26, workers: int = 2, ignore_label: int | None = None,
             regions: Sequence[Sequence[int]] | None = None, region_names: Sequence[str] | None = None,
             progress: bool = False, plots: bool = True) -> dict:
    """Score predictions against references (as ``focusseg evaluate``): Dice, IoU, precision/recall, NSD, HD95,
    ASSD, FPV/FNV, lesion-wise; writes ``metrics.csv``, ``summary.json`` and plots into ``out``.

    Args:
        pred_dir: predicted ``<case>`` label files.
        gt_dir: reference ``<case>`` label files.
        out: where the metrics are written.
        labels: the labels to score (default: every label found).
        nsd_tolerance: NSD tolerance in mm (> 0).
        connectivity: 6, 18 or 26 (lesion-wise scores).
        workers: parallel processes.
        ignore_label: a reference value whose voxels count for nothing (None: none).
        regions: label-value regions to score instead of labels (region-based training).
        region_names: the regions' names.
        progress: show a progress bar.
        plots: also draw the Dice and NSD violin plots (``dice_violin.png``, ``nsd_violin.png``).

    Returns:
        The summary (``summary.json``'s content: per label and overall).

    Raises:
        UsageError: a bad connectivity or tolerance.
        MissingFileError: a folder that does not exist.
        PartialFailure: cases that could not be scored (after the others were).
    """
    if connectivity not in (6, 18, 26):
        raise UsageError(f"--connectivity must be 6, 18 or 26, got {connectivity}")
    if not nsd_tolerance > 0:
        raise UsageError(f"--nsd-tolerance must be a positive distance in mm, got {nsd_tolerance}")
    options = dict(labels=list(labels) if labels else None, nsd_tolerance=nsd_tolerance, connectivity=connectivity,
                   workers=workers, ignore_label=ignore_label, regions=regions, region_names=region_names,
                   plots=plots)
    if not _launched_as_one_of_several():
        return evaluate_folders(Path(pred_dir), Path(gt_dir), Path(out), progress=progress, **options)
    import torch

    from focusseg.engine.distributed import world_for

    # under torchrun: each process scores its share of the cases (Gloo, CPU), rank 0 writes the files
    with world_for(torch.device("cpu")) as world:
        return evaluate_folders(Path(pred_dir), Path(gt_dir), Path(out), world=world,
                                progress=progress and world.is_main, **options)


def _launched_as_one_of_several() -> bool:
    """Whether a launcher set ``WORLD_SIZE`` above 1 (as :meth:`~focusseg.engine.distributed.World.from_env`
    reads it; a malformed value is left to it to report)."""
    value = os.environ.get("WORLD_SIZE", "1").strip()
    return not value.isdigit() or int(value) > 1
