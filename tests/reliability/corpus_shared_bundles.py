"""Corpus entries for model bundles and checkpoints made by someone else: each a bundle exported from the tiny run,
then edited and RE-SUMMED (the member rewritten, its SHA-256 and size recomputed in ``manifest.json``, the zip
rewritten), so the checksum cannot catch it; the bound that must catch it is named on each entry. Bombs carry a
tight ``max_rss_mb``: refused before the claimed bytes are allocated."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

from .conftest import Sandbox
from .corpus import Entry, case, malicious_checkpoint, marker_absent

MANIFEST = "manifest.json"
PLAN = "members/model/plan.json"
WEIGHTS = "members/model/weights.safetensors"
#: Peak memory a refused bundle may add (the tiny run's network and predictor are a few MiB).
TIGHT_MB = 400.0


def _bundle(sb: Sandbox) -> Path:
    """The tiny run exported as ``in/model.zip`` (written before the sandbox is snapshotted: an input)."""
    from focusseg.export import write_bundle

    return write_bundle(sb.run(), sb.root / "in" / "model.zip")


def _members(path: Path) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(path) as zf:
        return [(info, zf.read(info)) for info in zf.infolist()]


def resum(path: Path, change: dict[str, bytes] | None = None,
          manifest_edit: Callable[[dict], None] | None = None) -> Path:
    """Rewrite the bundle ``path`` in place with members replaced by ``change`` and their SHA-256 / size
    recomputed in the manifest (then ``manifest_edit`` applied to it)."""
    change = change or {}
    members = _members(path)
    manifest = json.loads(dict((i.filename, d) for i, d in members)[MANIFEST])
    for name, data in change.items():
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    if manifest_edit is not None:
        manifest_edit(manifest)
    with zipfile.ZipFile(path, "w") as zout:
        for info, data in members:
            data = json.dumps(manifest).encode() if info.filename == MANIFEST else change.get(info.filename, data)
            zout.writestr(info, data)
    return path


def edit_plan(path: Path, fn: Callable[[dict], None], text: Callable[[str], str] | None = None) -> Path:
    """Apply ``fn`` to the bundle's plan (and ``text`` to its JSON text, for literals json.dumps will not write),
    re-summed."""
    plan = json.loads(dict((i.filename, d) for i, d in _members(path))[PLAN])
    fn(plan)
    body = json.dumps(plan)
    return resum(path, {PLAN: (text(body) if text else body).encode()})


def _entry(sb: Sandbox, bundle: Path, *extra: str) -> Entry:
    return Entry(["predict", bundle, sb.test_images(), sb.out, "--device", "cpu", *extra], bundle.name,
                 max_rss_mb=TIGHT_MB)


def _set(section: str, key: str, value) -> Callable[[dict], None]:
    def fn(plan: dict) -> None:
        plan[section][key] = value

    return fn


@case("predict")
def bundle_plan_normalization_std_nan(sb: Sandbox) -> Entry:
    """A CT normalisation whose std is NaN (json.dumps writes the literal NaN): refused as JSON, NaN never parsed."""
    bundle = _bundle(sb)

    def ct(plan: dict) -> None:
        plan["normalization"] = [{"scheme": "ct", "clip": [-100.0, 100.0], "mean": 0.0, "std": float("nan")}]

    edit_plan(bundle, ct)
    return _entry(sb, bundle)


@case("predict")
def bundle_plan_huge_n_classes(sb: Sandbox) -> Entry:
    bundle = _bundle(sb)
    edit_plan(bundle, lambda plan: plan.update(n_classes=50_000_000))
    return _entry(sb, bundle)


@case("predict")
def bundle_plan_tiny_target_spacing(sb: Sandbox) -> Entry:
    """0.01 mm spacing: the 20x24x16 test image would resample to ~2e10 voxels. The settings gate accepts 0.01 mm
    (its floor is 1e-3); the prediction's resampled-grid check refuses each case, naming the image."""
    bundle = _bundle(sb)
    edit_plan(bundle, lambda plan: plan.update(target_spacing=[0.01] * 3))
    entry = _entry(sb, bundle)
    entry.culprit, entry.max_error_lines = "target_spacing", 4
    return entry


@case("predict")
def bundle_plan_huge_patch(sb: Sandbox) -> Entry:
    bundle = _bundle(sb)
    edit_plan(bundle, lambda plan: plan.update(patch_size=[2048] * 3))
    return _entry(sb, bundle)


@case("predict")
def bundle_plan_noise_passes_huge(sb: Sandbox) -> Entry:
    bundle = _bundle(sb)
    edit_plan(bundle, _set("inference", "noise_passes", 10**9))
    return _entry(sb, bundle)


@case("predict")
def bundle_plan_infinity(sb: Sandbox) -> Entry:
    bundle = _bundle(sb)
    edit_plan(bundle, _set("inference", "overlap", 0.5),
              text=lambda body: body.replace('"overlap": 0.5', '"overlap": Infinity'))
    return _entry(sb, bundle)


@case("predict")
def bundle_plan_huge_network(sb: Sandbox) -> Entry:
    """Widths of 4096 (each within the settings gate): ~3e9 parameters (12 GiB) known from the meta-device build
    and refused before any is allocated."""
    bundle = _bundle(sb)
    edit_plan(bundle, lambda plan: plan["network"].update(channels=[4096, 4096, 4096]))
    return _entry(sb, bundle)


@case("predict")
def bundle_manifest_5000_members(sb: Sandbox) -> Entry:
    bundle = _bundle(sb)
    resum(bundle, manifest_edit=lambda m: m.update(members=m["members"] * 5000))
    return _entry(sb, bundle)


@case("predict")
def bundle_member_claims_8_gib(sb: Sandbox) -> Entry:
    """The central directory claims 8 GiB for the weights and the plan (a few KiB in the file): the total
    decompressed size is refused before any member is read."""
    bundle = _bundle(sb)
    claims = {WEIGHTS: 8 << 30, PLAN: (8 << 30) + 1}
    resum(bundle, manifest_edit=lambda m: [m["files"][n].update(size=s) for n, s in claims.items()])
    members = _members(bundle)
    zout = zipfile.ZipFile(bundle, "w")
    for info, data in members:
        zout.writestr(info, data)
    for info in zout.filelist:  # the central directory is written from these on close
        info.file_size = claims.get(info.filename, info.file_size)
    zout.close()
    return _entry(sb, bundle)


@case("predict")
def bundle_deflated_weights_bomb(sb: Sandbox) -> Entry:
    """The weights member deflated and padded with 1 GiB of zeros (~1 MiB in the file, a ratio just under 1000x
    because the real weights do not compress), its SHA-256 and size re-summed: refused by the inflation bound
    before it inflates."""
    bundle = _bundle(sb)
    members = _members(bundle)
    weights = dict((i.filename, d) for i, d in members)[WEIGHTS]
    pad, chunk = 1 << 30, bytes(1 << 20)
    digest = hashlib.sha256(weights)
    for _ in range(pad // len(chunk)):
        digest.update(chunk)
    manifest = json.loads(dict((i.filename, d) for i, d in members)[MANIFEST])
    manifest["files"][WEIGHTS] = {"sha256": digest.hexdigest(), "size": len(weights) + pad}
    with zipfile.ZipFile(bundle, "w") as zout:
        for info, data in members:
            if info.filename == WEIGHTS:
                deflated = zipfile.ZipInfo(WEIGHTS, date_time=info.date_time)
                deflated.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(deflated, "w", force_zip64=True) as fh:
                    fh.write(weights)
                    for _ in range(pad // len(chunk)):
                        fh.write(chunk)
            else:
                zout.writestr(info, json.dumps(manifest).encode() if info.filename == MANIFEST else data)
    assert bundle.stat().st_size < 8 << 20  # the bomb is small on disk
    return _entry(sb, bundle)


@case("predict")
def bundle_expect_sha256_mismatch(sb: Sandbox) -> Entry:
    """A valid bundle, but not the one pinned: refused before it is opened."""
    bundle = _bundle(sb)
    return _entry(sb, bundle, "--expect-sha256", hashlib.sha256(b"another model").hexdigest())


@case("predict")
def run_checkpoint_payload_expect_sha256(sb: Sandbox) -> Entry:
    """A run folder whose checkpoint was swapped for a pickle payload, predicted with the digest of the original:
    refused on the digest, before the file is unpickled at all."""
    run, imgs = sb.run(), sb.test_images()
    pinned = hashlib.sha256((run / "checkpoint_best.pt").read_bytes()).hexdigest()
    marker = sb.root / "PWNED"
    malicious_checkpoint(run / "checkpoint_best.pt", marker)

    return Entry(["predict", run, imgs, sb.out, "--device", "cpu", "--expect-sha256", pinned],
                 "checkpoint_best.pt", after=marker_absent(marker), max_rss_mb=TIGHT_MB)


@case("predict")
def run_checkpoint_deflated_bomb(sb: Sandbox) -> Entry:
    """A run's checkpoint whose first tensor record is deflated and padded to 512 MiB of zeros (~0.5 MiB in the
    file): torch.load would allocate the claimed record; refused by the checkpoint's inflation bound first."""
    run, imgs = sb.run(), sb.test_images()
    ckpt = run / "checkpoint_best.pt"
    records = _members(ckpt)
    pad, chunk = 512 << 20, bytes(1 << 20)
    with zipfile.ZipFile(ckpt, "w") as zout:
        for info, data in records:
            if info.filename.endswith("/data/0"):
                deflated = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                deflated.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(deflated, "w", force_zip64=True) as fh:
                    fh.write(data)
                    for _ in range(pad // len(chunk)):
                        fh.write(chunk)
            else:
                zout.writestr(info, data)
    return Entry(["predict", run, imgs, sb.out, "--device", "cpu"], "checkpoint_best.pt", max_rss_mb=TIGHT_MB)
