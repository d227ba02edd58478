"""Whole-case prediction from a run folder: read -> preprocess (crop, normalise, resample) -> Gaussian sliding
window (+ mirror TTA) -> softmax -> resample back to the cropped original grid -> argmax -> paste into the
original shape -> an image with exactly the input's shape and affine.

Reading/preprocessing the next case and writing the previous one run on worker threads while the current
case is being predicted.

Trust: a run's checkpoint is loaded with ``weights_only=True`` onto the CPU (no code can run), checked (a plan,
finite weights that fit the network), then moved to the device. ``predict_folder`` never writes into the input
folder, never reads its own outputs back as cases, writes every output atomically, and reports a case it cannot
predict without stopping the others (:class:`~focusseg.errors.PartialFailure` at the end).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from focusseg.errors import (
    CheckpointError,
    DatasetError,
    FocussegError,
    ImageError,
    MissingFileError,
    PartialFailure,
    RunFolderError,
    UsageError,
)
from focusseg.io import Geometry, read_case, write_image, write_segmentation
from focusseg.preprocessing.preprocess import preprocess_array
from focusseg.regions import labels_from_region_probabilities, plan_regions

CHECKPOINTS = ("best", "final", "latest")
#: Plan fields inference needs; a checkpoint whose plan lacks one is refused when loaded, not mid-prediction.
REQUIRED_PLAN_KEYS = ("channel_names", "labels", "n_classes", "patch_size", "network", "training", "inference",
                      "normalization", "target_spacing")
TRAIN_HINT = "train first: focusseg train DATA --out RUN_DIR"


def _select_checkpoint(run_dir: Path, which: str) -> Path:
    """``run_dir/checkpoint_<which>.pt`` (``best`` falls back to ``final``, then ``latest``)."""
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


def _build_network(plan: dict, state_dict: Mapping[str, torch.Tensor], source: str | Path | None) -> torch.nn.Module:
    """The plan's inference module with ``state_dict`` loaded, on the CPU; weights that are not finite or do not
    fit the network are a :class:`CheckpointError` naming ``source``."""
    from focusseg.nets.from_plan import build_inference_module

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
                              f"{' '.join(str(exc).split())[:200]})", source) from exc
    try:
        network.load_state_dict(state_dict)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = " ".join(str(exc).split())[:240]
        raise CheckpointError(f"network weights do not fit the network its plan describes ({first})", source) from exc
    return network


class Predictor:
    """One trained network and its plan. ``Predictor.from_run(RUN_DIR)`` loads ``checkpoint_best.pt``.

    ``run_dir`` is the run folder it came from (None when built from a plan and weights directly)."""

    def __init__(self, plan: dict, state_dict: dict, device: str | torch.device | None = None,
                 postprocessing: list[dict] | None = None, source: str | Path | None = None) -> None:
        from focusseg.nets.from_plan import amp_dtype

        self.plan = plan
        self.postprocessing = list(postprocessing or [])  # steps for apply_postprocessing (chosen on validation)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.network = _build_network(plan, state_dict, source)  # on the CPU first
        self.network.to(self.device).eval()
        self.amp = amp_dtype(plan, self.device)
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
        from focusseg.inference.postprocess_selection import load_run_postprocessing
        from focusseg.io.checkpoint import load_checkpoint

        run_dir = Path(run_dir)
        path = _select_checkpoint(run_dir, checkpoint)
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
        from focusseg.inference import sliding_window_predict
        from focusseg.inference.tta import tta_predict

        data, _, props = preprocess_array(image, geometry, self.plan)
        inf = self.plan["inference"]
        mirror = tuple(inf.get("mirror_axes", ())) if tta else ()
        window = {"overlap": inf["overlap"] if overlap is None else overlap,
                  "batch_size": int(inf.get("batch_size", 2)), "device": self.device, "amp_dtype": self.amp}
        if self.plan.get("configuration", "3d") == "2d":  # the 2D configuration: slice by slice, stacked to 3D
            window["slice_axis"] = int(self.plan["slice_axis"])
        noise_passes = int(inf.get("noise_passes", 0)) if tta else 0
        if noise_passes > 0:
            gen = torch.Generator().manual_seed(int(inf.get("noise_seed", 0)))
            probs = tta_predict(self.network, torch.from_numpy(data), self.plan["patch_size"], mirror_axes=mirror,
                                noise_passes=noise_passes, noise_sigma=float(inf.get("noise_sigma", 0.1)),
                                generator=gen, activation="sigmoid" if self.regions else "softmax",
                                **window).probabilities
            return (probs if self.regions else self._only_declared_(probs)), props
        logits = sliding_window_predict(self.network, torch.from_numpy(data), self.plan["patch_size"],
                                        mirror_axes=mirror, **window)
        del data
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
            probs = _resize(probs, target)
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


def softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over axis 0 in place (``exp(z - max) / sum``); returns ``logits``, now probabilities."""
    logits.sub_(logits.amax(0, keepdim=True)).exp_()
    return logits.div_(logits.sum(0, keepdim=True))


def _resize(channels: torch.Tensor, target: tuple[int, ...]) -> torch.Tensor:
    """``(C, *spatial)`` probabilities linearly resampled to ``target`` (trilinear in 3D, bilinear in 2D)."""
    mode = "trilinear" if channels.ndim == 4 else "bilinear"
    return F.interpolate(channels[None], size=target, mode=mode, align_corners=False)[0]


def resample_add_(acc: torch.Tensor, probs: torch.Tensor, weight: float = 1.0, chunk: int = 4) -> torch.Tensor:
    """``acc += weight * interpolate(probs, acc's grid)``, ``chunk`` classes at a time (no K-channel temporary on
    the target grid); returns ``acc``."""
    target = tuple(acc.shape[1:])
    if tuple(probs.shape[1:]) == target:
        return acc.add_(probs.to(acc.device, acc.dtype), alpha=weight)
    for k0 in range(0, probs.shape[0], chunk):
        acc[k0 : k0 + chunk].add_(_resize(probs[k0 : k0 + chunk], target).to(acc.device, acc.dtype), alpha=weight)
    return acc


def resample_argmax(probs: torch.Tensor, target: tuple[int, ...]) -> torch.Tensor:
    """``argmax_k interpolate(probs)[k]`` (int16) on the ``target`` grid without a K-channel volume on that grid.

    Linear interpolation acts on each class separately, so classes are resampled one at a time and folded into a
    running maximum (in place) and arg-maximum (first maximal class wins, as ``torch.argmax``): peak memory about
    ``2.8 x`` one float32 volume on the target grid instead of ``K x`` -- what keeps a 512x512x300 CT with many
    classes in RAM.
    """
    if tuple(probs.shape[1:]) == tuple(target):
        return probs.argmax(0).to(torch.int16)
    best = _resize(probs[:1], target)[0]
    arg = torch.zeros(target, dtype=torch.int16)
    for k in range(1, probs.shape[0]):
        part = _resize(probs[k : k + 1], target)[0]
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
        from focusseg.inference.uncertainty import StreamingMoments, entropy, inverse_confidence

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
            labels = resample_argmax(probs, tuple(props["shape_after_crop"]))
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
                resample_add_(mean, probs, weight)
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
        if self.postprocessing:
            from focusseg.inference.postprocess import apply_postprocessing

            seg = apply_postprocessing(seg, self.postprocessing, geometry.spacing).astype(seg.dtype, copy=False)
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


def _input_cases(
    in_dir: Path, endings: tuple[str, ...] | None, n_ch: int
) -> tuple[dict[str, tuple[list[Path], str]], dict[str, FocussegError]]:
    """``({case: (channel files, output ending)}, {case: error})``: the cases of ``in_dir`` that can be read,
    and one error per case that cannot (bad case id, missing or surplus channel files, two files for one
    channel). Temporaries, dot files, side outputs and names without ``_<CCCC>`` are not cases."""
    from focusseg.io.paths import validate_case_id
    from focusseg.metrics.files import channel_files, output_ending, split_ending

    found, duplicates = channel_files(in_dir, endings)
    cases: dict[str, tuple[list[Path], str]] = {}
    failures: dict[str, FocussegError] = {}
    dup_cases = {}
    for p in duplicates:
        stem = split_ending(p.name, endings)[0]  # type: ignore[index]
        dup_cases.setdefault(stem.rsplit("_", 1)[0], p)
    for case, chans in found.items():
        first = chans[min(chans)]
        ending = split_ending(first.name, endings)[1]  # type: ignore[index]
        try:
            validate_case_id(case, first)
        except DatasetError as exc:
            failures[case] = exc
            continue
        if case in dup_cases:
            failures[case] = DatasetError("a second file for the same case and channel (another format?)",
                                          dup_cases[case], hint="keep one file per channel")
            continue
        missing = sorted(set(range(n_ch)) - set(chans))
        extra = sorted(set(chans) - set(range(n_ch)))
        if missing and not (n_ch > 1 and list(chans) == [0]):  # one file may hold every channel (MSD, 4D)
            failures[case] = _missing_channels(first, sorted(chans), n_ch)
            continue
        if extra:
            failures[case] = DatasetError(f"case {case} has channel file(s) beyond the {n_ch} the run was "
                                          "trained on", chans[extra[0]],
                                          hint="predict with a run trained on these channels")
            continue
        cases[case] = ([chans[c] for c in sorted(chans)], output_ending(ending))
    if endings is None and not found and not duplicates:  # DICOM: IN/<case>/ (or IN/<case>/<CCCC>/), one series each
        from focusseg.io.dicom import DICOM_DEFAULT_OUTPUT_ENDING, dicom_cases

        series, bad = dicom_cases(in_dir, n_ch)
        cases.update({c: (folders, DICOM_DEFAULT_OUTPUT_ENDING) for c, folders in series.items()})
        failures.update(bad)
    return cases, failures


def _missing_channels(first: Path, present: list[int], n_ch: int) -> MissingFileError:
    """The error for a case whose channel files (beside ``first``, ``<case>_<CCCC><ending>``) are incomplete."""
    from focusseg.metrics.files import split_ending

    stem, ending = split_ending(first.name)  # type: ignore[misc]
    case = stem[:-5]
    missing = [c for c in range(n_ch) if c not in present]
    names = ", ".join(f"{case}_{c:04d}{ending}" for c in missing)
    return MissingFileError(f"case {case} lacks channel file(s) {names} (the run expects {n_ch} channel(s))",
                            first.parent / f"{case}_{missing[0]:04d}{ending}")


def _read_input(files: list[Path], n_ch: int) -> tuple[np.ndarray, Geometry]:
    """A case's channels ``(C, X, Y, Z)`` and geometry, checked against what the run expects."""
    from focusseg.io.dicom import is_dicom_case, read_dicom_case

    image, geo = read_dicom_case(files) if is_dicom_case(files) else read_case(files)[::2]
    if image.ndim != 4:
        raise ImageError(f"expected a 3D image per channel, got an array of shape {tuple(image.shape[1:])}", files[0])
    if image.shape[0] == 1 and len(files) == 1 and n_ch > 1:  # not a 4D file holding every channel
        raise _missing_channels(files[0], [0], n_ch)
    if image.shape[0] != n_ch:
        layout = f" (one file per channel, _0000 to _{n_ch - 1:04d})" if image.shape[0] < n_ch else ""
        raise ImageError(f"holds {image.shape[0]} channel(s), the run expects {n_ch}{layout}", files[0])
    spacing = geo.spacing
    if not np.isfinite(geo.affine).all() or not all(np.isfinite(v) and v > 0 for v in spacing):
        raise ImageError(f"voxel spacing {tuple(round(v, 6) for v in spacing)} is not positive and finite", files[0])
    return image, geo


def _save_probabilities(path: Path, probs: np.ndarray, geo: Geometry, labels: list[int], ending: str,
                        kind: str) -> Path:
    from focusseg.inference.probabilities import save_probabilities

    return save_probabilities(path, probs, geo, labels, ending, kind)


def _write(fn, path: Path, array: np.ndarray, geo: Geometry) -> Path:
    try:
        return fn(path, array, geo)
    except OSError as exc:
        raise FocussegError(f"cannot write the prediction ({exc.strerror or type(exc).__name__})", path) from exc


#: ``predict --output-format``: the file ending written for each format (default: the input's own).
OUTPUT_FORMATS = {"nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha", "dicom-seg": ".dcm"}


def predict_folder(
    predictor: Predictor | EnsemblePredictor,
    in_dir: str | Path,
    out_dir: str | Path,
    overlap: float | None = None,
    tta: bool = True,
    progress: bool = True,
    file_ending: str | None = None,
    save_probabilities: bool = False,
    output_format: str | None = None,
    part: tuple[int, int] | None = None,
) -> list[Path]:
    """Predict every ``<case>_<CCCC><ending>`` set of files in ``in_dir`` into ``out_dir/<case><ending>`` (and
    ``<case>_uncertainty<ending>`` when the ensemble computes an uncertainty map); returns the files written.

    Inputs of every known ending are read (``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``...; the output keeps the
    input's format, ``.mhd``/``.nhdr`` become one-file ``.mha``/``.nrrd``); ``file_ending`` restricts the cases to
    one ending; ``output_format`` (:data:`OUTPUT_FORMATS`: nifti, nrrd, mha) writes every output in that format
    instead. ``save_probabilities``: also ``<case>_probabilities.npz`` (:mod:`focusseg.inference.probabilities`).
    ``part = (i, k)``: only share ``i`` of ``k`` (every ``k``-th case in sorted order from the ``i``-th: data-parallel
    inference over machines or ``torchrun`` ranks; the shares are disjoint and cover every case).
    Temporaries, dot files, side outputs and names without ``_<CCCC>`` are ignored. Inputs are only
    read; each output is written atomically under ``out_dir``. A rerun after an interruption writes the same
    files again.

    Raises:
        MissingFileError: ``in_dir`` does not exist. DatasetError: ``in_dir`` holds no case.
        UsageError: ``out_dir`` is, or lies inside, ``in_dir`` (outputs would sit among the inputs and be read
            back as cases), or is a run folder of the predictor.
        PartialFailure: after every other case was written, one error per case that could not be predicted
            (missing/surplus channel, unreadable file, NaN voxels, geometry mismatch, bad case id...).
        FocussegError: an output that cannot be written (disk full, permissions), naming it.
    """
    from focusseg.io.paths import is_inside, safe_child, validate_file_ending
    from focusseg.metrics.files import check_folder

    if not isinstance(predictor, EnsemblePredictor):
        predictor = EnsemblePredictor([predictor])
    in_dir, out_dir = check_folder(in_dir, "input"), Path(out_dir)
    if file_ending is not None:
        try:
            endings: tuple[str, ...] | None = (validate_file_ending(file_ending, "file_ending"),)
        except DatasetError as exc:
            raise UsageError(exc.problem) from exc
    else:
        endings = None
    n_ch = len(predictor.plan["channel_names"])
    cases, failed = _input_cases(in_dir, endings, n_ch)
    if part is not None:
        i, k = int(part[0]), int(part[1])
        if not (k >= 1 and 0 <= i < k):
            raise UsageError(f"part {i} of {k}: need 0 <= part id < number of parts")
        mine = set(sorted({*cases, *failed})[i::k])
        cases = {c: v for c, v in cases.items() if c in mine}
        failed = {c: v for c, v in failed.items() if c in mine}
        if not cases and not failed:
            return []  # more parts than cases: this share is empty
    if (cases or failed) and is_inside(out_dir, in_dir):
        raise UsageError(f"the output folder {out_dir} is the input folder or lies inside it: predictions would "
                         "be written among the input images (and read back as cases)", in_dir,
                         hint="choose an output folder outside the input folder")
    for member in predictor.members:
        run_dir = getattr(member, "run_dir", None)
        if run_dir is not None and (out_dir.resolve() == Path(run_dir).resolve()
                                    or is_inside(out_dir, Path(run_dir) / "validation")):
            raise UsageError(f"the output folder {out_dir} is the run folder (or its validation folder): "
                             "predictions would mix with the run's own files", run_dir,
                             hint="choose another output folder")
    if not cases and not failed:
        wanted = file_ending or ".nii.gz, .nii, .mha, .nrrd ..."
        raise DatasetError(f"no input images <case>_<CCCC>{file_ending or ''} ({wanted}) in this folder", in_dir,
                           hint="images are named like case001_0000.nii.gz, one file per channel (or DICOM: one "
                                "series per case folder, <case>/ or <case>/<CCCC>/)")
    failures: list[FocussegError] = list(failed.values())
    written: list[Path] = []
    if output_format is not None:
        if output_format not in OUTPUT_FORMATS:
            raise UsageError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
        if output_format == "dicom-seg":  # a DICOM Segmentation references its source series
            from focusseg.io.dicom import is_dicom_case, require_dicom_seg

            require_dicom_seg()
            not_dicom = next((files[0] for files, _ in cases.values() if not is_dicom_case(files)), None)
            if not_dicom is not None:
                raise UsageError("--output-format dicom-seg needs DICOM input (one series per case folder); this "
                                 f"case is an image file ({not_dicom.name})", not_dicom,
                                 hint="use --output-format nifti, nrrd or mha for image-file input")
        cases = {c: (files, OUTPUT_FORMATS[output_format]) for c, (files, _) in cases.items()}
    outputs = {c: (files, safe_child(out_dir, f"{c}{end}"), end) for c, (files, end) in cases.items()}
    if outputs:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FocussegError(f"cannot create the output folder ({exc.strerror or type(exc).__name__})",
                                out_dir) from exc
    from rich.progress import Progress

    # saved probabilities of a region run are region sigmoids, labelled with the values they paint
    region_order = [int(v) for v in predictor.plan["regions_class_order"]] if plan_regions(predictor.plan) else None
    with ThreadPoolExecutor(2) as pool, Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("predicting", total=len(outputs))
        pending_write = None
        for case, result in _read_ahead(pool, {c: o[0] for c, o in outputs.items()}, n_ch):
            try:
                if isinstance(result, FocussegError):
                    raise result
                image, geo = result
                probs = None
                if save_probabilities:
                    seg, unc, probs = predictor.predict_with_probabilities(image, geo, overlap, tta)
                else:
                    seg, unc = predictor.predict(image, geo, overlap, tta)
                del image
            except FocussegError as exc:
                failures.append(exc)
                bar.advance(task)
                continue
            files, target, end = outputs[case]
            write_seg = write_segmentation
            if output_format == "dicom-seg":  # side maps are NIfTI; the label map a DICOM-SEG of the source series
                from functools import partial as _partial

                from focusseg.io.dicom import write_dicom_seg

                write_seg = _partial(write_dicom_seg, source=files[0], labels=predictor.plan["labels"],
                                     ignore_label=predictor.plan.get("ignore_label"))
                end = ".nii.gz"
            if pending_write is not None:
                written.append(pending_write.result())
            if unc is not None:
                _write(write_image, safe_child(out_dir, f"{case}_uncertainty{end}"), unc, geo)
            if probs is not None:
                from functools import partial

                from focusseg.inference import probabilities as saved

                write_probs = partial(_save_probabilities, ending=end, kind="regions" if region_order else "softmax",
                                      labels=region_order or list(range(probs.shape[0])))
                _write(write_probs, safe_child(out_dir, f"{case}{saved.SUFFIX}"), probs, geo)
                del probs
            pending_write = pool.submit(_write, write_seg, target, seg, geo)
            bar.advance(task)
        if pending_write is not None:
            written.append(pending_write.result())
    if failures:
        exc = PartialFailure(failures, len(written))
        exc.written = written  # type: ignore[attr-defined]
        exc.hint = f"{len(written)} segmentation(s) written to {out_dir}; fix the cases named above and rerun"
        raise exc
    return written


def _read_ahead(
    pool: ThreadPoolExecutor, cases: dict[str, list[Path]], n_ch: int
) -> Iterator[tuple[str, tuple[np.ndarray, Geometry] | FocussegError]]:
    """``(case, (image, geometry))`` in order, the next case read on ``pool`` meanwhile; a case that cannot be
    read yields its error instead."""
    items = list(cases.items())

    def read(files: list[Path]) -> tuple[np.ndarray, Geometry] | FocussegError:
        try:
            return _read_input(files, n_ch)
        except FocussegError as exc:
            return exc

    fut = pool.submit(read, items[0][1]) if items else None
    for i, (case, _) in enumerate(items):
        assert fut is not None
        result = fut.result()
        fut = pool.submit(read, items[i + 1][1]) if i + 1 < len(items) else None
        yield case, result


def crossval_predictor(cv_dirs: str | Path | Sequence[str | Path], checkpoint: str = "best", device: Any = "cpu",
                       uncertainty: str | None = None, postprocess: bool = True,
                       postprocessing_file: str | Path | None = None) -> Any:
    """An :class:`~focusseg.inference.predictor.EnsemblePredictor` of every finished fold of one or more
    cross-validation folders: equal weights per fold within a CV (nnU-Net's default) and equal total weight per CV.
    Post-processing: ``postprocessing_file`` when given (e.g. ``focusseg best``'s choice for an ensemble of CVs),
    else a single CV's own (chosen on its pooled validation), else none; nothing when ``postprocess`` is false."""
    import torch

    from focusseg.inference.postprocess_selection import load_run_postprocessing, read_postprocessing_file
    from focusseg.runfolder import fold_dirs

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
        steps = read_postprocessing_file(postprocessing_file)
    elif len(cvs) == 1:
        steps = load_run_postprocessing(cvs[0], members[0].plan)
    else:
        steps = []
    return EnsemblePredictor(members, weights, uncertainty, postprocessing=steps)

