"""Validation during training: pseudo-Dice on fixed validation patches every epoch, whole held-out volumes every
``training.val_full_every`` epochs.

:class:`PatchValidator` draws its patches once (seeded: every epoch and every resume scores the same ones) and
accumulates per-class TP / FP / FN on the device, read with one host copy per validation:
``pseudo-Dice_c = 2 TP_c / (2 TP_c + FP_c + FN_c)`` over all patches together (nnU-Net v2's per-epoch "pseudo
dice"). :func:`validate_volumes` scores whole preprocessed volumes with the sliding window. Region plans count per
region, an ignore label's voxels count nowhere. ``docs/training-loop.md`` ("Validation") has the details; the epoch
loop's use of the scores is :mod:`focusseg.engine.epoch_validation`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from focusseg.data.loader import PatchLoader
from focusseg.data.samplers import ForegroundSampler, patch_with_slice, sampling_patch
from focusseg.inference import sliding_window_predict
from focusseg.inference.windows import compute_steps
from focusseg.planning.twod import slice_axis_of
from focusseg.preprocessing.preprocess import ANNOTATED
from focusseg.preprocessing.store import PreprocessedStore
from focusseg.regions import dice_from_region_counts, plan_regions, region_counts
from focusseg.roles import PatchRequest
from focusseg.settings import DEFAULT_VAL_PATCHES, inference_settings, training_settings
from focusseg.strategies.cycle import label_counts

#: Validation patches are kept in host memory up to this many bytes (else re-read from the store each epoch).
CACHE_BYTES = 2**30


def declared_labels(plan: dict) -> list[int]:
    """The plan's class values (its ``labels``; never the ignore label, recorded apart as ``ignore_label``)."""
    ignore = plan.get("ignore_label")
    return sorted({int(v) for v in plan["labels"].values()} - ({int(ignore)} if ignore is not None else set()))


def masked_argmax(logits: torch.Tensor, declared: Sequence[int], dim: int) -> torch.Tensor:
    """``argmax`` over the class axis ``dim`` among the declared label indices only: an index that is no label
    value (non-contiguous labels {0, 1, 3}) never wins, as the predictor does. No host sync."""
    known = {int(d) for d in declared}
    undeclared = [i for i in range(logits.shape[dim]) if i not in known]
    if undeclared:
        logits = logits.clone()
        index = torch.tensor(undeclared, device=logits.device)
        logits.index_fill_(dim, index, -math.inf)
    return logits.max(dim).indices


def confusion_counts(pred: torch.Tensor, labels: torch.Tensor, k: int, ignore_label: int | None = None
                     ) -> torch.Tensor:
    """``(3, K)`` int64 TP, FP, FN per class of integer maps ``pred`` and ``labels`` (same shape, any device),
    from a ``K x K`` confusion matrix by scatter-add (no host sync; label values outside ``0..K-1`` are clamped).
    Voxels whose label is ``ignore_label`` are not counted at all (one extra bin, dropped). One implementation
    with the training step's counts (:func:`focusseg.strategies.cycle.label_counts`)."""
    return torch.stack(label_counts(pred, labels, k, ignore_label))


def dice_from_counts(counts: np.ndarray | torch.Tensor, labels: Sequence[int]) -> dict[int, float]:
    """``{label: 2 TP / (2 TP + FP + FN)}`` from ``(3, K)`` counts; NaN where the label is absent from both."""
    c = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64)
    out = {}
    for lab in labels:
        tp, fp, fn = c[0, lab], c[1, lab], c[2, lab]
        denom = 2 * tp + fp + fn
        out[int(lab)] = float(2 * tp / denom) if denom > 0 else math.nan
    return out


def _main_output(out: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out


@contextlib.contextmanager
def _eval_mode(network: nn.Module) -> Iterator[None]:
    was = network.training
    network.eval()
    try:
        yield
    finally:
        network.train(was)


# --------------------------------------------------------------------------------------------------------------
# whole volumes
# --------------------------------------------------------------------------------------------------------------

def validate_volumes(network: nn.Module, store: PreprocessedStore, case_ids: list[str], plan: dict,
                     device: torch.device, amp: torch.dtype | None = None,
                     mirror_axes: tuple[int, ...] = (), world: Any = None) -> dict[int, float]:
    """Mean Dice per foreground class over ``case_ids`` on whole preprocessed volumes (sliding window with the
    plan's overlap, logits kept on ``device``, argmax there; NaN-aware mean over cases). Dice per case is
    ``2 TP / (2 TP + FP + FN)``, equal to :func:`focusseg.metrics.dice_per_class` (tested); with a plan
    ``ignore_label`` over the annotated voxels only. ``world`` (:class:`~focusseg.engine.distributed.World`):
    each rank predicts its share of the cases and the per-case scores are gathered (every rank returns the same)."""
    declared = declared_labels(plan)
    regions = plan_regions(plan)
    labels = [v for v in declared if v != 0] if not regions else list(range(1, len(regions) + 1))
    k = max(int(plan["n_classes"]), max(declared) + 1)
    ignore = plan.get("ignore_label")
    inf = inference_settings(plan)
    per_case: list[dict[int, float]] = []
    for cid in (world.shard(case_ids) if world is not None else case_ids):
        image = torch.from_numpy(np.ascontiguousarray(store.image(cid)))
        logits = sliding_window_predict(network, image, plan["patch_size"], overlap=inf.need("overlap"),
                                        mirror_axes=mirror_axes, batch_size=inf.batch_size,
                                        device=device, amp_dtype=amp, out_device=device,
                                        slice_axis=slice_axis_of(plan))  # the 2D configuration: slice by slice
        ref = torch.from_numpy(np.ascontiguousarray(store.label(cid))).to(device)
        if regions:  # sigmoid regions: logit > 0 per region, counts on the region masks
            per_case.append(dice_from_region_counts(region_counts(logits[None], ref[None], regions)))
            continue
        pred = masked_argmax(logits, declared, dim=0)
        per_case.append(dice_from_counts(confusion_counts(pred, ref, k, ignore), labels))
    if world is not None and world.active:
        per_case = [d for part in world.gather_objects(per_case) for d in part]
    out = {}
    for lab in labels:
        vals = [d[lab] for d in per_case if not np.isnan(d[lab])]
        out[lab] = float(np.mean(vals)) if vals else float("nan")
    return out


def window_voxels(shape: Sequence[int], patch: Sequence[int], overlap: float, slice_axis: int | None = None) -> int:
    """Voxels a sliding window over a volume of ``shape`` runs through the network: windows x patch voxels
    (volumes smaller than the patch are padded to it, as the sliding window does). A 2D ``patch`` on a 3D shape
    (the 2D configuration) is the window ``(1, H, W)`` at ``slice_axis`` (default: the last axis)."""
    if len(patch) == len(shape) - 1 == 2:
        patch = patch_with_slice(list(patch), len(shape) - 1 if slice_axis is None else int(slice_axis))

    padded = [max(int(s), int(p)) for s, p in zip(shape, patch)]
    steps = compute_steps(padded, [int(p) for p in patch], overlap)
    return int(np.prod([len(set(st)) for st in steps]) * np.prod([int(p) for p in patch]))


#: Final validation: the network passes x 1.25 (Gaussian weighting, resampling to the original grid) plus a fixed
#: 0.6 s per case for reading, preprocessing, writing, evaluating (surface metrics) and choosing post-processing,
#: as measured on Hippocampus (``docs/training-loop.md``, "Time budget").
FINAL_VALIDATION_OVERHEAD = 1.25
FINAL_VALIDATION_PER_CASE_S = 0.6


def estimate_final_validation_s(store: PreprocessedStore, case_ids: Sequence[str], plan: dict,
                                seconds_per_voxel: float) -> float:
    """Seconds the run's final validation will take (:func:`focusseg.workflows.validate.validate_raw`: every
    held-out case, whole volume, the plan's mirror TTA)::

        s_vox * sum_c windows_c * |patch| * 2^|mirror axes| * 1.25 + 0.6 s * cases

    where ``s_vox`` is the network's measured seconds per voxel in this run's own validation (1.25:
    :data:`FINAL_VALIDATION_OVERHEAD`; 0.6 s: :data:`FINAL_VALIDATION_PER_CASE_S`).

    Args:
        store: the preprocessed store (case shapes).
        case_ids: the held-out cases.
        plan: the run's plan (``patch_size``, ``inference.overlap``, ``inference.mirror_axes``, ``slice_axis``).
        seconds_per_voxel: ``s_vox``.

    Returns:
        the estimate in seconds."""
    inf = inference_settings(plan)
    mirrors = 2 ** len(inf.mirror_axes)
    voxels = sum(window_voxels(store.shape(c), plan["patch_size"], 0.5 if inf.overlap is None else inf.overlap,
                               plan.get("slice_axis")) for c in case_ids)
    return float(seconds_per_voxel * voxels * mirrors * FINAL_VALIDATION_OVERHEAD
                 + FINAL_VALIDATION_PER_CASE_S * len(case_ids))


# --------------------------------------------------------------------------------------------------------------
# fixed validation patches
# --------------------------------------------------------------------------------------------------------------

def draw_validation_patches(store: PreprocessedStore, case_ids: Sequence[str], patch_size: Sequence[int],
                            n_patches: int = DEFAULT_VAL_PATCHES, seed: int = 0, ignore_label: int | None = None
                            ) -> list[PatchRequest]:
    """The fixed validation patches (see the module docstring): ``ceil(max(len(cases), n_patches) / len(cases))``
    per case; even-numbered ones centred on a foreground voxel (classes in turn), odd ones uniformly placed -- or,
    when the store has annotated-voxel locations (an ignore label), centred on an annotated voxel. The
    ``ignore_label`` never counts as a foreground class."""
    cases = list(case_ids)
    if not cases:
        return []
    per_case = max(1, math.ceil(max(len(cases), int(n_patches)) / len(cases)))
    g = torch.Generator().manual_seed(int(seed) + 7919)
    patch = tuple(int(p) for p in patch_size)
    out: list[PatchRequest] = []
    for case in cases:
        shape = tuple(store.shape(case))
        locations = store.locations(case) or {}
        present = [c for c, v in sorted(locations.items())
                   if len(v) and int(c) >= 0 and (ignore_label is None or int(c) != int(ignore_label))]
        annotated = locations.get(ANNOTATED, ())
        for j in range(per_case):
            start = []
            for s, p in zip(shape, patch):
                lo, hi = (min(0, s - p), max(0, s - p))
                start.append(int(torch.randint(lo, hi + 1, (1,), generator=g)))
            locs = None
            if j % 2 == 0 and present:
                locs = locations[present[(j // 2) % len(present)]]
            elif j % 2 == 1 and len(annotated):
                locs = annotated
            if locs is not None:
                centre = locs[int(torch.randint(len(locs), (1,), generator=g))]
                start = [ForegroundSampler.clamp(int(c) - p // 2, s, p) for c, s, p in zip(centre, shape, patch)]
            out.append(PatchRequest(case, tuple(start)))
    return out


class PatchValidator:
    """Per-epoch pseudo-Dice on fixed validation patches (module docstring). Build once per training run;
    call with the network each epoch. The patches are read once and kept in host memory (pinned on CUDA) when
    they take at most :data:`CACHE_BYTES`, else re-read from the store every call."""

    def __init__(self, store: PreprocessedStore, case_ids: Sequence[str], plan: dict, device: torch.device,
                 amp: torch.dtype | None = None, n_patches: int | None = None, seed: int | None = None,
                 batch_size: int | None = None, shard: tuple[int, int] = (0, 1)) -> None:
        tr = training_settings(plan)
        self.plan, self.device, self.amp = plan, torch.device(device), amp
        self.declared = declared_labels(plan)
        self.regions = plan_regions(plan)  # region plan: region r counted in column r + 1 (module docstring)
        self.labels = ([v for v in self.declared if v != 0] if not self.regions
                       else list(range(1, len(self.regions) + 1)))
        self.k = max(int(plan["n_classes"]), max(self.declared) + 1) if not self.regions else len(self.regions) + 1
        self.ignore_label = plan.get("ignore_label")
        n = int(n_patches if n_patches is not None else tr.val_patches)
        self.requests = draw_validation_patches(store, case_ids, sampling_patch(plan), n,  # 2D: (1, H, W) boxes
                                                int(tr.seed if seed is None else seed), self.ignore_label)
        self.requests = self.requests[int(shard[0])::max(1, int(shard[1]))]  # training on several processes: a share
        self.batch_size = max(1, int(batch_size or plan.get("batch_size", 2)))
        self.loader = PatchLoader(store, tuple(plan["patch_size"]), n_classes=int(plan["n_classes"]), workers=1,
                                  ignore_label=self.ignore_label, slice_axis=slice_axis_of(plan))
        self._batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        voxels = int(np.prod(plan["patch_size"]))
        in_ch = len(plan.get("channel_names") or {0: ""})
        if len(self.requests) * voxels * (4 * in_ch + 1) <= CACHE_BYTES:
            self._batches = [self._read(b) for b in self._chunks()]

    def _chunks(self) -> list[list[PatchRequest]]:
        r, b = self.requests, self.batch_size
        return [r[i:i + b] for i in range(0, len(r), b)]

    def _read(self, requests: list[PatchRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.loader.load(requests)
        if self.device.type == "cuda":
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def __len__(self) -> int:
        return len(self.requests)

    @torch.no_grad()
    def counts(self, network: nn.Module) -> torch.Tensor:
        """``(3, K)`` TP / FP / FN over all validation patches, on the device (no host sync)."""
        total = torch.zeros(3, self.k, dtype=torch.long, device=self.device)
        batches = self._batches if self._batches is not None else (self._read(b) for b in self._chunks())
        with _eval_mode(network):
            for images, labels in batches:
                x = images.to(self.device, non_blocking=True)
                y = labels.to(self.device, non_blocking=True)[:, 0]
                with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                    logits = _main_output(network(x))
                if self.regions:
                    total[:, 1:] += region_counts(logits.float(), y, self.regions)
                    continue
                total += confusion_counts(masked_argmax(logits.float(), self.declared, dim=1), y, self.k,
                                          self.ignore_label)
        return total

    def __call__(self, network: nn.Module) -> dict[int, float]:
        """Pseudo-Dice per foreground class, or per region ``{r + 1: ...}`` for a region plan (one host copy)."""
        return dice_from_counts(self.counts(network).cpu(), self.labels)

    def close(self) -> None:
        self.loader.close()
