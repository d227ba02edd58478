"""Real data (slow): a Hippocampus case (MSD Task04, MR) converted to a DICOM series predicts, with a tiny run,
the same segmentation as its NIfTI, and the DICOM-SEG written from it holds that segmentation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from focusseg_testdata import shared_dataset

pytest.importorskip("SimpleITK", reason="DICOM input needs SimpleITK (pip install 'focusseg[dicom]')")

from dicom.dicom_helpers import write_series  # noqa: E402
from inference.run_helpers import make_run, tiny_plan  # noqa: E402

from focusseg.cli import main  # noqa: E402
from focusseg.io import read_image  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.realdata, pytest.mark.usefixtures("one_thread")]


def test_hippocampus_case_as_dicom_predicts_as_its_nifti(tmp_path: Path):
    data = shared_dataset("Dataset004_Hippocampus")
    src = data / "imagesTr" / "hippocampus_001_0000.nii.gz"
    if not src.is_file():
        pytest.skip(f"real data not available: {src} is absent")
    image, geo = read_image(src)
    assert np.array_equal(image, np.round(image)) and image.min() >= 0  # whole-number MR values: exact in int16
    plan = tiny_plan()
    plan["labels"] = {"background": 0, "Anterior": 1, "Posterior": 2}
    plan["target_spacing"] = [1.0, 1.0, 1.0]
    run = make_run(tmp_path / "run", plan)
    nifti_in = tmp_path / "nifti"
    nifti_in.mkdir()
    shutil.copyfile(src, nifti_in / src.name)  # a copy: inputs are never touched
    write_series(tmp_path / "dicom" / "hippocampus_001", image, geo.affine, modality="MR")
    common = ["--device", "cpu", "--no-tta"]
    assert main(["predict", str(run), str(nifti_in), str(tmp_path / "p_nifti"), *common]) == 0
    assert main(["predict", str(run), str(tmp_path / "dicom"), str(tmp_path / "p_dicom"), *common]) == 0
    ref, ref_geo = read_image(tmp_path / "p_nifti" / "hippocampus_001.nii.gz", dtype=np.int16)
    seg, seg_geo = read_image(tmp_path / "p_dicom" / "hippocampus_001.nii.gz", dtype=np.int16)
    assert seg.shape == image.shape and seg_geo.matches(geo, atol=1e-4) and ref_geo.matches(geo, atol=1e-4)
    np.testing.assert_array_equal(seg, ref)
    hd = pytest.importorskip("highdicom", reason="DICOM-SEG output needs highdicom (pip install 'focusseg[dicom]')")
    import pydicom

    from focusseg.io.dicom import find_series

    assert main(["predict", str(run), str(tmp_path / "dicom"), str(tmp_path / "p_seg"), *common,
                 "--output-format", "dicom-seg"]) == 0
    dseg = hd.seg.segread(tmp_path / "p_seg" / "hippocampus_001.dcm")
    assert [s.SegmentLabel for s in dseg.SegmentSequence] == ["Anterior", "Posterior"]
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
            for p in find_series(tmp_path / "dicom" / "hippocampus_001").files]
    mask = dseg.get_pixels_by_source_instance(uids, combine_segments=True)
    np.testing.assert_array_equal(mask, np.transpose(ref, (2, 1, 0)))
