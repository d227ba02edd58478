"""DICOM input (one series per case folder, read with SimpleITK/GDCM) and DICOM Segmentation output (highdicom).

Input (``focusseg predict RUN IN OUT``): an input folder with no image files but subfolders is a DICOM folder;
each subfolder is a case (``IN/<case>/*.dcm``, or ``IN/<case>/<CCCC>/*.dcm`` per channel). A case folder holds
exactly one series; several series, uneven or duplicated slice positions, gantry tilt, mixed orientations,
multi-frame and colour images are refused with one line naming the folder or file (a dropped slice would shift
every voxel after it).

Nothing in the folder is trusted: every file's header is read (header only) and checked before any pixel is, so a
multi-frame file anywhere in the series, a header whose rows x columns x files exceed the voxel limit, more than
:data:`MAX_SERIES_FILES` files, or a non-finite rescale slope/intercept, pixel spacing, slice position or
orientation is refused naming the file. A case folder, channel folder or file that is a symlink leading out of the
input folder is refused before it is opened; a file or folder name that is not valid UTF-8 is refused (SimpleITK
cannot open it) with the name printed escaped (:func:`shown`).

Geometry is converted as for a ``.mha`` (``(z, y, x)`` -> ``(x, y, z)``, LPS -> RAS), so a series gives the same
array and affine as the NIfTI that SimpleITK or dcm2niix writes from it.

Output: :func:`write_dicom_seg` writes a DICOM Segmentation (``<case>.dcm``) that references the source series,
one segment per foreground label; it needs the extra ``focusseg[dicom]`` (pydicom, highdicom). ``docs/io.md``.
"""

from __future__ import annotations

import contextlib
import functools
import locale
import math
import os
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
from focusseg.io.paths import is_inside, validate_case_id

#: The ending of a DICOM Segmentation output (``predict --output-format dicom-seg``).
DICOM_SEG_ENDING = ".dcm"
#: The default output ending of a case read from DICOM (``--output-format`` picks another).
DICOM_DEFAULT_OUTPUT_ENDING = ".nii.gz"
#: File names a DICOM folder may hold beside its series (media directory, never an image).
IGNORED_NAMES = frozenset({"DICOMDIR"})
_CHANNEL_DIR_RE = re.compile(r"^\d{4}$")
#: Largest allowed deviation of a slice from the regular stack, as a fraction of the slice spacing.
SLICE_TOLERANCE = 0.01
#: Most files a series folder may hold: a folder is refused before its files are scanned beyond this.
MAX_SERIES_FILES = 10_000
#: Header values (GDCM's ``group|element`` keys) that must be finite numbers where present: the reader would
#: otherwise turn NaN into numbers silently (a NaN RescaleSlope reads as slope 1).
FINITE_TAGS = {"0028|1053": "RescaleSlope", "0028|1052": "RescaleIntercept", "0028|0030": "PixelSpacing",
               "0020|0032": "ImagePositionPatient", "0020|0037": "ImageOrientationPatient",
               "0018|0050": "SliceThickness", "0018|0088": "SpacingBetweenSlices"}

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


def shown(path: str | Path) -> str:
    """``path`` as text that can always be printed: bytes of a name that are not valid UTF-8 (held by Python as
    lone surrogates) written as ``\\xff`` escapes, so an error line about such a file never fails to print.

    Args:
        path: a path or a file name, as Python lists it from the file system.

    Returns:
        the text, unchanged when it is valid UTF-8.
    """
    text = str(path)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate surrogateescape does not produce (not from the file system)
        return ascii(text)[1:-1]


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _named(path: Path) -> Path:
    """``path`` as an error may carry it (printable: see :func:`shown`)."""
    return path if _utf8(str(path)) else Path(shown(path))


def _visible(folder: Path, limit: int | None = None) -> list[Path]:
    """Entries of ``folder`` that are not dot files or temporaries, sorted by name; more than ``limit`` of them
    are refused (:class:`ImageReadError` naming the folder) before the rest of the folder is listed."""
    out = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith(".") or is_temp_name(entry.name):
                continue
            out.append(folder / entry.name)
            if limit is not None and len(out) > limit:
                raise ImageReadError(f"holds more than {limit} files: a series folder holds at most {limit} "
                                     "(one file per slice)", _named(folder))
    return sorted(out)


def has_case_folders(in_dir: Path) -> bool:
    """Whether ``in_dir`` has a subfolder (not a dot folder or temporary) that can be a DICOM case."""
    return any(p.is_dir() for p in _visible(Path(in_dir)))


@keeps_locale
def dicom_cases(in_dir: str | Path, n_channels: int) -> tuple[dict[str, list[Path]], dict[str, FocussegError]]:
    """``({case: [channel folder, ...]}, {case: error})`` for the case folders of a DICOM input folder.

    ``IN/<case>/`` is the single series of a one-channel case; ``IN/<case>/<CCCC>/`` are the channel series of a
    multi-channel case (exactly ``0000`` .. ``n_channels - 1``). The series themselves are found when read
    (:func:`read_dicom_case`). Errors (one per case, naming the folder): a bad case id, a missing or surplus
    channel folder, files beside the channel folders, subfolders that are not channel folders, a case or channel
    folder (or a file in one) that is a symlink leading out of ``in_dir``, a name that is not valid UTF-8, a series
    folder of more than :data:`MAX_SERIES_FILES` files. Nothing outside ``in_dir`` is opened."""
    in_dir = Path(in_dir)
    cases: dict[str, list[Path]] = {}
    failures: dict[str, FocussegError] = {}
    for sub in _visible(in_dir):
        if not sub.is_dir():
            continue
        case = sub.name
        try:
            if not _utf8(case):
                raise DatasetError(f"case folder name {shown(case)} is not valid UTF-8 (it would name the output "
                                   "file): rename the folder", _named(sub))
            validate_case_id(case, sub)
            _check_inside(sub, in_dir, "case folder")
            folders = _case_channels(sub, n_channels, in_dir)
            for folder in folders:
                series_files(folder, root=in_dir)
            cases[case] = folders
        except FocussegError as exc:
            failures[case] = exc
    return cases, failures


def _check_inside(path: Path, root: Path, what: str) -> None:
    """Refuse ``path`` (a :class:`DatasetError` naming it) when it resolves outside ``root`` (a symlink leading out
    of the input folder): it is never opened."""
    if not is_inside(path, root):
        raise DatasetError(f"{what} {shown(path.name)} is a symlink to {shown(path.resolve())}, outside the input "
                           f"folder {shown(root)}: refused, never read", _named(path),
                           hint="copy the files into the input folder instead of linking to them")


def _case_channels(sub: Path, n_ch: int, root: Path) -> list[Path]:
    case = sub.name
    entries = _visible(sub, MAX_SERIES_FILES)
    dirs = [p for p in entries if p.is_dir()]
    for p in dirs:
        _check_inside(p, root, "folder")
    channel_dirs = {int(p.name): p for p in dirs if _CHANNEL_DIR_RE.match(p.name)}
    others = [p for p in dirs if not _CHANNEL_DIR_RE.match(p.name)]
    if others:
        raise DatasetError(f"subfolder {shown(others[0].name)!r} of case {case} is not a channel folder (0000, "
                           "0001 ...)", _named(others[0]), hint=LAYOUT_HINT)
    if not channel_dirs:
        if n_ch > 1:
            names = ", ".join(f"{c:04d}/" for c in range(n_ch))
            raise MissingFileError(f"case {case} lacks channel folders: the run expects {n_ch} channels, one "
                                   f"series per subfolder {names}", sub, hint=LAYOUT_HINT)
        return [sub]
    files = [p for p in entries if p.is_file() and p.name not in IGNORED_NAMES]
    if files:
        raise DatasetError(f"case {case} holds files ({shown(files[0].name)}) beside its channel folders: put each "
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


def series_files(folder: str | Path, root: str | Path | None = None, max_files: int = MAX_SERIES_FILES
                 ) -> list[Path]:
    """The files of a series folder (not dot files, temporaries or ``DICOMDIR``), checked before any is opened.

    Args:
        folder: the series folder (a case folder or a channel folder of one).
        root: the input folder the series must stay in: an entry of ``folder`` (hidden ones included, which
            GDCM's scan would open too) that is a symlink resolving outside it is refused; ``None`` checks no links.
        max_files: the most files the folder may hold (listing stops beyond it).

    Returns:
        the files, sorted by name.

    Raises:
        ImageReadError: the folder's path or a file name is not valid UTF-8 (printed escaped), a symlink leads
            out of ``root``, or more than ``max_files`` files; each names the file or folder.
    """
    folder = Path(folder)
    if not _utf8(str(folder)):
        raise ImageReadError("the folder's path is not valid UTF-8 (SimpleITK cannot open it): rename it",
                             _named(folder))
    files = []
    with os.scandir(folder) as it:
        for entry in it:
            path = folder / entry.name
            if root is not None and entry.is_symlink() and not is_inside(path, root):
                raise ImageReadError(f"is a symlink to {shown(path.resolve())}, outside the input folder "
                                     f"{shown(root)}: refused, never read", _named(path),
                                     hint="copy the files into the input folder instead of linking to them")
            if is_temp_name(entry.name) or entry.name in IGNORED_NAMES or not entry.is_file():
                continue
            if not _utf8(entry.name):
                raise ImageReadError("file name is not valid UTF-8 (SimpleITK cannot open it): rename the file",
                                     _named(path))
            files.append(path)
            if len(files) > max_files:
                raise ImageReadError(f"holds more than {max_files} files: a series folder holds at most "
                                     f"{max_files} (one file per slice)", folder)
    return sorted(files)


@keeps_locale
def find_series(folder: str | Path, root: str | Path | None = None) -> DicomSeries:
    """The single DICOM series of ``folder`` (files directly in it). :class:`ImageReadError` naming the folder
    when it is missing, holds no file, no DICOM image, several series, or files that are not images of the
    series (a corrupt slice would otherwise be silently left out); the folder's entries are checked first
    (:func:`series_files`: names, symlinks out of ``root``, the number of files). Dot files and temporaries are
    never part of the series."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError("DICOM folder not found", _named(folder))
    files = series_files(folder, root)
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
    # GDCM scans every file of the folder; only the checked ones (no dot file, temporary, unchecked name) count
    checked = {p.name: p for p in files}
    groups = {}
    for uid in ids:
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        members = tuple(checked[Path(n).name] for n in names if Path(n).name in checked)
        if members:
            groups[uid] = members
    if not groups:
        raise ImageReadError(f"holds no DICOM series ({len(files)} file(s), none a DICOM image, e.g. "
                             f"{files[0].name})", folder)
    if len(groups) > 1:
        desc = "; ".join(f"{uid} ({len(f)} file(s))" for uid, f in list(groups.items())[:4])
        raise ImageReadError(f"holds {len(groups)} DICOM series ({desc}): a case folder holds one series", folder,
                             hint="move each series into its own folder (one case, or one channel folder 0000/, "
                                  "0001/ ... of a case)")
    uid, members = next(iter(groups.items()))
    known = {p.name for p in members}
    strays = [p for p in files if p.name not in known]
    if strays:
        more = f" (and {len(strays) - 1} more)" if len(strays) > 1 else ""
        raise ImageReadError(f"{strays[0].name} is not an image of the series {uid} in this folder (not DICOM, "
                             f"unreadable, or a non-image object){more}",
                             folder, hint="keep only the files of one series in a case folder")
    return DicomSeries(folder, uid, members)


@dataclass(frozen=True)
class _Header:
    """What focusseg uses of one slice file's header, read without its pixels."""

    origin: np.ndarray  # LPS, mm
    direction: np.ndarray  # 3x3, columns: row, column and normal directions
    size: tuple[int, int]  # columns, rows
    frames: int
    components: int
    spacing: np.ndarray  # 3 entries, mm


def _check_numbers(path: Path, name: str, text: str) -> None:
    """Refuse (naming ``path``) a decimal-string header value ``text`` (``\\``-separated numbers) that holds
    something other than finite numbers."""
    for part in text.split("\\"):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value):
            what = "not a number" if value is None else "not finite"
            raise ImageReadError(f"{name} {text.strip()[:40]!r} is {what}: the header is damaged, refused before "
                                 "any pixel is read", path)


def _read_header(sitk, path: Path) -> _Header:
    """One slice file's header (GDCM, no pixels), every value focusseg uses checked: the numbers of
    :data:`FINITE_TAGS` finite, NumberOfFrames a whole number, origin, orientation and spacing finite. Errors
    name the file."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    try:
        reader.ReadImageInformation()
        meta = {key: reader.GetMetaData(key) for key in (*FINITE_TAGS, "0028|0008") if reader.HasMetaDataKey(key)}
    except (RuntimeError, UnicodeDecodeError) as exc:
        raise ImageReadError(f"unreadable DICOM header ({_one_line(exc)})", path) from exc
    for key, name in FINITE_TAGS.items():
        if key in meta:
            _check_numbers(path, name, meta[key])
    frames = 1
    if meta.get("0028|0008", "").strip():
        text = meta["0028|0008"].strip()
        if not re.fullmatch(r"[+]?\d{1,9}", text):
            raise ImageReadError(f"NumberOfFrames {text[:40]!r} is not a whole number", path)
        frames = max(1, int(text))
    dim = reader.GetDimension()
    size = tuple(int(v) for v in reader.GetSize())
    if dim > 2 and size[2] > 1:
        frames = max(frames, size[2])
    origin = np.zeros(3)
    origin[: min(dim, 3)] = np.asarray(reader.GetOrigin(), dtype=np.float64)[:3]
    direction = np.eye(3)
    d = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim)
    direction[: min(dim, 3), : min(dim, 3)] = d[:3, :3]
    spacing = np.ones(3)
    spacing[: min(dim, 3)] = np.asarray(reader.GetSpacing(), dtype=np.float64)[:3]
    for name, value in (("ImagePositionPatient", origin), ("ImageOrientationPatient", direction),
                        ("PixelSpacing", spacing)):
        if not np.isfinite(value).all():
            raise ImageReadError(f"{name} is not finite ({np.asarray(value).ravel().tolist()})", path)
    return _Header(origin, direction, (size[0], size[1]), frames, int(reader.GetNumberOfComponents()), spacing)


def _check_slice(path: Path, header: _Header, limit: int) -> None:
    """One slice file is a single grey-level frame within the voxel limit."""
    if header.frames > 1:
        raise ImageReadError(f"is a multi-frame file ({header.frames} frames): focusseg reads classic series of "
                             "single-frame slices", path,
                             hint="convert it to NIfTI (e.g. dcm2niix) or to single-frame slices")
    if header.components != 1:
        raise ImageReadError(f"is a colour image ({header.components} samples per pixel): focusseg reads "
                             "grey-level series", path)
    check_declared_shape(path, header.size, limit)


def _check_stack(series: DicomSeries, sitk, limit: int) -> None:
    """Every file's header, read one by one (no pixels) and checked before the next (:func:`_read_header`, one
    frame, grey level); rows x columns x files within ``limit`` as soon as the first header is read; then the
    slices form one regular stack: same size and orientation, positions along the normal, evenly spaced (within
    :data:`SLICE_TOLERANCE` of the spacing), none duplicated."""
    files = series.files
    first = _read_header(sitk, files[0])
    _check_slice(files[0], first, limit)
    check_declared_shape(series.folder, (*first.size, len(files)), limit)
    infos = [first]
    for path in files[1:]:
        h = _read_header(sitk, path)
        _check_slice(path, h, limit)
        if h.size != first.size:
            raise ImageReadError(f"is {h.size[0]}x{h.size[1]}, the series' first slice ({files[0].name}) "
                                 f"{first.size[0]}x{first.size[1]}", path)
        if not np.allclose(h.direction[:, :2], first.direction[:, :2], atol=1e-4):
            raise ImageReadError(f"has another orientation (ImageOrientationPatient) than the series' first slice "
                                 f"({files[0].name}): a localizer or several stacks in one series?", path)
        infos.append(h)
    if len(infos) < 2:
        return
    dir0 = first.direction
    normal = np.cross(dir0[:, 0], dir0[:, 1])
    pos = np.stack([h.origin for h in infos])
    along = (pos - pos[0]) @ normal
    steps = np.diff(along)
    if (np.abs(steps) < 1e-4).any():
        k = int(np.flatnonzero(np.abs(steps) < 1e-4)[0])
        raise ImageReadError(f"{files[k].name} and {files[k + 1].name} lie at the same position "
                             "(several echoes, phases or acquisitions in one series?)", series.folder)
    dz = (along[-1] - along[0]) / (len(along) - 1)
    tol = SLICE_TOLERANCE * abs(dz) + 1e-4
    off = np.abs(along - dz * np.arange(len(along)))
    if off.max() > tol:
        k = int(off.argmax())
        raise ImageReadError(f"slices are not evenly spaced: {files[k].name} lies {off[k]:.3g} mm off the "
                             f"regular {abs(dz):.4g} mm stack (a missing slice?)", series.folder)
    shear = np.linalg.norm((pos - pos[0]) - np.outer(along, normal), axis=1)
    if shear.max() > tol:
        raise ImageReadError(f"slice positions are not along the slice normal (sheared by up to {shear.max():.3g} "
                             "mm: a gantry tilt?): resample the series first", series.folder)


@keeps_locale
def read_series(folder: str | Path, dtype: type = np.float32, max_voxels: int | None = None,
                root: str | Path | None = None) -> tuple[np.ndarray, Geometry]:
    """The single series of ``folder`` as ``(X, Y, Z)`` array (rescale slope/intercept applied) and geometry
    (RAS affine), converted exactly as :mod:`focusseg.io.image` converts a SimpleITK image.

    Before any voxel is read: the folder's entries are checked (:func:`series_files`; ``root``: the input folder
    no symlink may lead out of), then every file's header (one frame, grey level, finite rescale, spacing,
    position and orientation), and rows x columns x files against the voxel limit
    (:func:`focusseg.io.geometry.voxel_limit`). NaN/inf and non-positive spacing are refused. Errors name the
    folder, or the file where one file is at fault."""
    sitk = _sitk()
    series = find_series(folder, root)
    folder = series.folder
    _check_stack(series, sitk, voxel_limit(max_voxels))
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
def read_dicom_case(folders: Sequence[Path], max_voxels: int | None = None, root: str | Path | None = None
                    ) -> tuple[np.ndarray, Geometry]:
    """A case's channel series stacked as ``(C, X, Y, Z)`` float32 with their geometry (as
    :func:`focusseg.io.image.read_case`): every channel must share shape and affine; NaN/inf voxels are refused.
    ``root``: the input folder no symlink in a series folder may lead out of (:func:`read_series`)."""
    channels, geometry = [], None
    for folder in folders:
        arr, geo = read_series(folder, max_voxels=max_voxels, root=root)
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
    first = _read_header(sitk, series.files[0])
    origin, direction, size, spacing = first.origin, first.direction, first.size, first.spacing.copy()
    n = len(series.files)
    if n > 1:  # ITK's spacing between slices: first to last over n - 1
        last = _read_header(sitk, series.files[-1]).origin
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
           "require_dicom_seg", "series_files", "shown", "write_dicom_seg"]
