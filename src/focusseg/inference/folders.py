"""``predict_folder``: every case of an input folder (image files ``<case>_<CCCC><ending>``, or DICOM series, one
per case folder) predicted into an output folder, in the input's format or a chosen one (DICOM-SEG included).

Reading the next case and writing the previous one run on worker threads while the current case is being
predicted. The input folder is only read (never written into, its own outputs never read back as cases), every
output is written atomically, and a case that cannot be predicted is reported without stopping the others
(:class:`~focusseg.errors.PartialFailure` at the end).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from focusseg.errors import DatasetError, FocussegError, ImageError, MissingFileError, PartialFailure, UsageError
from focusseg.inference import probabilities as saved
from focusseg.inference.predictor import EnsemblePredictor, Predictor, case_named
from focusseg.inference.probabilities import save_probabilities
from focusseg.io import Geometry, read_case, write_image, write_segmentation
from focusseg.io.dicom import (
    DICOM_DEFAULT_OUTPUT_ENDING,
    dicom_cases,
    is_dicom_case,
    read_dicom_case,
    require_dicom_seg,
    write_dicom_seg,
)
from focusseg.io.paths import is_inside, safe_child, validate_case_id, validate_file_ending
from focusseg.metrics.files import channel_files, check_folder, output_ending, split_ending
from focusseg.regions import plan_regions
from focusseg.runfolder import refuse_link, remove_file_or_link

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
    inference over machines or ``torchrun`` ranks; the shares are disjoint and cover every case); the share is
    always said on stderr (``predicting part 1 of 4 (part id 0): 12 of 47 cases``).
    Temporaries, dot files, side outputs and names without ``_<CCCC>`` are ignored. Inputs are only
    read; each output is written atomically under ``out_dir`` (a stale symlink of an output's name is replaced
    itself, its target never written). A rerun after an interruption writes the same files again. A case whose
    prediction post-processing empties entirely gets a ``warning:`` line naming it.

    Raises:
        MissingFileError: ``in_dir`` does not exist. DatasetError: ``in_dir`` holds no case.
        UsageError: ``out_dir`` is, or lies inside, ``in_dir`` (outputs would sit among the inputs and be read
            back as cases), or is a run folder of the predictor.
        RunFolderError: ``out_dir`` is a symlink (outputs are never overwritten through a link).
        PartialFailure: after every other case was written, one error per case that could not be predicted
            (missing/surplus channel, unreadable file, NaN voxels, NaN/inf in the normalised input or in the
            network's logits, geometry mismatch, bad case id...).
        FocussegError: an output that cannot be written (disk full, permissions), naming it.
    """
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
        every = sorted({*cases, *failed})
        mine = set(every[i::k])
        cases = {c: v for c, v in cases.items() if c in mine}
        failed = {c: v for c, v in failed.items() if c in mine}
        # always said: a share is never mistaken for the whole folder
        print(f"predicting part {i + 1} of {k} (part id {i}): {len(mine)} of {len(every)} cases", file=sys.stderr)
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
    if cases or failed:  # predict overwrites outputs of the same name: never in a folder a link leads to
        refuse_link(out_dir, hint=f"name the folder the link points to ({out_dir.resolve()}) if that is meant")
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
            require_dicom_seg()
            not_dicom = next((files[0] for files, _ in cases.values() if not is_dicom_case(files)), None)
            if not_dicom is not None:
                raise UsageError("--output-format dicom-seg needs DICOM input (one series per case folder); this "
                                 f"case is an image file ({not_dicom.name})", not_dicom,
                                 hint="use --output-format nifti, nrrd or mha for image-file input")
        cases = {c: (files, OUTPUT_FORMATS[output_format]) for c, (files, _) in cases.items()}
    outputs = {c: (files, _output(out_dir, f"{c}{end}"), end) for c, (files, end) in cases.items()}
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
        for case, result in _read_ahead(pool, {c: o[0] for c, o in outputs.items()}, n_ch, in_dir):
            files, target, end = outputs[case]
            try:
                if isinstance(result, FocussegError):
                    raise result
                image, geo = result
                probs = None
                with case_named(files[0]):  # a case's own failure (non-finite logits...) names its file
                    if save_probabilities:
                        seg, unc, probs = predictor.predict_with_probabilities(image, geo, overlap, tta)
                    else:
                        seg, unc = predictor.predict(image, geo, overlap, tta)
                del image
            except FocussegError as exc:
                failures.append(exc)
                bar.advance(task)
                continue
            emptied = getattr(predictor, "emptied_foreground", 0)
            if emptied:
                print(f"warning: {files[0]}: the prediction is empty after post-processing (it removed all "
                      f"{emptied} foreground voxels the network predicted)", file=sys.stderr)
            write_seg = write_segmentation
            if output_format == "dicom-seg":  # side maps are NIfTI; the label map a DICOM-SEG of the source series
                from functools import partial as _partial

                write_seg = _partial(write_dicom_seg, source=files[0], labels=predictor.plan["labels"],
                                     ignore_label=predictor.plan.get("ignore_label"))
                end = ".nii.gz"
            if pending_write is not None:
                written.append(pending_write.result())
            if unc is not None:
                _write(write_image, _output(out_dir, f"{case}_uncertainty{end}"), unc, geo)
            if probs is not None:
                from functools import partial

                write_probs = partial(_save_probabilities, ending=end, kind="regions" if region_order else "softmax",
                                      labels=region_order or list(range(probs.shape[0])))
                _write(write_probs, _output(out_dir, f"{case}{saved.SUFFIX}"), probs, geo)
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
    pool: ThreadPoolExecutor, cases: dict[str, list[Path]], n_ch: int, root: Path | None = None
) -> Iterator[tuple[str, tuple[np.ndarray, Geometry] | FocussegError]]:
    """``(case, (image, geometry))`` in order, the next case read on ``pool`` meanwhile; a case that cannot be
    read yields its error instead. ``root``: the input folder a DICOM case must stay inside."""
    items = list(cases.items())

    def read(files: list[Path]) -> tuple[np.ndarray, Geometry] | FocussegError:
        try:
            return _read_input(files, n_ch, root)
        except FocussegError as exc:
            return exc

    fut = pool.submit(read, items[0][1]) if items else None
    for i, (case, _) in enumerate(items):
        assert fut is not None
        result = fut.result()
        fut = pool.submit(read, items[i + 1][1]) if i + 1 < len(items) else None
        yield case, result

def _input_cases(
    in_dir: Path, endings: tuple[str, ...] | None, n_ch: int
) -> tuple[dict[str, tuple[list[Path], str]], dict[str, FocussegError]]:
    """``({case: (channel files, output ending)}, {case: error})``: the cases of ``in_dir`` that can be read,
    and one error per case that cannot (bad case id, missing or surplus channel files, two files for one
    channel). Temporaries, dot files, side outputs and names without ``_<CCCC>`` are not cases."""
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
        series, bad = dicom_cases(in_dir, n_ch)
        cases.update({c: (folders, DICOM_DEFAULT_OUTPUT_ENDING) for c, folders in series.items()})
        failures.update(bad)
    return cases, failures


def _missing_channels(first: Path, present: list[int], n_ch: int) -> MissingFileError:
    """The error for a case whose channel files (beside ``first``, ``<case>_<CCCC><ending>``) are incomplete."""
    stem, ending = split_ending(first.name)  # type: ignore[misc]
    case = stem[:-5]
    missing = [c for c in range(n_ch) if c not in present]
    names = ", ".join(f"{case}_{c:04d}{ending}" for c in missing)
    return MissingFileError(f"case {case} lacks channel file(s) {names} (the run expects {n_ch} channel(s))",
                            first.parent / f"{case}_{missing[0]:04d}{ending}")


def _read_input(files: list[Path], n_ch: int, root: Path | None = None) -> tuple[np.ndarray, Geometry]:
    """A case's channels ``(C, X, Y, Z)`` and geometry, checked against what the run expects (a DICOM case's
    files checked again to stay inside ``root``, the input folder, when they are read)."""
    image, geo = read_dicom_case(files, root=root) if is_dicom_case(files) else read_case(files)[::2]
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


def _output(out_dir: Path, name: str) -> Path:
    """``out_dir / name`` for an output; a stale symlink of that name is removed itself (its target is never
    written), and a name that would land outside ``out_dir`` is refused (:func:`~focusseg.io.paths.safe_child`)."""
    path = out_dir / name
    if path.is_symlink():
        remove_file_or_link(path)
    return safe_child(out_dir, name)


def _save_probabilities(path: Path, probs: np.ndarray, geo: Geometry, labels: list[int], ending: str,
                        kind: str) -> Path:
    return save_probabilities(path, probs, geo, labels, ending, kind)


def _write(fn, path: Path, array: np.ndarray, geo: Geometry) -> Path:
    try:
        return fn(path, array, geo)
    except OSError as exc:
        raise FocussegError(f"cannot write the prediction ({exc.strerror or type(exc).__name__})", path) from exc

