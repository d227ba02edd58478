"""Trust bounds of model bundles, checkpoint loading and exports: zip bombs and forged sizes refused before anything
is read, a manifest's member count and every plan gated before any weights load, NaN / Infinity in a plan refused,
a network's cost known from a meta-device build before it is allocated, the SHA-256 printed and pinned
(``--expect-sha256``), no absolute path of the exporting machine in an export, and a missing optional package
named in one line with the extra that installs it."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from export_helpers import make_tiny_crossval, make_tiny_run
from inference.run_helpers import make_run, tiny_plan, tiny_weights, write_inputs
from nets.nets_helpers import TINY

from focusseg.errors import CheckpointError, PlanError, UsageError

pytest.importorskip("safetensors", reason="the bundle's weights are safetensors: pip install '.[export]'")

WEIGHTS = "members/model/weights.safetensors"
PLAN = "members/model/plan.json"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from focusseg.export import write_bundle

    tmp = tmp_path_factory.mktemp("trust")
    return write_bundle(make_tiny_run(tmp / "run"), tmp / "model.zip")


def _entries(src: Path) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(src) as zf:
        return [(info, zf.read(info)) for info in zf.infolist()]


def _resummed(src: Path, dst: Path, change: dict[str, bytes], manifest_edit=None) -> Path:
    """``src`` with members replaced and the manifest's SHA-256 / size re-computed (the checksum cannot catch it),
    ``manifest_edit(manifest)`` applied last."""
    entries = _entries(src)
    manifest = json.loads(dict((i.filename, d) for i, d in entries)["manifest.json"])
    for name, data in change.items():
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    if manifest_edit is not None:
        manifest_edit(manifest)
    with zipfile.ZipFile(dst, "w") as zout:
        for info, data in entries:
            if info.filename == "manifest.json":
                data = json.dumps(manifest).encode()
            zout.writestr(info, change.get(info.filename, data))
    return dst


def _forged(src: Path, dst: Path, claims: dict[str, int]) -> Path:
    """``src`` whose central directory claims ``claims[name]`` decompressed bytes (the file stays small)."""
    entries = _entries(src)
    zout = zipfile.ZipFile(dst, "w")
    for info, data in entries:
        zout.writestr(info, data)
    for info in zout.filelist:
        if info.filename in claims:
            info.file_size = claims[info.filename]
    zout.close()
    return dst


def _plan_bytes(src: Path) -> dict:
    return json.loads(dict((i.filename, d) for i, d in _entries(src))[PLAN])


def _no_reads(monkeypatch) -> None:
    """From now on, fail the test if any member of a zip is opened for reading."""
    def refuse(self, name, mode="r", *a, **k):
        if mode == "r":
            raise AssertionError(f"member {getattr(name, 'filename', name)} was read")
        return real(self, name, mode, *a, **k)

    real = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", refuse)


# ------------------------------------------------------------------------------------------------ size bounds
def test_a_total_size_claim_is_refused_before_reading(bundle: Path, tmp_path: Path, monkeypatch) -> None:
    from focusseg.export import bundle as bundle_mod

    forged = _forged(bundle, tmp_path / "forged.zip", {WEIGHTS: 8 << 30, PLAN: 8 << 30 + 1})
    assert forged.stat().st_size < 1 << 20
    real = zipfile.ZipFile.open
    opened = []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, n, *a, **k: opened.append(n) or real(self, n, *a, **k))
    with pytest.raises(CheckpointError, match="decompressed in all, over the") as e:
        bundle_mod.read_bundle(forged)
    assert e.value.path == forged and not opened


def test_a_stored_member_claiming_more_than_it_holds_is_refused(bundle: Path, tmp_path: Path, monkeypatch) -> None:
    from focusseg.export import read_bundle

    forged = _forged(bundle, tmp_path / "forged.zip", {WEIGHTS: 2 << 30})
    _no_reads(monkeypatch)
    with pytest.raises(CheckpointError, match="stored uncompressed but claims"):
        read_bundle(forged)


def test_a_deflated_bomb_is_refused_before_it_inflates(bundle: Path, tmp_path: Path, monkeypatch) -> None:
    from focusseg.export import read_bundle

    bomb = bytes(16 << 20)  # 16 MiB of zeros deflate to ~16 KiB: > 1000x
    entries = _entries(bundle)
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w") as zout:
        for info, data in entries:
            if info.filename == WEIGHTS:
                zout.writestr(WEIGHTS, bomb, compress_type=zipfile.ZIP_DEFLATED)
            else:
                zout.writestr(info, data)
    _no_reads(monkeypatch)
    with pytest.raises(CheckpointError, match=r"would inflate .* \(more than 1000x\): a zip bomb"):
        read_bundle(tmp_path / "bomb.zip")


def test_check_sizes_compressed_size_larger_than_the_bundle() -> None:
    from focusseg.export.bundle import check_sizes

    info = zipfile.ZipInfo("members/model/plan.json")
    info.compress_type, info.file_size, info.compress_size = zipfile.ZIP_DEFLATED, 100, 5000
    with pytest.raises(CheckpointError, match="more than the bundle's"):
        check_sizes([info], 1000, Path("b.zip"))
    info.compress_size = 50
    check_sizes([info], 1000, Path("b.zip"))  # within every bound


def test_check_sizes_overlapping_members_and_the_inflation_bound(bundle: Path, monkeypatch) -> None:
    from focusseg.export import bundle as bundle_mod

    infos = []
    for name in ("a.json", "b.json"):  # two entries sharing one compressed kernel claim more than the file holds
        info = zipfile.ZipInfo(name)
        info.compress_type, info.file_size, info.compress_size = zipfile.ZIP_DEFLATED, 6000, 600
        infos.append(info)
    with pytest.raises(CheckpointError, match="overlapping members"):
        bundle_mod.check_sizes(infos, 1000, Path("b.zip"))
    monkeypatch.setattr(bundle_mod, "MAX_INFLATION_BYTES", 10)  # the real bundle's deflated JSON inflates more
    with pytest.raises(CheckpointError, match="compressed members would inflate by") as e:
        bundle_mod.read_bundle(bundle)
    assert "uncompressed" in e.value.hint


def test_too_many_members_are_refused_before_any_plan(bundle: Path, tmp_path: Path, monkeypatch) -> None:
    from focusseg.export import bundle as bundle_mod

    def many(manifest: dict) -> None:
        manifest["members"] = manifest["members"] * 5000

    bad = _resummed(bundle, tmp_path / "many.zip", {}, many)
    parsed = []
    monkeypatch.setattr(bundle_mod, "parse_plan_settings", lambda *a: parsed.append(a))
    with pytest.raises(CheckpointError, match="lists 5,000 members, over the 64 limit"):
        bundle_mod.read_bundle(bad)
    assert not parsed


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_or_infinity_in_a_plan_is_refused(bundle: Path, tmp_path: Path, literal: str) -> None:
    from focusseg.export import read_bundle

    text = json.dumps(_plan_bytes(bundle)).replace('"overlap": 0.5', f'"overlap": {literal}')
    assert literal in text
    bad = _resummed(bundle, tmp_path / "nan.zip", {PLAN: text.encode()})
    with pytest.raises(CheckpointError, match="NaN and Infinity are refused") as e:
        read_bundle(bad)
    assert str(bad) in str(e.value) and PLAN in str(e.value) and "\n" not in str(e.value)


def test_infinity_in_the_manifest_is_refused(bundle: Path, tmp_path: Path) -> None:
    from focusseg.export import read_bundle

    entries = _entries(bundle)
    with zipfile.ZipFile(tmp_path / "inf.zip", "w") as zout:
        for info, data in entries:
            if info.filename == "manifest.json":
                data = data.replace(b'"weight": 1.0', b'"weight": Infinity')
                assert b"Infinity" in data
            zout.writestr(info, data)
    with pytest.raises(CheckpointError, match="manifest.json: not readable JSON"):
        read_bundle(tmp_path / "inf.zip")


@pytest.mark.parametrize("field, value", [("n_classes", 50_000_000), ("patch_size", [2048] * 3),
                                          ("inference.noise_passes", 10**9)])
def test_a_plan_over_the_settings_gate_is_refused_before_its_weights_load(bundle: Path, tmp_path: Path, monkeypatch,
                                                                          field: str, value) -> None:
    import safetensors.torch

    from focusseg.export import read_bundle

    plan = _plan_bytes(bundle)
    if "." in field:
        section, key = field.split(".")
        plan[section][key] = value
    else:
        plan[field] = value
    bad = _resummed(bundle, tmp_path / "big.zip", {PLAN: json.dumps(plan).encode()})
    loaded = []
    monkeypatch.setattr(safetensors.torch, "load", lambda *a, **k: loaded.append(a))
    with pytest.raises(PlanError) as e:
        read_bundle(bad)
    assert str(bad) in str(e.value) and field.split(".")[-1] in str(e.value) and not loaded


# --------------------------------------------------------------------------------------- network cost bounds
def test_every_registered_network_is_sized_on_the_meta_device() -> None:
    from focusseg.inference.loading import meta_network

    for name, (kwargs, _, patch) in TINY.items():
        plan = {**tiny_plan(), "network": {"name": name, **kwargs}, "patch_size": list(patch)}
        meta = meta_network(plan, "x.pt")
        assert meta is not None, name
        assert all(p.is_meta for p in meta.parameters()), name
        torch.manual_seed(0)
        real = tiny_weights(plan)
        assert {k: tuple(v.shape) for k, v in meta.state_dict().items()} == {k: tuple(v.shape)
                                                                              for k, v in real.items()}, name


def _record_builds(monkeypatch) -> list[bool]:
    """Each build_inference_module call of loading.py, as True when made on the meta device."""
    from focusseg.inference import loading

    calls: list[bool] = []
    real = loading.build_inference_module

    def spy(plan):
        calls.append(torch.empty(1).is_meta)
        return real(plan)

    monkeypatch.setattr(loading, "build_inference_module", spy)
    return calls


def test_too_many_parameters_are_refused_before_allocation(monkeypatch) -> None:
    from focusseg.inference import loading

    plan = tiny_plan()
    weights = tiny_weights(plan)
    calls = _record_builds(monkeypatch)
    monkeypatch.setattr(loading, "MAX_PARAMETERS", 1000)
    with pytest.raises(CheckpointError, match=r"has [\d,]+ parameters \(at most 1,000\)") as e:
        loading.build_network(plan, weights, "run/checkpoint_best.pt")
    assert e.value.path == Path("run/checkpoint_best.pt") and calls == [True]


def test_weights_that_do_not_fit_are_refused_without_building_the_network(monkeypatch) -> None:
    from focusseg.inference import loading

    calls = _record_builds(monkeypatch)
    with pytest.raises(CheckpointError, match=r"do not fit .*\(shape of .*weights \[4, 1, 3, 3, 3\], network "
                                              r"\[4, 2, 3, 3, 3\]"):
        loading.build_network(tiny_plan(n_channels=2), tiny_weights(tiny_plan()), "x.pt")
    assert calls == [True]
    weights = tiny_weights(tiny_plan())
    weights["extra.weight"] = torch.zeros(3)
    del weights[next(iter(weights))]
    with pytest.raises(CheckpointError, match=r"missing .*; unexpected extra.weight"):
        loading.build_network(tiny_plan(), weights, "x.pt")


def test_the_activation_estimate_is_bounded(monkeypatch) -> None:
    from focusseg.inference import loading

    plan = tiny_plan()
    # first stage width 4 x 16^3 voxels x inference batch 2 x 4 bytes x factor
    assert loading.activation_bytes(plan, 4) == 4 * 16**3 * 2 * 4 * loading.ACTIVATION_FACTOR
    monkeypatch.setattr(loading, "MAX_ACTIVATION_BYTES", 1 << 10)
    with pytest.raises(CheckpointError, match=r"GiB of activations per inference batch \(first stage width 4"):
        loading.build_network(plan, tiny_weights(plan), "x.pt")


def test_a_network_that_cannot_be_built_on_meta_is_checked_after_the_real_build(monkeypatch) -> None:
    from focusseg.inference import loading

    monkeypatch.setattr(loading, "meta_network", lambda plan, source=None: None)
    monkeypatch.setattr(loading, "MAX_PARAMETERS", 1000)
    with pytest.raises(CheckpointError, match="parameters"):
        loading.build_network(tiny_plan(), tiny_weights(tiny_plan()), "x.pt")
    monkeypatch.undo()
    assert loading.build_network(tiny_plan(), tiny_weights(tiny_plan()), "x.pt") is not None


def _rewrite_checkpoint(path: Path, deflate: str, pad: int = 0) -> None:
    """Rewrite a torch checkpoint (a zip) with the record ending in ``deflate`` deflated and padded with zeros."""
    records = _entries(path)
    with zipfile.ZipFile(path, "w") as zout:
        for info, data in records:
            kind = zipfile.ZIP_DEFLATED if info.filename.endswith(deflate) else zipfile.ZIP_STORED
            zout.writestr(info.filename, data + bytes(pad) if kind == zipfile.ZIP_DEFLATED else data,
                          compress_type=kind)


def test_a_checkpoint_zip_bomb_is_refused_before_torch_load(tmp_path: Path, monkeypatch) -> None:
    from focusseg.inference.predictor import Predictor
    from focusseg.io import checkpoint as ckpt_mod

    run = make_run(tmp_path / "run")
    f = run / "checkpoint_best.pt"
    _rewrite_checkpoint(f, "/data/0")  # torch.load reads deflated records too: the bound must be focusseg's
    assert Predictor.from_run(run, device="cpu") is not None  # within the bound: loads
    _rewrite_checkpoint(f, "/data/0", pad=4096)  # zeros: inflates ~4 KiB beyond its compressed size
    monkeypatch.setattr(ckpt_mod, "MAX_INFLATION_BYTES", 1024)
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(CheckpointError, match="compressed records would inflate by") as e:
        Predictor.from_run(run, device="cpu")
    assert e.value.path == f and not loads


def test_check_zip_bounds_forged_records(tmp_path: Path) -> None:
    from focusseg.io.checkpoint import check_zip_bounds

    f = tmp_path / "c.pt"
    torch.save({"a": torch.zeros(100)}, f)
    check_zip_bounds(f)  # as torch.save wrote it
    _forged(f, tmp_path / "big.pt", {n: 1 << 30 for n in zipfile.ZipFile(f).namelist() if n.endswith("/data/0")})
    with pytest.raises(CheckpointError, match="stored uncompressed but claims 1,073,741,824 bytes"):
        check_zip_bounds(tmp_path / "big.pt")
    (tmp_path / "legacy.pt").write_bytes(b"not a zip")
    check_zip_bounds(tmp_path / "legacy.pt")  # left to torch.load's own error


# ---------------------------------------------------------------------------------------------------- digests
def test_file_sha256_streams_and_parse_sha256(tmp_path: Path) -> None:
    from focusseg.io.checkpoint import check_sha256, file_sha256, parse_sha256

    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * ((1 << 20) * 2 + 7))
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    assert file_sha256(f) == digest == file_sha256(f, chunk=1000)
    assert parse_sha256(digest.upper()) == digest == parse_sha256(f"sha256:{digest}")
    for bad in ("abc", "g" * 64, digest + "0", "md5:" + digest):
        with pytest.raises(UsageError, match="is not a SHA-256 digest"):
            parse_sha256(bad)
    assert check_sha256(f, set()) == digest == check_sha256(f, {digest, "0" * 64})
    with pytest.raises(CheckpointError, match=f"SHA-256 is {digest}, not the expected 0{{64}}"):
        check_sha256(f, {"0" * 64})


def _cli(argv: list, capsys) -> tuple[int, str, str]:
    from focusseg.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_predict_prints_and_pins_the_bundle_digest(bundle: Path, tmp_path: Path, capsys) -> None:
    images = tmp_path / "imagesTs"
    write_inputs(images, n_cases=1)
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    rc, out, err = _cli(["predict", bundle, images, tmp_path / "wrong", "--device", "cpu", "--expect-sha256",
                         "0" * 64], capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 1 and len(lines) == 1 and str(bundle) in lines[0] and digest in lines[0], err
    assert not (tmp_path / "wrong").exists()
    rc, out, err = _cli(["predict", bundle, images, tmp_path / "bad", "--expect-sha256", "xyz"], capsys)
    assert rc == 2 and "not a SHA-256 digest" in err and not (tmp_path / "bad").exists()
    rc, out, err = _cli(["predict", bundle, images, tmp_path / "ok", "--device", "cpu", "--expect-sha256",
                         digest.upper()], capsys)
    assert rc == 0 and f"sha256 {digest}" in out.splitlines()[0] and (tmp_path / "ok").is_dir(), err


def test_predict_pins_run_and_crossval_checkpoints(tmp_path: Path, capsys) -> None:
    from focusseg.io.checkpoint import file_sha256

    images = tmp_path / "imagesTs"
    write_inputs(images, n_cases=1)
    cv = make_tiny_crossval(tmp_path / "cv", n_folds=2)
    digests = [file_sha256(cv / f"fold_{k}" / "checkpoint_best.pt") for k in range(2)]
    rc, out, err = _cli(["predict", cv, images, tmp_path / "one", "--device", "cpu", "--expect-sha256",
                         digests[0]], capsys)
    assert rc == 1 and "fold_1" in err and digests[1] in err and not (tmp_path / "one").exists(), err
    pins = [a for d in digests for a in ("--expect-sha256", d)]
    rc, out, err = _cli(["predict", cv, images, tmp_path / "both", "--device", "cpu", *pins], capsys)
    assert rc == 0 and all(d in out.replace("\n", "") for d in digests), err
    run = make_tiny_run(tmp_path / "run")
    rc, out, err = _cli(["predict", run, images, tmp_path / "run_out", "--device", "cpu"], capsys)
    assert rc == 0 and file_sha256(run / "checkpoint_best.pt") in out.replace("\n", "")


def test_export_prints_the_digest_of_what_it_wrote(tmp_path: Path, capsys) -> None:
    run = make_tiny_run(tmp_path / "run")
    rc, out, err = _cli(["export", run, "--out", tmp_path / "m.zip"], capsys)
    assert rc == 0, err
    assert hashlib.sha256((tmp_path / "m.zip").read_bytes()).hexdigest() in out.replace("\n", "")


# ---------------------------------------------------------------------------------------------- no host paths
def test_portable_reduces_absolute_paths_to_base_names() -> None:
    from focusseg.export.bundle import portable

    value = {"a": "/home/alice/data/run/checkpoint_best.pt", "b": ["C:\\Users\\bob\\x.pt", "~/y.pt"],
             "c": "file:///srv/z.pt", "d": "relative/name", "e": 3, "f": "\\\\server\\share\\w.pt", "g": None}
    assert portable(value) == {"a": "checkpoint_best.pt", "b": ["x.pt", "y.pt"], "c": "z.pt", "d": "relative/name",
                               "e": 3, "f": "w.pt", "g": None}


def _all_bytes(zip_path: Path) -> list[tuple[str, bytes]]:
    """Every member's bytes, and those of a zip inside it (a TorchScript archive)."""
    out = []
    for info, data in _entries(zip_path):
        out.append((info.filename, data))
        if data[:2] == b"PK":
            with zipfile.ZipFile(io.BytesIO(data)) as inner:
                out += [(f"{info.filename}/{n}", inner.read(n)) for n in inner.namelist()]
    return out


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_exports_hold_no_absolute_path_of_this_machine(tmp_path: Path) -> None:
    from focusseg.export import export_graphs, read_bundle, write_bundle

    plan = tiny_plan()
    plan["training"]["init_from"] = {"source": str(tmp_path / "pretrained" / "checkpoint_best.pt"),
                                     "sha256": "ab" * 32, "freeze_encoder_epochs": 0, "warmup_epochs": 0}
    run = make_run(tmp_path / "run", plan)
    outputs = [write_bundle(run, tmp_path / "model.zip")]
    export_graphs(run, tmp_path / "ts.zip", "torchscript")
    export_graphs(run, tmp_path / "onnx.zip", "onnx", exporter="legacy")
    outputs += [tmp_path / "ts.zip", tmp_path / "onnx.zip"]
    forbidden = [str(tmp_path).encode(), str(tmp_path.resolve()).encode()]
    if str(Path.home()) not in ("/", ""):
        forbidden.append(str(Path.home()).encode())
    for zip_path in outputs:
        for name, data in _all_bytes(zip_path):
            for text in forbidden:
                assert text not in data, f"{zip_path.name}:{name} holds {text!r}"
    b = read_bundle(tmp_path / "model.zip")
    assert b.manifest["source"]["path"] == "run"
    assert b.members[0]["plan"]["training"]["init_from"]["source"] == "checkpoint_best.pt"
    with zipfile.ZipFile(tmp_path / "ts.zip") as zf:
        (tmp_path / "model.pt").write_bytes(zf.read("model.pt"))
    net = torch.jit.load(str(tmp_path / "model.pt"))  # loads without its debug records
    assert net(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


# ------------------------------------------------------------------------------------- optional dependencies
@pytest.mark.parametrize("package, extra, argv", [
    ("safetensors", "export", ["predict", "{bundle}", "{images}", "{out}", "--device", "cpu"]),
    ("onnx", "export", ["export", "{run}", "--out", "{out}.zip", "--format", "onnx", "--exporter", "legacy"]),
])
def test_a_missing_optional_package_is_one_line_with_its_extra(bundle: Path, tmp_path: Path, monkeypatch, capsys,
                                                                package: str, extra: str, argv: list) -> None:
    images = tmp_path / "imagesTs"
    write_inputs(images, n_cases=1)
    names = {"bundle": bundle, "images": images, "out": tmp_path / "out", "run": make_tiny_run(tmp_path / "run")}
    monkeypatch.setitem(sys.modules, package, None)
    rc, out, err = _cli([a.format(**names) for a in argv], capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 1, err
    assert lines == [f"error: needs the optional package {package}: pip install 'focusseg[{extra}]'"], err
    assert "Traceback" not in err and not (tmp_path / "out").exists() and not (tmp_path / "out.zip").exists()


def test_optional_packages_match_the_extras_of_pyproject() -> None:
    from focusseg.cli.errors import OPTIONAL_PACKAGES, missing_optional

    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    extras = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for package, extra in OPTIONAL_PACKAGES.items():
        assert any(req.replace("-", "_").startswith(package) for req in extras[extra]), (package, extra)
    every = {req.split(">")[0].split("=")[0].replace("-", "_") for name, reqs in extras.items()
             if name not in ("dev", "docs") for req in reqs}
    assert every == set(OPTIONAL_PACKAGES)
    assert missing_optional(ModuleNotFoundError("x", name="numpy")) is None
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = ModuleNotFoundError("no", name="highdicom.seg")
    assert missing_optional(wrapped) == "needs the optional package highdicom: pip install 'focusseg[dicom]'"
