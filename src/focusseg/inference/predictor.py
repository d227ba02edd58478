"""Whole-case prediction with one trained network or a weighted ensemble: preprocess (crop, normalise, resample)
-> Gaussian sliding window (+ TTA) -> softmax (or a sigmoid per region) -> resample back to the cropped original
grid -> argmax -> paste into the original shape: a label map with exactly the input's shape.

The numbers are checked on the way, on arrays already in memory: a normalised input, logits or probabilities
holding NaN/inf stop that case with one error (:func:`check_finite`); a caller naming the case file
(:func:`case_named`) puts it into the message.

Loading and checking a run's checkpoint is :mod:`focusseg.inference.loading`; predicting a folder of images
(case discovery, output naming, DICOM) is :mod:`focusseg.inference.folders`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from focusseg.errors import FocussegError, RunFolderError, UsageError
from focusseg.inference import sliding_window_predict
from focusseg.inference.acceleration import InferenceForward
from focusseg.inference.loading import build_network, checkpoint_parts, select_checkpoint
from focusseg.inference.postprocess import apply_postprocessing
from focusseg.inference.postprocess_selection import load_run_postprocessing, read_postprocessing_file
from focusseg.inference.tta import tta_predict
from focusseg.inference.uncertainty import StreamingMoments, entropy, inverse_confidence
from focusseg.io import Geometry
from focusseg.io.checkpoint import load_checkpoint
from focusseg.nets.from_plan import amp_dtype
from focusseg.preprocessing.preprocess import preprocess_array
from focusseg.regions import labels_from_region_probabilities, plan_regions
from focusseg.runfolder import fold_dirs
from focusseg.settings import inference_settings, parse_plan_settings


class Predictor:
    """One trained network and its plan. ``Predictor.from_run(RUN_DIR)`` loads ``checkpoint_best.pt``.

    ``run_dir`` is the run folder it came from (None when built from a plan and weights directly). The plan is
    checked (:func:`~focusseg.settings.parse_plan_settings`: types, ranges and cost bounds) before its network is
    built: a :class:`~focusseg.errors.PlanError` naming ``source`` otherwise."""

    def __init__(self, plan: dict, state_dict: dict, device: str | torch.device | None = None,
                 postprocessing: list[dict] | None = None, source: str | Path | None = None) -> None:
        parse_plan_settings(plan, source)  # a plan from someone else's file: refused before anything is allocated
        self.plan = plan
        self.postprocessing = list(postprocessing or [])  # steps for apply_postprocessing (chosen on validation)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.network = build_network(plan, state_dict, source)  # on the CPU first
        self.network.to(self.device).eval()
        self.amp = amp_dtype(plan, self.device)
        #: the network's forward as the plan's ``inference.accelerate`` prepares it, reused for every case
        self.forward = InferenceForward(self.network, inference_settings(plan).accelerate)
        self.regions = plan_regions(plan)  # region plan: sigmoid outputs, painted back with regions_class_order
        self.run_dir: Path | None = None

    @classmethod
    def from_run(
        cls, run_dir: str | Path, checkpoint: str = "best", device: str | torch.device | None = None
    ) -> Predictor:
        """Load a run without executing code from it (:func:`focusseg.io.checkpoint.load_checkpoint`); its
        post-processing is the plan's fixed list or the steps chosen on validation (``postprocessing.json``, see
        :mod:`focusseg.inference.postprocess_selection`).

        Raises:
            MissingFileError: no run folder, or no checkpoint in it (hint: train first).
            CheckpointError: a checkpoint that is truncated, corrupt, carries Python objects, holds no plan /
                a plan without the fields inference needs / non-finite weights / weights that do not fit; an
                unreadable ``postprocessing.json``. Each names the file.
            UsageError: ``checkpoint`` not one of best, final, latest.
        """
        run_dir = Path(run_dir)
        path = select_checkpoint(run_dir, checkpoint)
        plan, weights = checkpoint_parts(load_checkpoint(path), path)
        steps = load_run_postprocessing(run_dir, plan)
        predictor = cls(plan, weights, device, steps, source=path)
        predictor.run_dir = run_dir
        return predictor

    def softmax_on_network_grid(
        self, image: np.ndarray, geometry: Geometry, overlap: float | None = None, tta: bool = True
    ) -> tuple[torch.Tensor, dict]:
        """Class probabilities ``(K, *preprocessed grid)`` (softmax computed in place on the sliding window's
        float32 logits: no second K-channel volume) and the preprocessing properties. A region plan (plan
        ``regions``, :mod:`focusseg.regions`) gives region probabilities ``(R, ...)``: a sigmoid per region.

        TTA (``tta=True``): the plan's ``inference.mirror_axes`` (averaged on logits), and, when
        ``inference.noise_passes`` > 0, that many extra passes with Gaussian input noise of
        ``inference.noise_sigma`` (default 0.1, seeded by ``inference.noise_seed``) averaged on probabilities with
        the clean pass (:func:`~focusseg.inference.tta.tta_predict`; the VALDO system's "flips and slight Gaussian
        noise")."""
        data, _, props = preprocess_array(image, geometry, self.plan)
        check_finite(data, "the normalised input (after preprocessing) holds",
                     "the image's intensities do not survive the plan's normalisation")
        inf = inference_settings(self.plan)
        mirror = inf.mirror_axes if tta else ()
        window = {"overlap": inf.need("overlap") if overlap is None else overlap,
                  "batch_size": inf.batch_size, "device": self.device, "amp_dtype": self.amp}
        if self.plan.get("configuration", "3d") == "2d":  # the 2D configuration: slice by slice, stacked to 3D
            window["slice_axis"] = int(self.plan["slice_axis"])
        noise_passes = inf.noise_passes if tta else 0
        if noise_passes > 0:
            gen = torch.Generator().manual_seed(inf.noise_seed)
            probs = tta_predict(self.network, torch.from_numpy(data), self.plan["patch_size"], mirror_axes=mirror,
                                noise_passes=noise_passes, noise_sigma=inf.noise_sigma,
                                generator=gen, activation="sigmoid" if self.regions else "softmax",
                                **window).probabilities
            check_finite(probs, "the network's probabilities hold", LOGITS_ADVICE)
            return (probs if self.regions else self._only_declared_(probs)), props
        logits = sliding_window_predict(self.network, torch.from_numpy(data), self.plan["patch_size"],
                                        mirror_axes=mirror, accelerate=self.forward, **window)
        del data
        check_finite(logits, "the network's logits hold", LOGITS_ADVICE)  # softmax/sigmoid of finite logits: finite
        if self.regions:  # region plan: independent sigmoid per region (focusseg.regions), in place
            return logits.sigmoid_(), props
        return self._only_declared_(softmax_(logits)), props

    def _only_declared_(self, probs: torch.Tensor) -> torch.Tensor:
        """Zero (in place) the probability of every output index that is not a declared label value, so a
        dataset with non-contiguous labels ({0, 1, 3}: index 2 is never trained) never predicts an undeclared
        value. The ignore label (plan ``ignore_label``, nnU-Net's) is never predicted: it is no class, so the
        network has no channel for it (its value is ``>= n_classes``); should a plan give it one, it is zeroed."""
        ignore = self.plan.get("ignore_label")
        declared = {int(v) for v in self.plan["labels"].values()} - ({int(ignore)} if ignore is not None else set())
        undeclared = [k for k in range(probs.shape[0]) if k not in declared]
        if undeclared:
            probs[undeclared] = 0
        return probs

    def probabilities(
        self, image: np.ndarray, geometry: Geometry, overlap: float | None = None, tta: bool = True
    ) -> tuple[torch.Tensor, dict]:
        """Class probabilities ``(K, *shape_after_crop)`` on the cropped original grid, and the properties."""
        probs, props = self.softmax_on_network_grid(image, geometry, overlap, tta)
        target = tuple(props["shape_after_crop"])
        if tuple(probs.shape[1:]) != target:
            probs = _resize(probs, target, props.get("separate_axis"))
        return probs, props

    def segment(
        self, image: np.ndarray, geometry: Geometry, overlap: float | None = None, tta: bool = True,
        postprocess: bool = True,
    ) -> np.ndarray:
        """Label map with the original ``geometry.shape`` (background outside the non-zero crop), with this run's
        post-processing unless ``postprocess=False``."""
        steps = self.postprocessing if postprocess else []
        return EnsemblePredictor([self], postprocessing=steps).segment(image, geometry, overlap, tta)


UNCERTAINTY = ("entropy", "variance", "inverse_confidence")

#: What non-finite network outputs usually mean, for the error line.
LOGITS_ADVICE = ("the network's activations overflow on this image (intensities far outside what it was trained "
                 "on, or damaged weights)")


def count_nonfinite(values: torch.Tensor | np.ndarray) -> int:
    """How many values of a float array or tensor are NaN or infinite (0 when all are finite).

    Cheap on the usual path: one sum in the array's own dtype (any NaN/inf makes it non-finite), no mask and no
    copy of the volume; only a non-finite sum (a bad value, or finite values whose sum overflows) is followed by
    the exact count.
    """
    if isinstance(values, np.ndarray):
        if not np.issubdtype(values.dtype, np.floating):
            return 0
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(values.sum()):
                return 0
        return int(values.size - np.count_nonzero(np.isfinite(values)))
    if not values.is_floating_point():
        return 0
    if bool(torch.isfinite(values.sum())):
        return 0
    return int(values.numel() - int(torch.isfinite(values).sum()))


def check_finite(values: torch.Tensor | np.ndarray, what: str, advice: str) -> None:
    """Stop the case when ``values`` hold NaN or inf (:func:`count_nonfinite`).

    Args:
        values: an array or tensor already in memory (input, logits, probabilities).
        what: what it is, with its verb, for the message ("the network's logits hold").
        advice: what it usually means.

    Raises:
        FocussegError: ``"<what> NaN/inf (N of M values): <advice>"``, without a file: the caller names the
            case (:func:`case_named`).
    """
    bad = count_nonfinite(values)
    if bad:
        total = values.size if isinstance(values, np.ndarray) else values.numel()
        raise FocussegError(f"{what} NaN/inf ({bad} of {total} values): {advice}")


@contextlib.contextmanager
def case_named(source: str | Path) -> Iterator[None]:
    """Within the block, an expected error that names no file names ``source`` (the case's image file), so a
    per-case failure (non-finite logits...) reads ``error: <case file>: <problem>``."""
    try:
        yield
    except FocussegError as exc:
        if exc.path is None:
            exc.path = Path(source)
        raise


def softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over axis 0 in place (``exp(z - max) / sum``); returns ``logits``, now probabilities."""
    logits.sub_(logits.amax(0, keepdim=True)).exp_()
    return logits.div_(logits.sum(0, keepdim=True))


def _resize(channels: torch.Tensor, target: tuple[int, ...], separate: int | None = None) -> torch.Tensor:
    """``(C, *spatial)`` probabilities linearly resampled to ``target`` (trilinear in 3D, bilinear in 2D).

    ``separate``: a spatial axis resampled on its own by nearest neighbour after the linear pass in plane (nnU-Net's
    separate-z resampling of anisotropic cases: ``order_z`` 0); linear interpolation that keeps an axis's size
    leaves it untouched, so the first pass acts slice by slice."""
    mode = "trilinear" if channels.ndim == 4 else "bilinear"
    if separate is None or channels.shape[1 + separate] == target[separate]:
        return F.interpolate(channels[None], size=target, mode=mode, align_corners=False)[0]
    in_plane = list(target)
    in_plane[separate] = channels.shape[1 + separate]
    out = F.interpolate(channels[None], size=tuple(in_plane), mode=mode, align_corners=False)
    return F.interpolate(out, size=target, mode="nearest-exact")[0]


def resample_add_(acc: torch.Tensor, probs: torch.Tensor, weight: float = 1.0, chunk: int = 4,
                  separate: int | None = None) -> torch.Tensor:
    """``acc += weight * interpolate(probs, acc's grid)``, ``chunk`` classes at a time (no K-channel temporary on
    the target grid); returns ``acc``. ``separate``: as :func:`_resize`."""
    target = tuple(acc.shape[1:])
    if tuple(probs.shape[1:]) == target:
        return acc.add_(probs.to(acc.device, acc.dtype), alpha=weight)
    for k0 in range(0, probs.shape[0], chunk):
        part = _resize(probs[k0 : k0 + chunk], target, separate)
        acc[k0 : k0 + chunk].add_(part.to(acc.device, acc.dtype), alpha=weight)
    return acc


def resample_argmax(probs: torch.Tensor, target: tuple[int, ...], separate: int | None = None) -> torch.Tensor:
    """``argmax_k interpolate(probs)[k]`` (int16) on the ``target`` grid without a K-channel volume on that grid.

    Linear interpolation acts on each class separately, so classes are resampled one at a time and folded into a
    running maximum (in place) and arg-maximum (first maximal class wins, as ``torch.argmax``): peak memory about
    ``2.8 x`` one float32 volume on the target grid instead of ``K x`` -- what keeps a 512x512x300 CT with many
    classes in RAM. ``separate``: as :func:`_resize`.
    """
    if tuple(probs.shape[1:]) == tuple(target):
        return probs.argmax(0).to(torch.int16)
    best = _resize(probs[:1], target, separate)[0]
    arg = torch.zeros(target, dtype=torch.int16)
    for k in range(1, probs.shape[0]):
        part = _resize(probs[k : k + 1], target, separate)[0]
        better = part > best
        arg.masked_fill_(better, k)
        torch.maximum(best, part, out=best)
        del part, better
    return arg


class EnsemblePredictor:
    """Weighted ensemble of trained runs (any architectures, each with its own plan, patch and preprocessing).

    Each member's class probabilities are resampled to the cropped original grid and added, with its weight,
    to ONE running sum (:class:`~focusseg.inference.uncertainty.StreamingMoments`), so memory does not grow with
    the number of members. ``uncertainty``: ``"entropy"`` (normalised entropy of the mean probabilities),
    ``"variance"`` (between-member variance, mean over classes) or ``"inverse_confidence"`` (the VALDO paper's
    map, in the reading documented in :mod:`focusseg.inference.uncertainty`); ``None`` for none.

    ``postprocessing``: steps applied to the label map (:func:`~focusseg.inference.postprocess.apply_postprocessing`).
    Default ``None``: a single run's own steps (chosen on its validation); an ensemble of several runs gets none,
    because each run's choice was measured on that run's predictions, not on the ensemble's.
    """

    def __init__(
        self, members: list[Predictor], weights: list[float] | None = None, uncertainty: str | None = None,
        postprocessing: list[dict] | None = None,
    ) -> None:
        if not members:
            raise UsageError("an ensemble needs at least one run")
        weights = list(weights) if weights is not None else [1.0] * len(members)
        if len(weights) != len(members) or not all(np.isfinite(w) and w > 0 for w in weights):
            raise UsageError(f"need one positive weight per run: {len(members)} runs, weights {weights}")
        if uncertainty is not None and uncertainty not in UNCERTAINTY:
            raise UsageError(f"uncertainty must be one of {UNCERTAINTY}, got {uncertainty!r}")
        channels = {len(m.plan["channel_names"]) for m in members}
        classes = {int(m.plan["n_classes"]) for m in members}
        if len({str((m.plan.get("regions"), m.plan.get("regions_class_order"))) for m in members}) > 1:
            raise UsageError("ensemble members disagree on regions (region-based and label runs, or other regions)")
        if len(channels) > 1 or len(classes) > 1:
            raise UsageError(f"ensemble members disagree on input channels {channels} or classes {classes}")
        self.members, self.weights, self.uncertainty = members, weights, uncertainty
        self.plan = members[0].plan
        if postprocessing is None:
            postprocessing = members[0].postprocessing if len(members) == 1 else []
        self.postprocessing = list(postprocessing)
        #: foreground voxels of the last prediction that post-processing removed, all of them (else 0)
        self.emptied_foreground = 0

    def predict(
        self, image: np.ndarray, geometry: Geometry, overlap: float | None = None, tta: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(segmentation, uncertainty map or None)``, both with the original ``geometry.shape``."""
        seg, unc, _ = self._predict(image, geometry, overlap, tta, False)
        return seg, unc

    def predict_with_probabilities(
        self, image: np.ndarray, geometry: Geometry, overlap: float | None = None, tta: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``(segmentation, uncertainty or None, probabilities)``: the (weighted mean) class probabilities
        ``(K, *geometry.shape)`` float32 on the original grid (background 1 outside the network's crop); the
        segmentation is their argmax (then post-processed)."""
        seg, unc, probs = self._predict(image, geometry, overlap, tta, True)
        assert probs is not None
        return seg, unc, probs

    def _predict(
        self, image: np.ndarray, geometry: Geometry, overlap: float | None, tta: bool, want_probabilities: bool
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        regions = self.members[0].regions
        if regions and self.uncertainty is not None:
            raise UsageError("uncertainty maps assume softmax class probabilities; a region-based run has sigmoid "
                             "regions (predict without --uncertainty)")
        if regions and len(self.members) == 1 and not want_probabilities:  # regions: R small channels resampled
            probs, props = self.members[0].probabilities(image, geometry, overlap, tta)
            labels, n_classes = self._region_labels(probs), probs.shape[0]
            del probs
        elif len(self.members) == 1 and self.uncertainty is None and not want_probabilities:  # streaming path
            probs, props = self.members[0].softmax_on_network_grid(image, geometry, overlap, tta)
            labels = resample_argmax(probs, tuple(props["shape_after_crop"]), props.get("separate_axis"))
            n_classes = probs.shape[0]
            del probs
        elif self.uncertainty == "variance":  # needs the sum of squares too
            moments = StreamingMoments(track_variance=True)
            props = {}
            for member, weight in zip(self.members, self.weights):
                probs, props = member.probabilities(image, geometry, overlap, tta)
                moments.add(probs, weight)
                del probs
            mean = moments.mean()
            labels, n_classes = mean.argmax(0), mean.shape[0]
        else:  # one weighted sum on the original grid; members resampled into it class-chunk by class-chunk
            mean, props = None, {}
            for member, weight in zip(self.members, self.weights):
                probs, props = member.softmax_on_network_grid(image, geometry, overlap, tta)
                if mean is None:
                    mean = torch.zeros((probs.shape[0], *props["shape_after_crop"]), dtype=torch.float32)
                resample_add_(mean, probs, weight, separate=props.get("separate_axis"))
                del probs
            mean.div_(sum(self.weights))
            labels, n_classes = (mean.argmax(0) if not regions else self._region_labels(mean)), mean.shape[0]
        if regions:  # the label values the regions paint
            n_classes = max(int(v) for v in self.plan["regions_class_order"]) + 1
        box = tuple(slice(lo, hi) for lo, hi in props["bbox"])
        seg = np.zeros(geometry.shape, dtype=np.uint8 if n_classes < 256 else np.int16)
        seg[box] = labels.numpy()
        full = None
        if want_probabilities:
            full = np.zeros((mean.shape[0], *geometry.shape), dtype=np.float32)
            if not regions:  # region probabilities stay 0 outside the crop
                full[0] = 1.0  # outside the crop the network saw: background, as the segmentation there
            full[(slice(None), *box)] = mean.numpy()
        self.emptied_foreground = 0
        if self.postprocessing:
            before = int(np.count_nonzero(seg))
            seg = apply_postprocessing(seg, self.postprocessing, geometry.spacing).astype(seg.dtype, copy=False)
            if before and not seg.any():  # the caller warns, naming the case
                self.emptied_foreground = before
        if self.uncertainty is None:
            return seg, None, full
        if self.uncertainty == "entropy":
            u = entropy(mean, normalize=True)
        elif self.uncertainty == "variance":
            u = moments.variance().mean(0)
        else:
            u = inverse_confidence(mean)
        unc = np.zeros(geometry.shape, dtype=np.float32)
        unc[box] = u.numpy()
        return seg, unc, full

    def segment(
        self, image: np.ndarray, geometry: Geometry, overlap: float | None = None, tta: bool = True
    ) -> np.ndarray:
        return self.predict(image, geometry, overlap, tta)[0]

    def _region_labels(self, probs: torch.Tensor) -> torch.Tensor:
        """Region probabilities ``(R, ...)`` -> label map
        (:func:`~focusseg.regions.labels_from_region_probabilities`)."""
        return labels_from_region_probabilities(probs, self.plan["regions_class_order"])


def crossval_predictor(cv_dirs: str | Path | Sequence[str | Path], checkpoint: str = "best", device: Any = "cpu",
                       uncertainty: str | None = None, postprocess: bool = True,
                       postprocessing_file: str | Path | None = None) -> EnsemblePredictor:
    """An :class:`~focusseg.inference.predictor.EnsemblePredictor` of every finished fold of one or more
    cross-validation folders: equal weights per fold within a CV (nnU-Net's default) and equal total weight per CV.
    Post-processing: ``postprocessing_file`` when given (e.g. ``focusseg best``'s choice for an ensemble of CVs),
    else a single CV's own (chosen on its pooled validation), else none; nothing when ``postprocess`` is false."""
    cvs = [Path(cv_dirs)] if isinstance(cv_dirs, (str, Path)) else [Path(c) for c in cv_dirs]
    dev = torch.device(device) if isinstance(device, str) else device
    members, weights = [], []
    for cv in cvs:
        folds = fold_dirs(cv)
        if not folds:
            raise RunFolderError("no finished fold to predict with", cv,
                                 hint="train folds first: focusseg crossval DATA --out CV")
        members += [Predictor.from_run(d, checkpoint, dev) for d in folds]
        weights += [1.0 / len(folds)] * len(folds)
    if not postprocess:
        steps: list[dict] = []
    elif postprocessing_file is not None:
        steps = read_postprocessing_file(postprocessing_file, [int(v) for v in members[0].plan["labels"].values()])
    elif len(cvs) == 1:
        steps = load_run_postprocessing(cvs[0], members[0].plan)
    else:
        steps = []
    return EnsemblePredictor(members, weights, uncertainty, postprocessing=steps)
