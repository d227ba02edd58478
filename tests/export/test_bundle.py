"""``focusseg export`` bundles (issue 16 part 3): predictions from ``model.zip`` equal the run folder's (a run and a
cross-validation), and a changed, truncated, incomplete or zip-slip bundle is refused with one line."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from export_helpers import STEPS, make_tiny_crossval, make_tiny_run, read_predictions
from inference.run_helpers import tree_hashes, write_inputs

pytest.importorskip("safetensors", reason="the bundle's weights are safetensors: pip install '.[export]'")


def _export(src: Path, out: Path) -> None:
    from focusseg.cli import main

    assert main(["export", str(src), "--out", str(out)]) == 0
    assert out.is_file()


def _same_predictions(a: Path, b: Path) -> None:
    pa, pb = read_predictions(a), read_predictions(b)
    assert pa and sorted(pa) == sorted(pb)
    for name in pa:
        np.testing.assert_array_equal(pa[name][0], pb[name][0], err_msg=name)
        np.testing.assert_array_equal(pa[name][1], pb[name][1], err_msg=name)


def test_bundle_of_a_run_predicts_exactly_as_the_run(tmp_path: Path, capsys) -> None:
    from focusseg.cli import main

    run = make_tiny_run(tmp_path / "run")
    images = tmp_path / "imagesTs"
    write_inputs(images, n_cases=2)
    before = tree_hashes(run)
    _export(run, tmp_path / "model.zip")
    assert tree_hashes(run) == before  # the run folder is only read
    with zipfile.ZipFile(tmp_path / "model.zip") as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
        assert json.loads(zf.read("postprocessing.json"))["steps"] == STEPS
        assert zf.read("members/model/weights.safetensors")[8:9] == b"{"  # a safetensors header, not a pickle
    assert names == {"manifest.json", "postprocessing.json", "members/model/plan.json",
                     "members/model/weights.safetensors"}
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert manifest["format_version"] == 1 and manifest["focusseg_version"] and manifest["created"]
    assert [m["name"] for m in manifest["members"]] == ["model"]
    assert manifest["members"][0]["checkpoint"] == "checkpoint_best.pt"
    assert manifest["model"]["labels"] == {"background": 0, "sphere": 1, "cube": 2}
    assert manifest["model"]["patch_size"] == [16, 16, 16] and "normalization" in manifest["model"]
    assert main(["predict", str(run), str(images), str(tmp_path / "from_run"), "--device", "cpu"]) == 0
    moved = tmp_path / "elsewhere" / "model.zip"  # the bundle alone: the run folder is gone
    moved.parent.mkdir()
    (tmp_path / "model.zip").rename(moved)
    (run / "checkpoint_best.pt").unlink()
    capsys.readouterr()
    assert main(["predict", str(moved), str(images), str(tmp_path / "from_zip"), "--device", "cpu"]) == 0
    assert "post-processing" in capsys.readouterr().out
    _same_predictions(tmp_path / "from_run", tmp_path / "from_zip")
    assert main(["predict", str(moved), str(images), str(tmp_path / "raw"), "--device", "cpu", "--no-postprocess"]) == 0
    raw, post = read_predictions(tmp_path / "raw"), read_predictions(tmp_path / "from_zip")
    assert any((raw[n][0] != post[n][0]).any() for n in raw)  # the bundle's post-processing was applied


def test_bundle_of_a_crossval_predicts_exactly_as_the_crossval(tmp_path: Path) -> None:
    from focusseg.cli import main
    from focusseg.export import read_bundle

    cv = make_tiny_crossval(tmp_path / "cv", n_folds=2)
    images = tmp_path / "imagesTs"
    write_inputs(images, n_cases=2)
    _export(cv, tmp_path / "cv.zip")
    b = read_bundle(tmp_path / "cv.zip")
    assert [m["name"] for m in b.members] == ["fold_0", "fold_1"]
    assert [m["weight"] for m in b.members] == [0.5, 0.5]
    assert b.postprocessing == STEPS[:1] and b.manifest["source"]["kind"] == "crossval"
    assert main(["predict", str(cv), str(images), str(tmp_path / "from_cv"), "--device", "cpu"]) == 0
    assert main(["predict", str(tmp_path / "cv.zip"), str(images), str(tmp_path / "from_zip"), "--device",
                 "cpu"]) == 0
    _same_predictions(tmp_path / "from_cv", tmp_path / "from_zip")


def _rezip(src: Path, dst: Path, change: dict[str, bytes | None], extra: dict[str, bytes] | None = None) -> Path:
    """A copy of the zip ``src`` with members replaced (bytes) or dropped (None), plus ``extra`` members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = change.get(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)
    return dst


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("bundle")
    run = make_tiny_run(tmp / "run")
    write_inputs(tmp / "imagesTs", n_cases=1)
    from focusseg.export import write_bundle

    return write_bundle(run, tmp / "model.zip"), tmp / "imagesTs"


WEIGHTS = "members/model/weights.safetensors"


def _flip_stored_byte(src: Path, dst: Path) -> Path:
    """Change one byte inside the stored (uncompressed) weights' data, in place in the zip."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo(WEIGHTS)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0x01
    dst.write_bytes(bytes(data))
    return dst


def _weights_changed_and_rezipped(src: Path, dst: Path) -> Path:
    with zipfile.ZipFile(src) as zf:
        w = bytearray(zf.read(WEIGHTS))
    w[-3] ^= 0x01  # a valid zip (fresh CRC), but not what was exported
    return _rezip(src, dst, {WEIGHTS: bytes(w)})


TAMPERS = {
    "changed byte": (_flip_stored_byte, "cannot be read"),
    "changed weights, re-zipped": (_weights_changed_and_rezipped, "sha-256"),
    "missing member": (lambda s, d: _rezip(s, d, {"members/model/plan.json": None}), "is missing"),
    "zip-slip member": (lambda s, d: _rezip(s, d, {}, {"../evil.sh": b"rm -rf /"}), "unsafe member name"),
    "unlisted member": (lambda s, d: _rezip(s, d, {}, {"members/model/extra.pt": b"x"}), "not listed"),
    "absolute member": (lambda s, d: _rezip(s, d, {}, {"/etc/passwd": b"x"}), "unsafe member name"),
    "truncated": (lambda s, d: d.write_bytes(s.read_bytes()[: s.stat().st_size // 2]) and d, "not a readable zip"),
    "no manifest": (lambda s, d: _rezip(s, d, {"manifest.json": None}), "no manifest.json"),
}


@pytest.mark.parametrize("how", sorted(TAMPERS))
def test_a_tampered_bundle_is_refused_with_one_line(bundle, tmp_path: Path, capsys, how: str) -> None:
    from focusseg.cli import main

    good, images = bundle
    make, words = TAMPERS[how]
    bad = make(good, tmp_path / "bad.zip")
    capsys.readouterr()
    rc = main(["predict", str(bad), str(images), str(tmp_path / "out"), "--device", "cpu"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: "), lines
    assert words in lines[0].lower(), lines
    assert "Traceback" not in lines[0] and not (tmp_path / "out").exists()


def test_size_limits_and_newer_format_are_refused(bundle, tmp_path: Path, monkeypatch) -> None:
    from focusseg.errors import CheckpointError
    from focusseg.export import bundle as bundle_mod

    good, _ = bundle
    monkeypatch.setattr(bundle_mod, "MAX_MEMBER_BYTES", 100)  # weights over the cap: refused before reading
    with pytest.raises(CheckpointError, match="over the 100-byte limit"):
        bundle_mod.read_bundle(good)
    monkeypatch.undo()
    with zipfile.ZipFile(good) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    manifest["format_version"] = 99
    newer = _rezip(good, tmp_path / "newer.zip", {"manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(CheckpointError, match="format version 99"):
        bundle_mod.read_bundle(newer)


def test_export_refuses_bad_arguments(tmp_path: Path, capsys) -> None:
    from focusseg.cli import main

    run = make_tiny_run(tmp_path / "run")
    assert main(["export", str(run), "--out", str(tmp_path / "model.tar")]) == 2
    assert main(["export", str(run), "--out", str(tmp_path / "m.zip"), "--format", "pickle"]) == 2
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.zip")]) == 1
    err = capsys.readouterr().err
    assert ".zip file" in err and "--format must be one of" in err and "run folder not found" in err
    assert not (tmp_path / "m.zip").exists() and not (tmp_path / "model.tar").exists()
