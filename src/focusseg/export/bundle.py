"""The focusseg model bundle: one zip that holds everything ``focusseg predict`` needs, and nothing that runs code.

Members: ``manifest.json`` (format, versions, members and their weights, every file's SHA-256 and size, labels,
channels, preprocessing), ``postprocessing.json`` (the chosen steps) and, per member, ``members/<name>/plan.json``
and ``members/<name>/weights.safetensors``. A run has one member (``model``), a cross-validation folder one per
finished fold (weight ``1/n_folds``), so a bundle predicts exactly as ``focusseg predict RUN_OR_CV`` did.

Reading (:func:`read_bundle`) never extracts to disk and trusts nothing: plain relative names only (zip-slip), the
zip and the manifest list the same files, sizes are capped (:data:`MAX_MEMBER_BYTES`, :data:`MAX_JSON_BYTES`),
every SHA-256 must match, and nothing is unpickled. Any problem is one :class:`~focusseg.errors.CheckpointError`
line naming the bundle, the member and the problem. The layout in full: ``docs/export.md``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from focusseg import __version__
from focusseg.errors import CheckpointError, MissingFileError, UsageError, one_line
from focusseg.inference.loading import checkpoint_parts, select_checkpoint
from focusseg.inference.postprocess_selection import check_steps, read_postprocessing_file
from focusseg.inference.predictor import EnsemblePredictor, Predictor, crossval_predictor
from focusseg.io.atomic import atomic_path
from focusseg.runfolder import fold_dirs, is_crossval_dir

BUNDLE_FORMAT = "focusseg-bundle"
#: Bumped when the layout changes incompatibly; a bundle from a newer format is refused, not half-read.
BUNDLE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
POSTPROCESSING = "postprocessing.json"
#: Largest member (weights) read from a bundle, and largest JSON member.
MAX_MEMBER_BYTES = 8 << 30
MAX_JSON_BYTES = 64 << 20
#: Most members a bundle may hold (a cross-validation of many folds is far below).
MAX_ENTRIES = 1000


@dataclass
class ExportSource:
    """What is exported: members ``(name, plan, weights, ensemble weight, checkpoint file name)`` and the
    post-processing steps the run / cross-validation applies."""

    kind: str  # "run" or "crossval"
    path: Path
    checkpoint: str
    members: list[dict[str, Any]] = field(default_factory=list)
    postprocessing: list[dict[str, Any]] = field(default_factory=list)


def load_source(source: str | Path, checkpoint: str = "best") -> ExportSource:
    """A run folder or a cross-validation folder, loaded as ``focusseg predict`` loads it (same checks: no code
    runs, finite weights that fit the plan's network), on the CPU.

    Raises:
        MissingFileError / CheckpointError / UsageError: as :meth:`Predictor.from_run` (no run, bad checkpoint,
            unknown ``checkpoint``); RunFolderError: a cross-validation folder without a finished fold.
    """
    path = Path(source)
    if is_crossval_dir(path):
        ens = crossval_predictor(path, checkpoint, torch.device("cpu"))
        names = [d.name for d in fold_dirs(path)]
        kind = "crossval"
    else:
        ens = EnsemblePredictor([Predictor.from_run(path, checkpoint, torch.device("cpu"))])
        names = ["model"]
        kind = "run"
    members = []
    for name, member, weight in zip(names, ens.members, ens.weights):
        run_dir = member.run_dir if member.run_dir is not None else path
        members.append({"name": name, "plan": member.plan, "state_dict": member.network.state_dict(),
                        "weight": float(weight), "checkpoint": select_checkpoint(Path(run_dir), checkpoint).name})
    return ExportSource(kind, path, checkpoint, members, list(ens.postprocessing))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=False, allow_nan=False) + "\n").encode()


def model_spec(plan: Mapping[str, Any]) -> dict[str, Any]:
    """What a user of the model needs to know besides the network: labels, channels and the preprocessing /
    inference the network expects (from the plan)."""
    keys = ("labels", "channel_names", "n_classes", "ignore_label", "regions", "normalization", "target_spacing",
            "resample_order_image", "patch_size", "network", "inference", "dataset")
    return {k: plan[k] for k in keys if k in plan}


def write_bundle(source: str | Path | ExportSource, out: str | Path, checkpoint: str = "best") -> Path:
    """Write ``source`` (a run folder, a cross-validation folder, or a loaded :class:`ExportSource`) as a bundle
    at ``out`` (must end in ``.zip``), atomically (:func:`focusseg.io.atomic.atomic_path`). Returns ``out``."""
    from safetensors.torch import save as save_safetensors

    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise UsageError(f"a bundle is a .zip file, got --out {out}", hint="e.g. --out model.zip")
    if out.is_dir():
        raise UsageError("--out is a folder; a bundle is one .zip file", out)
    src = source if isinstance(source, ExportSource) else load_source(source, checkpoint)
    files: dict[str, bytes] = {POSTPROCESSING: _json_bytes({"steps": src.postprocessing})}
    listed = []
    for m in src.members:
        base = f"members/{m['name']}"
        # clone + contiguous: safetensors refuses tensors that share memory (tied weights) or are views
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in m["state_dict"].items()}
        files[f"{base}/plan.json"] = _json_bytes(m["plan"])
        files[f"{base}/weights.safetensors"] = save_safetensors(tensors, metadata={"focusseg_member": m["name"]})
        listed.append({"name": m["name"], "weight": m["weight"], "plan": f"{base}/plan.json",
                       "weights": f"{base}/weights.safetensors", "checkpoint": m["checkpoint"]})
    manifest = {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION, "focusseg_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"kind": src.kind, "path": str(src.path.resolve()), "checkpoint": src.checkpoint},
        "members": listed, "postprocessing": POSTPROCESSING,
        "model": model_spec(src.members[0]["plan"]),
        "files": {name: {"sha256": _sha256(data), "size": len(data)} for name, data in files.items()},
    }
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w") as zf:
            for name, data in files.items():
                kind = zipfile.ZIP_STORED if name.endswith(".safetensors") else zipfile.ZIP_DEFLATED
                zf.writestr(name, data, compress_type=kind)
            zf.writestr(MANIFEST, _json_bytes(manifest), compress_type=zipfile.ZIP_DEFLATED)
    return out


# ---------------------------------------------------------------------------------------------------- reading


def _safe_name(name: object) -> bool:
    """A plain relative POSIX path: no absolute path, drive, backslash, ``..``/``.``/empty part, NUL."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name or ":" in name:
        return False
    p = PurePosixPath(name)
    return not p.is_absolute() and all(part not in ("", ".", "..") for part in name.split("/"))


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, bundle: Path) -> bytes:
    """The member's bytes, at most ``limit`` (read with a cap, whatever its header claims)."""
    if info.file_size > limit:
        raise CheckpointError(f"member {info.filename} is {info.file_size} bytes, over the {limit}-byte limit",
                              bundle)
    try:
        with zf.open(info) as fh:
            data = fh.read(limit + 1)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise CheckpointError(f"member {info.filename} cannot be read ({one_line(exc)}): a damaged "
                              "or changed bundle", bundle) from exc
    if len(data) > limit or len(data) != info.file_size:
        raise CheckpointError(f"member {info.filename} holds {len(data)} bytes, its header says {info.file_size}",
                              bundle)
    return data


def _parse_json(data: bytes, member: str, bundle: Path) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"member {member} is not valid JSON ({one_line(exc)})", bundle) from exc


@dataclass
class Bundle:
    """A verified bundle: its manifest, members ``{name, plan, state_dict, weight}`` and post-processing."""

    path: Path
    manifest: dict[str, Any]
    members: list[dict[str, Any]]
    postprocessing: list[dict[str, Any]]


def read_bundle(path: str | Path) -> Bundle:
    """Open and verify a bundle (module docstring); nothing is extracted, nothing can execute code.

    Raises:
        MissingFileError: no such file. CheckpointError: not a zip, truncated, an unsafe / unlisted / missing
            member, a size or checksum mismatch, a newer format, an unreadable plan, weights or post-processing.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    bundle = Path(path)
    if not bundle.is_file():
        raise MissingFileError("no such model bundle", bundle, hint="export one: focusseg export RUN --out model.zip")
    try:
        zf = zipfile.ZipFile(bundle)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"not a readable zip bundle ({one_line(exc)}): truncated or not a "
                              "focusseg export", bundle) from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ENTRIES:
            raise CheckpointError(f"holds {len(infos)} entries, over the {MAX_ENTRIES} limit", bundle)
        by_name: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if not _safe_name(info.filename):
                raise CheckpointError(f"unsafe member name {info.filename!r} (absolute, '..' or backslash): "
                                      "refused", bundle)
            if info.filename in by_name:
                raise CheckpointError(f"member {info.filename} appears twice: refused", bundle)
            by_name[info.filename] = info
        if MANIFEST not in by_name:
            raise CheckpointError(f"no {MANIFEST}: not a focusseg model bundle", bundle)
        manifest = _parse_json(_read_member(zf, by_name[MANIFEST], MAX_JSON_BYTES, bundle), MANIFEST, bundle)
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            raise CheckpointError(f"{MANIFEST} is not a {BUNDLE_FORMAT} manifest", bundle)
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > BUNDLE_FORMAT_VERSION or version < 1:
            raise CheckpointError(f"bundle format version {version!r} is not one this focusseg reads "
                                  f"(1..{BUNDLE_FORMAT_VERSION}; made by focusseg "
                                  f"{manifest.get('focusseg_version')})", bundle, hint="upgrade focusseg")
        listed = manifest.get("files")
        if not isinstance(listed, dict) or not all(isinstance(v, dict) for v in listed.values()):
            raise CheckpointError(f"{MANIFEST} lists no files", bundle)
        for name in by_name:
            if name != MANIFEST and name not in listed:
                raise CheckpointError(f"member {name} is not listed in {MANIFEST} (added after export?): refused",
                                      bundle)
        contents: dict[str, bytes] = {}
        for name, entry in listed.items():
            if not _safe_name(name):
                raise CheckpointError(f"{MANIFEST} lists an unsafe name {name!r}: refused", bundle)
            if name not in by_name:
                raise CheckpointError(f"member {name} is missing (listed in {MANIFEST})", bundle)
            limit = MAX_MEMBER_BYTES if name.endswith(".safetensors") else MAX_JSON_BYTES
            data = _read_member(zf, by_name[name], limit, bundle)
            if len(data) != entry.get("size") or _sha256(data) != entry.get("sha256"):
                raise CheckpointError(f"member {name}: SHA-256 / size do not match {MANIFEST} (changed after "
                                      "export)", bundle)
            contents[name] = data

    def member_file(name: object, what: str) -> bytes:
        if not isinstance(name, str) or name not in contents:
            raise CheckpointError(f"{MANIFEST}: {what} {name!r} is not a listed member", bundle)
        return contents[name]

    post_name = manifest.get("postprocessing", POSTPROCESSING)
    post = _parse_json(member_file(post_name, "postprocessing"), post_name, bundle)
    steps = post.get("steps") if isinstance(post, dict) else None
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise CheckpointError(f"member {post_name} holds no list of 'steps'", bundle)
    check_steps(steps, bundle, post_name)
    entries = manifest.get("members")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise CheckpointError(f"{MANIFEST} lists no members", bundle)
    members = []
    for e in entries:
        plan = _parse_json(member_file(e.get("plan"), "plan"), str(e.get("plan")), bundle)
        try:
            state = load_safetensors(member_file(e.get("weights"), "weights"))
        except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
            raise CheckpointError(f"member {e.get('weights')} is not readable safetensors "
                                  f"({one_line(exc)[:200]})", bundle) from exc
        plan, state = checkpoint_parts({"plan": plan, "network": state}, f"{bundle}:{e.get('plan')}")
        weight = e.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise CheckpointError(f"{MANIFEST}: member {e.get('name')!r} has weight {weight!r} (need > 0)", bundle)
        members.append({"name": str(e.get("name")), "plan": plan, "state_dict": state, "weight": float(weight),
                        "source": f"{bundle}:{e.get('weights')}"})
    return Bundle(bundle, manifest, members, [dict(s) for s in steps])


def load_bundle(path: str | Path, device: str | torch.device | None = None, uncertainty: str | None = None,
                postprocess: bool = True, postprocessing_file: str | Path | None = None) -> Any:
    """An :class:`~focusseg.inference.predictor.EnsemblePredictor` of a verified bundle's members, with the
    bundle's post-processing (``postprocessing_file``'s steps instead when given; none if ``postprocess`` is
    false) -- what ``focusseg predict model.zip IN OUT`` runs."""
    b = read_bundle(path)
    members = [Predictor(m["plan"], m["state_dict"], device, b.postprocessing, source=m["source"])
               for m in b.members]
    if not postprocess:
        steps: list[dict] = []
    elif postprocessing_file is not None:
        steps = read_postprocessing_file(postprocessing_file)
    else:
        steps = b.postprocessing
    return EnsemblePredictor(members, [m["weight"] for m in b.members], uncertainty, postprocessing=steps)


__all__ = ["BUNDLE_FORMAT", "BUNDLE_FORMAT_VERSION", "Bundle", "ExportSource", "MAX_JSON_BYTES",
           "MAX_MEMBER_BYTES", "load_bundle", "load_source", "model_spec", "read_bundle", "write_bundle"]
