"""DICOM input (one series per case folder, read with SimpleITK/GDCM) and DICOM Segmentation output (highdicom).

Input (``focusseg predict RUN IN OUT``): an input folder with no image files but subfolders is a DICOM folder;
each subfolder is a case (``IN/<case>/*.dcm``, or ``IN/<case>/<CCCC>/*.dcm`` per channel). A case folder holds
exactly one series; several series, uneven or duplicated slice positions, gantry tilt, mixed orientations,
multi-frame and colour images are refused with one line naming the folder (a dropped slice would shift every
voxel after it). Geometry is converted as for a ``.mha`` (``(z, y, x)`` -> ``(x, y, z)``, LPS -> RAS), so a series
gives the same array and affine as the NIfTI that SimpleITK or dcm2niix writes from it.

Output: :func:`write_dicom_seg` writes a DICOM Segmentation (``<case>.dcm``) that references the source series,
one segment per foreground label; it needs the extra ``focusseg[dicom]`` (pydicom, highdicom). ``docs/io.md``.
"""

from __future__ import annotations

import contextlib
import functools
import locale
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from focusseg import __version__
from focusseg.errors import DatasetError, FocussegError, ImageError, MissingFileError, UsageError, one_line
from focusseg.io.atomic import atomic_path, is_temp_name
from focusseg.io.geometry import Geometry, ImageReadError, check_affine, check_declared_shape, voxel_limit
from focusseg.io.paths import validate_case_id

#: The ending of a DICOM Segmentation output (``predict --output-format dicom-seg``).
DICOM_SEG_ENDING = ".dcm"
#: The default output ending of a case read from DICOM (``--output-format`` picks another).
DICOM_DEFAULT_OUTPUT_ENDING = ".nii.gz"
#: File names a DICOM folder may hold beside its series (media directory, never an image).
IGNORED_NAMES = frozenset({"DICOMDIR"})
_CHANNEL_DIR_RE = re.compile(r"^\d{4}$")
#: Largest allowed deviation of a slice from the regular stack, as a fraction of the slice spacing.
SLICE_TOLERANCE = 0.01

LAYOUT_HINT = ("DICOM input is one folder per case, IN/<case>/ holding one series (or IN/<case>/0000/, "
               "IN/<case>/0001/ ... one series per channel)")


_F = TypeVar("_F", bound=Callable[..., Any])


@contextlib.contextmanager
def kept_locale() -> Iterator[None]:
    """Restore the process locale afterwards: GDCM (inside SimpleITK's DICOM reading) sets the C locale to "C"
    for its number parsing and leaves it there (seen here), which turns Python's default text encoding into
    ASCII for the rest of the process (every later ``read_text()`` of a non-ASCII file then fails)."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        with contextlib.suppress(locale.Error):
            locale.setlocale(locale.LC_ALL, saved)


def keeps_locale(fn: _F) -> _F:
    """Decorator: ``fn`` runs inside :func:`kept_locale`."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with kept_locale():
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def _sitk(what: str = "read DICOM series"):
    try:
        import SimpleITK as sitk
    except ImportError as exc:
        raise UsageError(f"install focusseg[dicom] (SimpleITK) to {what}",
                         hint="pip install 'focusseg[dicom]'") from exc
    return sitk


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = one_line(exc) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _visible(folder: Path) -> list[Path]:
    """Entries of ``folder`` that are not dot files or temporaries, sorted by name."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and not is_temp_name(p.name))


def has_case_folders(in_dir: Path) -> bool:
    """Whether ``in_dir`` has a subfolder (not a dot folder or temporary) that can be a DICOM case."""
    return any(p.is_dir() for p in _visible(Path(in_dir)))


@keeps_locale
def dicom_cases(in_dir: str | Path, n_channels: int) -> tuple[dict[str, list[Path]], dict[str, FocussegError]]:
    """``({case: [channel folder, ...]}, {case: error})`` for the case folders of a DICOM input folder.

    ``IN/<case>/`` is the single series of a one-channel case; ``IN/<case>/<CCCC>/`` are the channel series of a
    multi-channel case (exactly ``0000`` .. ``n_channels - 1``). The series themselves are found when read
    (:func:`read_dicom_case`). Errors (one per case, naming the folder): a bad case id, a missing or surplus
    channel folder, files beside the channel folders, subfolders that are not channel folders."""
    in_dir = Path(in_dir)
    cases: dict[str, list[Path]] = {}
    failures: dict[str, FocussegError] = {}
    for sub in _visible(in_dir):
        if not sub.is_dir():
            continue
        case = sub.name
        try:
            validate_case_id(case, sub)
            cases[case] = _case_channels(sub, n_channels)
        except FocussegError as exc:
            failures[case] = exc
    return cases, failures


def _case_channels(sub: Path, n_ch: int) -> list[Path]:
    case = sub.name
    entries = _visible(sub)
    dirs = [p for p in entries if p.is_dir()]
    channel_dirs = {int(p.name): p for p in dirs if _CHANNEL_DIR_RE.match(p.name)}
    others = [p for p in dirs if not _CHANNEL_DIR_RE.match(p.name)]
    if others:
        raise DatasetError(f"subfolder {others[0].name!r} of case {case} is not a channel folder (0000, 0001 ...)",
                           others[0], hint=LAYOUT_HINT)
    if not channel_dirs:
        if n_ch > 1:
            names = ", ".join(f"{c:04d}/" for c in range(n_ch))
            raise MissingFileError(f"case {case} lacks channel folders: the run expects {n_ch} channels, one "
                                   f"series per subfolder {names}", sub, hint=LAYOUT_HINT)
        return [sub]
    files = [p for p in entries if p.is_file() and p.name not in IGNORED_NAMES]
    if files:
        raise DatasetError(f"case {case} holds files ({files[0].name}) beside its channel folders: put each "
                           "series in its channel folder", sub, hint=LAYOUT_HINT)
    missing = [c for c in range(n_ch) if c not in channel_dirs]
    if missing:
        names = ", ".join(f"{c:04d}/" for c in missing)
        raise MissingFileError(f"case {case} lacks channel folder(s) {names} (the run expects {n_ch} channel(s))",
                               sub / f"{missing[0]:04d}", hint=LAYOUT_HINT)
    extra = sorted(set(channel_dirs) - set(range(n_ch)))
    if extra:
        raise DatasetError(f"case {case} has channel folder {extra[0]:04d}/ beyond the {n_ch} channel(s) the run "
                           "was trained on", channel_dirs[extra[0]],
                           hint="predict with a run trained on these channels")
    return [channel_dirs[c] for c in range(n_ch)]


@dataclass(frozen=True)
class DicomSeries:
    """One series of a folder: its SeriesInstanceUID and its files, sorted by position along the slice normal
    (GDCM's order, the order of the volume's third axis)."""

    folder: Path
    uid: str
    files: tuple[Path, ...]


@keeps_locale
def find_series(folder: str | Path) -> DicomSeries:
    """The single DICOM series of ``folder`` (files directly in it). :class:`ImageReadError` naming the folder
    when it is missing, holds no file, no DICOM image, several series, or files that are not images of the
    series (a corrupt slice would otherwise be silently left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError("DICOM folder not found", folder)
    files = [p for p in _visible(folder) if p.is_file() and p.name not in IGNORED_NAMES]
    if not files:
        raise ImageReadError("holds no files (expected the files of one DICOM series)", folder)
    sitk = _sitk()
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK prints "No Series were found": the error below says it
    try:
        ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError as exc:
        raise ImageReadError(f"cannot be scanned for DICOM series ({_one_line(exc)})", folder) from exc
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    if not ids:
        raise ImageReadError(f"holds no DICOM series ({len(files)} file(s), none a DICOM image, e.g. "
                             f"{files[0].name})", folder)
    groups = {uid: tuple(Path(n) for n in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
              for uid in ids}
    if len(groups) > 1:
        desc = "; ".join(f"{uid} ({len(f)} file(s))" for uid, f in list(groups.items())[:4])
        raise ImageReadError(f"holds {len(groups)} DICOM series ({desc}): a case folder holds one series", folder,
                             hint="move each series into its own folder (one case, or one channel folder 0000/, "
                                  "0001/ ... of a case)")
    uid, names = next(iter(groups.items()))
    known = {p.resolve() for p in names}
    strays = [p for p in files if p.resolve() not in known]
    if strays:
        more = f" (and {len(strays) - 1} more)" if len(strays) > 1 else ""
        raise ImageReadError(f"{strays[0].name} is not an image of the series {uid} in this folder (not DICOM, "
                             f"unreadable, or a non-image object){more}",
                             folder, hint="keep only the files of one series in a case folder")
    return DicomSeries(folder, uid, names)


def _slice_geometry(sitk, path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], int, np.ndarray]:
    """``(origin LPS, direction 3x3, size, components, spacing)`` of one slice file, from its header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(f"unreadable DICOM header ({_one_line(exc)})", path) from exc
    dim = reader.GetDimension()
    origin = np.zeros(3)
    origin[: min(dim, 3)] = np.asarray(reader.GetOrigin(), dtype=np.float64)[:3]
    direction = np.eye(3)
    d = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim)
    direction[: min(dim, 3), : min(dim, 3)] = d[:3, :3]
    size = tuple(int(s) for s in reader.GetSize())
    spacing = np.ones(3)
    spacing[: min(dim, 3)] = np.asarray(reader.GetSpacing(), dtype=np.float64)[:3]
    return origin, direction, size, int(reader.GetNumberOfComponents()), spacing


def _check_stack(series: DicomSeries, sitk) -> None:
    """The slices form one regular stack: same size, orientation and single frame each, positions along the
    normal, evenly spaced (within :data:`SLICE_TOLERANCE` of the spacing), none duplicated."""
    infos = [_slice_geometry(sitk, p) for p in series.files]
    origin0, dir0, size0, comps0, _ = infos[0]
    if comps0 != 1:
        raise ImageReadError(f"{series.files[0].name} is a colour image ({comps0} samples per pixel): focusseg "
                             "reads grey-level series", series.folder)
    if len(size0) > 2 and size0[2] > 1:
        raise ImageReadError(f"{series.files[0].name} is a multi-frame file ({size0[2]} frames): focusseg reads "
                             "classic series of single-frame slices", series.folder,
                             hint="convert it to NIfTI (e.g. dcm2niix) or to single-frame slices")
    for path, (_, d, size, _, _) in zip(series.files[1:], infos[1:]):
        if size[:2] != size0[:2]:
            raise ImageReadError(f"{path.name} is {size[0]}x{size[1]}, the series' first slice "
                                 f"{size0[0]}x{size0[1]}", series.folder)
        if not np.allclose(d[:, :2], dir0[:, :2], atol=1e-4):
            raise ImageReadError(f"{path.name} has another orientation (ImageOrientationPatient) than the "
                                 "series' first slice (a localizer or several stacks in one series?)", series.folder)
    if len(infos) < 2:
        return
    normal = np.cross(dir0[:, 0], dir0[:, 1])
    pos = np.stack([o for o, *_ in infos])
    along = (pos - pos[0]) @ normal
    steps = np.diff(along)
    if (np.abs(steps) < 1e-4).any():
        k = int(np.flatnonzero(np.abs(steps) < 1e-4)[0])
        raise ImageReadError(f"{series.files[k].name} and {series.files[k + 1].name} lie at the same position "
                             "(several echoes, phases or acquisitions in one series?)", series.folder)
    dz = (along[-1] - along[0]) / (len(along) - 1)
    tol = SLICE_TOLERANCE * abs(dz) + 1e-4
    off = np.abs(along - dz * np.arange(len(along)))
    if off.max() > tol:
        k = int(off.argmax())
        raise ImageReadError(f"slices are not evenly spaced: {series.files[k].name} lies {off[k]:.3g} mm off the "
                             f"regular {abs(dz):.4g} mm stack (a missing slice?)", series.folder)
    shear = np.linalg.norm((pos - pos[0]) - np.outer(along, normal), axis=1)
    if shear.max() > tol:
        raise ImageReadError(f"slice positions are not along the slice normal (sheared by up to {shear.max():.3g} "
                             "mm: a gantry tilt?): resample the series first", series.folder)


@keeps_locale
def read_series(folder: str | Path, dtype: type = np.float32, max_voxels: int | None = None
                ) -> tuple[np.ndarray, Geometry]:
    """The single series of ``folder`` as ``(X, Y, Z)`` array (rescale slope/intercept applied) and geometry
    (RAS affine), converted exactly as :mod:`focusseg.io.image` converts a SimpleITK image. The voxel count is
    checked against the limit (:func:`focusseg.io.geometry.voxel_limit`) before any voxel is read; NaN/inf and
    non-positive spacing are refused. Errors name the folder."""
    sitk = _sitk()
    series = find_series(folder)
    folder = series.folder
    _check_stack(series, sitk)
    size = _slice_geometry(sitk, series.files[0])[2]
    check_declared_shape(folder, (size[0], size[1], len(series.files)), voxel_limit(max_voxels))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.files])
    reader.SetOutputPixelType(sitk.sitkFloat32)  # each slice rescaled on its own, never cast to the first's type
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise ImageReadError(f"unreadable DICOM series ({_one_line(exc)})", folder) from exc
    arr = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))  # (z, y, x) -> (x, y, z), as image._read_sitk
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    if not np.isfinite(spacing).all() or (spacing <= 0).any():
        raise ImageReadError(f"zero, negative or NaN voxel spacing {spacing.tolist()}", folder)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[None, :]
    affine[:3, 3] = np.asarray(img.GetOrigin(), dtype=np.float64)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
    check_affine(folder, affine)
    if arr.ndim != 3:
        raise ImageReadError(f"read an array of shape {arr.shape}, expected a 3D volume", folder)
    return arr.astype(dtype, copy=False), Geometry(affine, tuple(int(s) for s in arr.shape))


@keeps_locale
def read_dicom_case(folders: Sequence[Path], max_voxels: int | None = None) -> tuple[np.ndarray, Geometry]:
    """A case's channel series stacked as ``(C, X, Y, Z)`` float32 with their geometry (as
    :func:`focusseg.io.image.read_case`): every channel must share shape and affine; NaN/inf voxels are refused."""
    channels, geometry = [], None
    for folder in folders:
        arr, geo = read_series(folder, max_voxels=max_voxels)
        if geometry is None:
            geometry = geo
        elif not geometry.matches(geo):
            raise ImageReadError(f"geometry differs from the series in {folders[0]} (shape {geo.shape} vs "
                                 f"{geometry.shape}, affine max diff {np.abs(geo.affine - geometry.affine).max():.3g})",
                                 folder)
        if not np.isfinite(arr).all():
            raise ImageReadError(f"{int((~np.isfinite(arr)).sum())} NaN/inf voxels", folder)
        channels.append(arr)
    if geometry is None:
        raise ImageError("a case needs at least one series")
    return np.stack(channels, 0), geometry


# --- DICOM Segmentation output -------------------------------------------------------------------------------

def _highdicom(path: Path | None = None):
    try:
        import highdicom as hd
        import pydicom
    except ImportError as exc:
        raise UsageError("--output-format dicom-seg needs the optional extra focusseg[dicom] (pydicom, highdicom)",
                         path, hint="pip install 'focusseg[dicom]'") from exc
    return hd, pydicom


def require_dicom_seg() -> None:
    """Refuse (one line, :class:`UsageError`) before any prediction when highdicom/pydicom are not installed."""
    _highdicom()


def foreground_labels(labels: Mapping[str, object], ignore_label: int | None = None) -> list[tuple[str, int]]:
    """``[(name, value)]`` of the integer foreground labels of a plan's ``labels`` (value > 0, not the ignore
    label), sorted by value: the segments of a DICOM-SEG, numbered 1, 2, ... in this order."""
    out = []
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            continue  # a region (list of labels) has no single value in the label map
        if int(value) > 0 and (ignore_label is None or int(value) != int(ignore_label)):
            out.append((str(name), int(value)))
    return sorted(out, key=lambda nv: nv[1])


@keeps_locale
def write_dicom_seg(
    path: str | Path, seg: np.ndarray, geometry: Geometry, source: str | Path, labels: Mapping[str, object],
    *, ignore_label: int | None = None, segmentation_type: str = "binary", series_description: str | None = None,
) -> Path:
    """Write the label map ``seg`` ``(X, Y, Z)`` as a DICOM Segmentation object (``hd.seg.Segmentation``)
    referencing the series in the ``source`` folder it was predicted from; atomically.

    One segment per foreground label of ``labels`` (name -> value, the dataset's label names; segment numbers
    1.. in value order, property category and type SCT "Tissue", algorithm AUTOMATIC, identification
    ``focusseg <version>``, family Artificial Intelligence). ``segmentation_type``: ``"binary"`` (one bit-packed
    frame per source slice and non-empty segment, read by every DICOM-SEG consumer) or ``"labelmap"`` (one
    frame per slice, DICOM 2024 LABELMAP). ``seg`` must have the source series' shape and ``geometry`` its
    geometry (the one :func:`read_series` returned); values not declared as foreground labels are refused."""
    from pydicom.sr.codedict import codes

    path = Path(path)
    hd, pydicom = _highdicom(path)
    sitk = _sitk("read the source DICOM series")
    series = find_series(source)
    src_geo = _series_geometry(series, sitk)
    if tuple(seg.shape) != tuple(src_geo.shape) or not src_geo.matches(geometry):
        raise ImageError(f"segmentation shape {tuple(seg.shape)} / geometry does not match the source series "
                         f"{src_geo.shape}", series.folder)
    segments = foreground_labels(labels, ignore_label)
    if not segments:
        raise UsageError("the run declares no foreground label: a DICOM-SEG needs at least one segment", path)
    lut = np.zeros(int(max(int(seg.max(initial=0)), segments[-1][1])) + 1, dtype=np.uint16)
    for number, (_, value) in enumerate(segments, 1):
        lut[value] = number
    present = set(np.unique(seg).tolist()) - {0}
    undeclared = sorted(present - {v for _, v in segments})
    if undeclared or int(seg.min(initial=0)) < 0:
        raise ImageError(f"segmentation holds label values {undeclared[:5]} that are no declared foreground label",
                         path)
    mask = lut[np.transpose(seg, (2, 1, 0)).astype(np.int64)]  # (slices, rows, columns), slices in series order
    mask = mask.astype(np.uint8 if len(segments) < 256 else np.uint16)
    algorithm = hd.AlgorithmIdentificationSequence(name="focusseg", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm)
        for number, (name, _) in enumerate(segments, 1)]
    kinds = {"binary": hd.seg.SegmentationTypeValues.BINARY}
    if hasattr(hd.seg.SegmentationTypeValues, "LABELMAP"):
        kinds["labelmap"] = hd.seg.SegmentationTypeValues.LABELMAP
    if segmentation_type not in kinds:
        raise UsageError(f"segmentation_type must be one of {', '.join(kinds)} (with this highdicom), got "
                         f"{segmentation_type!r}")
    try:
        sources = [pydicom.dcmread(str(p), stop_before_pixels=True) for p in series.files]
        number = int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000
        dataset = hd.seg.Segmentation(
            source_images=sources, pixel_array=mask, segmentation_type=kinds[segmentation_type],
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="focusseg",
            manufacturer_model_name="focusseg", software_versions=__version__, device_serial_number="focusseg",
            series_description=(series_description or "focusseg segmentation")[:64])
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ImageError(f"cannot build a DICOM Segmentation from this series ({_one_line(exc)})",
                         series.folder) from exc
    with atomic_path(path) as tmp:
        dataset.save_as(str(tmp), enforce_file_format=True)
    return path


def _series_geometry(series: DicomSeries, sitk) -> Geometry:
    """The geometry :func:`read_series` gives the series, from the headers alone (first slice's origin and
    orientation, spacing from the stack)."""
    origin, direction, size, _, spacing = _slice_geometry(sitk, series.files[0])
    n = len(series.files)
    if n > 1:  # ITK's spacing between slices: first to last over n - 1
        last = _slice_geometry(sitk, series.files[-1])[0]
        spacing[2] = float(abs((last - origin) @ direction[:, 2])) / (n - 1)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[None, :]
    affine[:3, 3] = origin
    return Geometry(np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine, (int(size[0]), int(size[1]), n))


@keeps_locale
def is_dicom_case(files: Sequence[Path]) -> bool:
    """Whether a case's inputs (as listed by the predictor) are DICOM series folders rather than image files."""
    return bool(files) and Path(files[0]).is_dir()


__all__ = ["DICOM_DEFAULT_OUTPUT_ENDING", "DICOM_SEG_ENDING", "DicomSeries", "dicom_cases", "find_series",
           "foreground_labels", "has_case_folders", "is_dicom_case", "read_dicom_case", "read_series",
           "require_dicom_seg",
           "write_dicom_seg"]
