"""Saved probability files are read without trusting them: every ``.npy`` member's header is read and checked
(dtype, shape against the voxel limit and the class bound, declared size) before numpy allocates, arrays load with
``allow_pickle=False``, and the values are checked (finite, within [0, 1]); each refusal is one DatasetError line
naming the file."""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from focusseg.errors import DatasetError
from focusseg.inference.probabilities import SUFFIX, ensemble_folders, load_probabilities, save_probabilities
from focusseg.io.geometry import Geometry

GEO = Geometry(np.diag([1.0, 1.5, 2.0, 1.0]), (6, 7, 5))


def _probs(k: int = 3) -> np.ndarray:
    p = np.random.default_rng(1).random((k, *GEO.shape)).astype(np.float32)
    return p / p.sum(0)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=a.dtype.hasobject)
    return buf.getvalue()


def _header_only(header: dict, data: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    text = repr(header)
    size = 2 if version == (1, 0) else 4
    pad = 64 - (8 + size + len(text) + 1) % 64
    head = (text + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY" + bytes(version) + len(head).to_bytes(size, "little") + head + data


def _members(**over: bytes | None) -> dict[str, bytes]:
    members = {"probabilities": _npy(_probs().astype(np.float16)), "affine": _npy(GEO.affine),
               "shape": _npy(np.array(GEO.shape, np.int64)), "labels": _npy(np.array([0, 1, 2], np.int64)),
               "ending": _npy(np.asarray(".nii.gz")), "kind": _npy(np.asarray("softmax"))}
    members.update(over)
    return {k: v for k, v in members.items() if v is not None}


def _zip(path: Path, members: dict[str, bytes], suffix: str = ".npy") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name + suffix, data)
    return path


def _refused(path: Path, fragment: str, **kwargs) -> str:
    with pytest.raises(DatasetError) as err:
        load_probabilities(path, **kwargs)
    text = str(err.value)
    assert err.value.path == path and fragment in text and "\n" not in text, text
    return text


def test_a_handmade_file_like_ours_reads(tmp_path: Path):
    probs, geo, labels, ending, kind = load_probabilities(_zip(tmp_path / f"a{SUFFIX}", _members()))
    assert probs.dtype == np.float32 and probs.shape == (3, *GEO.shape) and geo.matches(GEO)
    assert (labels, ending, kind) == ([0, 1, 2], ".nii.gz", "softmax")


def test_a_header_that_claims_a_huge_shape_is_refused_before_allocating(tmp_path: Path):
    bomb = _header_only({"descr": "<f2", "fortran_order": False, "shape": (2, 100000, 100000, 100000)}, b"\0" * 64)
    path = _zip(tmp_path / f"bomb{SUFFIX}", _members(probabilities=bomb,
                                                    shape=_npy(np.array([100000] * 3, np.int64)),
                                                    labels=_npy(np.array([0, 1], np.int64))))
    tracemalloc.start()
    try:
        _refused(path, "over the voxel limit")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    many = _header_only({"descr": "<f2", "fortran_order": False, "shape": (100000, 100000, 100000)}, b"\0" * 64)
    _refused(_zip(tmp_path / f"many{SUFFIX}", _members(probabilities=many)), "100000 channels")


@pytest.mark.parametrize("over,fragment", [
    ({"probabilities": _header_only({"descr": "<f4", "fortran_order": False, "shape": (3, 6, 7, 5)}, b"\0" * 8)},
     "its header declares"),
    ({"probabilities": _npy(np.zeros((3, 6, 7, 5), np.float64))}, "float16/float32"),
    ({"probabilities": _npy(np.zeros((3, 6, 7, 5), np.int8))}, "float16/float32"),
    ({"probabilities": _npy(np.zeros((6, 7, 5), np.float16))}, "expected 2 integers"),
    ({"probabilities": _npy(np.array([None] * 4, dtype=object))}, "holds object values"),
    ({"probabilities": _npy(np.zeros(3, dtype=[("a", "<f4")]))}, "records"),
    ({"probabilities": _header_only({"descr": "<f2", "fortran_order": False, "shape": (3, 6, 7, 5)},
                                    b"\0" * 1260, version=(3, 0))}, "format version"),
    ({"affine": _npy(np.eye(3))}, "affine"),
    ({"affine": _npy(np.full((4, 4), np.nan))}, "non-finite affine"),
    ({"shape": _npy(np.array([6, 7], np.int64))}, "shape is"),
    ({"shape": _npy(np.array([6, 7, 4], np.int64))}, "inconsistent"),
    ({"labels": _npy(np.array([0, 1], np.int64))}, "labels is"),
    ({"labels": _npy(np.array([0, 1, 5000], np.int64))}, "label values in [0, 1000)"),
    ({"ending": _npy(np.asarray("/../../evil.nii.gz"))}, "file_ending"),
    ({"ending": _npy(np.asarray(".nii.gz" * 20))}, "at most 32 characters"),
    ({"ending": _npy(np.asarray([".nii.gz"]))}, "ending is"),
    ({"kind": _npy(np.asarray("logits"))}, "unknown kind 'logits'"),
    ({"ending": None}, "missing ending"),
    ({"extra": _npy(np.zeros(3))}, "unknown member 'extra'"),
])
def test_members_that_are_not_ours_are_refused(tmp_path: Path, over: dict, fragment: str):
    _refused(_zip(tmp_path / f"x{SUFFIX}", _members(**over)), fragment)


def test_not_a_zip_a_stray_member_and_a_truncated_file(tmp_path: Path):
    (tmp_path / f"text{SUFFIX}").write_text("not a zip")
    _refused(tmp_path / f"text{SUFFIX}", "unreadable probability file")
    with zipfile.ZipFile(tmp_path / f"stray{SUFFIX}", "w") as zf:
        zf.writestr("probabilities.npy", _npy(_probs()))
        zf.writestr("../evil.sh", b"rm -rf /")
    _refused(tmp_path / f"stray{SUFFIX}", "member '../evil.sh'")
    good = save_probabilities(tmp_path / f"good{SUFFIX}", _probs(), GEO, [0, 1, 2], ".nii.gz")
    raw = good.read_bytes()
    (tmp_path / f"cut{SUFFIX}").write_bytes(raw[: len(raw) * 2 // 3])
    _refused(tmp_path / f"cut{SUFFIX}", "unreadable probability file")


def test_values_must_be_finite_probabilities(tmp_path: Path):
    for name, value, fragment in (("nan", np.nan, "NaN/inf"), ("inf", np.inf, "NaN/inf"),
                                  ("neg", -0.5, "values in [-0.5"), ("big", 1.5, "lie in [0, 1]")):
        p = _probs()
        p[1, 2, 3, 4] = value
        path = save_probabilities(tmp_path / f"{name}{SUFFIX}", p, GEO, [0, 1, 2], ".nii.gz")
        _refused(path, fragment)
    p = _probs()
    p[0, 0, 0, 0] = 1.0005  # float16 rounding of a probability near 1 stays within the tolerance
    load_probabilities(save_probabilities(tmp_path / f"round{SUFFIX}", p, GEO, [0, 1, 2], ".nii.gz"))


def test_the_voxel_limit_applies_to_each_file_and_to_the_ensemble(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        save_probabilities(tmp_path / name / f"c1{SUFFIX}", _probs(), GEO, [0, 1, 2], ".nii.gz")
    _refused(tmp_path / "a" / f"c1{SUFFIX}", "210 voxels, over the voxel limit 100", max_voxels=100)
    with pytest.raises(DatasetError, match="over the voxel limit 100"):
        ensemble_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "out", progress=False, max_voxels=100)
    monkeypatch.setenv("FOCUSSEG_MAX_VOXELS", "209")
    with pytest.raises(DatasetError, match="over the voxel limit 209"):
        ensemble_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "out", progress=False)
    monkeypatch.delenv("FOCUSSEG_MAX_VOXELS")
    assert len(ensemble_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "out", progress=False)) == 1


def test_folders_whose_grids_or_labels_differ_are_named(tmp_path: Path):
    for name, geo, labels in (("a", GEO, [0, 1, 2]), ("b", Geometry(GEO.affine, (6, 7, 4)), [0, 1, 2]),
                              ("c", GEO, [0, 1, 3])):
        (tmp_path / name).mkdir()
        p = np.full((3, *geo.shape), 1 / 3, np.float32)
        save_probabilities(tmp_path / name / f"c1{SUFFIX}", p, geo, labels, ".nii.gz")
    with pytest.raises(DatasetError, match=r"grid 6x7x4, but 6x7x5 in .*a/c1_probabilities\.npz") as err:
        ensemble_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "out", progress=False)
    assert err.value.path == tmp_path / "b" / f"c1{SUFFIX}"
    with pytest.raises(DatasetError, match=r"label channels \[0, 1, 3\], but \[0, 1, 2\]"):
        ensemble_folders([tmp_path / "a", tmp_path / "c"], tmp_path / "out", progress=False)
