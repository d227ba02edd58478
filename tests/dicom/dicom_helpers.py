"""DICOM series made from arrays for the DICOM tests (SimpleITK's "DicomSeriesFromArray" pattern: one file per
slice with ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness, the study/series/frame of
reference UIDs, Modality and the rescale tags). Imported as ``dicom.dicom_helpers`` (tests/ is on sys.path)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from focusseg.io.dicom import keeps_locale


def _uid(suffix: str) -> str:
    """A syntactically valid, unique-enough UID (the 1.2.826.0.1.3680043.2.1125 root SimpleITK's example uses)."""
    return f"1.2.826.0.1.3680043.2.1125.{suffix}"


@keeps_locale
def write_series(folder: Path, data: np.ndarray, affine: np.ndarray, *, modality: str = "MR",
                 series_uid: str | None = None, study_uid: str | None = None, frame_uid: str | None = None,
                 slope: float = 1.0, intercept: float = 0.0, name: str = "IM", series_number: int = 1,
                 shuffle: bool = True) -> Path:
    """Write ``data`` (an ``(X, Y, Z)`` array in nibabel's voxel order with the RAS ``affine``) as a DICOM series
    of ``Z`` int16 slice files in ``folder``. Stored values are ``round((data - intercept) / slope)``, so the
    series reads back as ``stored * slope + intercept``. ``shuffle`` writes the files in a scrambled order (the
    reader must sort by position, not by name)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    stamp = f"{int(time.time() * 1e6)}{np.random.default_rng().integers(1e6)}"
    series_uid = series_uid or _uid(f"{stamp}.1")
    study_uid = study_uid or _uid(f"{stamp}.2")
    frame_uid = frame_uid or _uid(f"{stamp}.3")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing[None, :]
    stored = np.round((np.asarray(data, dtype=np.float64) - intercept) / slope)
    values = stored * slope + intercept  # exactly representable: GDCM stores round((v - intercept) / slope)
    if slope == 1.0 and intercept == 0.0:
        volume = sitk.GetImageFromArray(np.transpose(stored.astype(np.int16), (2, 1, 0)))
    else:  # GDCM's rescaler writes a float image as int16 with the given slope / intercept
        volume = sitk.GetImageFromArray(np.transpose(values.astype(np.float32), (2, 1, 0)))
    volume.SetSpacing(tuple(float(s) for s in spacing))
    volume.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    volume.SetDirection(tuple(float(v) for v in direction.ravel()))
    iop = "\\".join(f"{v:.10g}" for v in (*direction[:, 0], *direction[:, 1]))
    sop_class = {"MR": "1.2.840.10008.5.1.4.1.1.4", "CT": "1.2.840.10008.5.1.4.1.1.2"}[modality]  # classic IODs
    common = [("0008|0016", sop_class), ("0008|0031", time.strftime("%H%M%S")), ("0008|0021", time.strftime("%Y%m%d")),
              ("0008|0008", "DERIVED\\SECONDARY"), ("0008|0060", modality), ("0010|0010", "Test^Patient"),
              ("0010|0020", "TEST001"), ("0020|000d", study_uid), ("0020|000e", series_uid),
              ("0020|0052", frame_uid), ("0020|0037", iop), ("0020|0011", str(series_number)),
              ("0008|103e", f"focusseg test series {series_number}"), ("0018|0050", f"{spacing[2]:.10g}"),
              ("0028|1052", f"{intercept:.10g}"), ("0028|1053", f"{slope:.10g}"), ("0028|1054", "US"),
              ("0028|0100", "16"), ("0028|0101", "16"), ("0028|0102", "15"), ("0028|0103", "1")]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    n = volume.GetDepth()
    order = np.random.default_rng(0).permutation(n) if shuffle else np.arange(n)
    for file_index, k in enumerate(order):
        k = int(k)
        sl = volume[:, :, k]
        for tag, value in common:
            sl.SetMetaData(tag, value)
        pos = volume.TransformIndexToPhysicalPoint((0, 0, k))
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in pos))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        sl.SetMetaData("0028|0030", f"{spacing[1]:.10g}\\{spacing[0]:.10g}")  # row spacing \ column spacing
        writer.SetFileName(str(folder / f"{name}{file_index:04d}.dcm"))
        writer.Execute(sl)
    return folder


def int_image(seed: int = 0, shape: tuple[int, ...] = (20, 24, 16)) -> np.ndarray:
    """The run helpers' blob image scaled to whole numbers (float32): exactly representable as int16 DICOM
    pixels, so a NIfTI and a DICOM series of it hold the same voxel values."""
    from inference.run_helpers import blob_image

    return np.round(100.0 * blob_image(seed=seed, shape=shape)).astype(np.float32)


def oblique_affine(spacing: tuple[float, float, float] = (1.5, 1.0, 2.0), left_handed: bool = False,
                   angle: float = 0.3) -> np.ndarray:
    """A RAS affine rotated by ``angle`` about z and x (an oblique acquisition); ``left_handed`` flips the
    third axis (voxel z runs against the slice normal, as in many NIfTI files: the DICOM stack is then stored
    the other way round)."""
    c, s = np.cos(angle), np.sin(angle)
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    rx = np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])
    rot = rz @ rx
    if left_handed:
        rot[:, 2] *= -1
    a = np.eye(4)
    a[:3, :3] = rot * np.asarray(spacing)[None, :]
    a[:3, 3] = [-12.5, 30.25, -7.0]
    return a


def edit_header(path: Path, frames: int | None = None, raw: dict[int, str] | None = None, **values: object) -> Path:
    """Rewrite one DICOM file's header in place with pydicom (keyword=value, e.g. ``RescaleSlope="NaN"``,
    ``Rows=65535``), validation off so damaged values (NaN, inf) are written as given. ``raw``: tag -> text
    written verbatim (as LO: the files of :func:`write_series` are implicit VR, so the bytes are those of a DS
    holding that text, e.g. ``{0x00281053: "one"}``). ``frames``: make it a multi-frame file of that many copies
    of its frame (NumberOfFrames and pixel data). The pixel data is kept otherwise (a header that claims more
    rows than it holds stays small on disk)."""
    import pydicom
    from pydicom import config

    saved = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
    try:
        ds = pydicom.dcmread(path)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        for tag, text in (raw or {}).items():
            ds.add_new(tag, "LO", text)
        if frames is not None:
            ds.NumberOfFrames = frames
            ds.PixelData = ds.PixelData * frames
        ds.save_as(path)
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = saved
    return path
