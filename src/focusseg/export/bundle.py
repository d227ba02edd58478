"""The focusseg model bundle: one zip that holds everything ``focusseg predict`` needs, and nothing that runs code.

Members: ``manifest.json`` (format, versions, members and their weights, every file's SHA-256 and size, labels,
channels, preprocessing), ``postprocessing.json`` (the chosen steps) and, per member, ``members/<name>/plan.json``
and ``members/<name>/weights.safetensors``. A run has one member (``model``), a cross-validation folder one per
finished fold (weight ``1/n_folds``), so a bundle predicts exactly as ``focusseg predict RUN_OR_CV`` did.

Reading (:func:`read_bundle`) never extracts to disk and trusts nothing: plain relative names only (zip-slip), the
zip and the manifest list the same files, every SHA-256 must match, and nothing is unpickled. A zip bomb cannot
exhaust memory: before any member is read, the sizes its headers claim are bounded (each member
:data:`MAX_MEMBER_BYTES` / :data:`MAX_JSON_BYTES`, all together :data:`MAX_TOTAL_BYTES`, a compressed member at
most :data:`MAX_RATIO` times its compressed size, the compressed members together at most
:data:`MAX_INFLATION_BYTES` beyond their size in the file, a stored member no larger than the bundle), so reading
allocates at most the bundle's size plus that inflation; reads are capped at those sizes, and the manifest lists
at most :data:`MAX_MEMBERS` members; every plan passes the settings gate
(:func:`focusseg.settings.parse_plan_settings`) before any weights are loaded. JSON is read bounded, NaN and
Infinity refused. Any problem is one :class:`~focusseg.errors.CheckpointError` (or
:class:`~focusseg.errors.PlanError`) line naming the bundle, the member and the problem.

Nothing in a bundle names the exporting machine: the manifest keeps the source folder's name only, and every
absolute path in the plans (e.g. a fine-tuning source) is reduced to its base name (:func:`portable`). The layout in
full: ``docs/export.md``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch

from focusseg import __version__
from focusseg.errors import CheckpointError, MissingFileError, UsageError, one_line
from focusseg.inference.loading import checkpoint_parts, select_checkpoint
from focusseg.inference.postprocess_selection import check_steps, read_postprocessing_file
from focusseg.inference.predictor import EnsemblePredictor, Predictor, crossval_predictor
from focusseg.io.atomic import atomic_path
from focusseg.io.jsonfile import loads_bounded
from focusseg.nnunet import read_model_folder
from focusseg.nnunet.convert import checkpoint_files as nnunet_checkpoint_files
from focusseg.nnunet.convert import load_fold_plan, model_postprocessing
from focusseg.runfolder import fold_dirs, is_crossval_dir
from focusseg.settings import parse_plan_settings

BUNDLE_FORMAT = "focusseg-bundle"
#: Bumped when the layout changes incompatibly; a bundle from a newer format is refused, not half-read.
BUNDLE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
POSTPROCESSING = "postprocessing.json"
#: Largest member (weights) read from a bundle, and largest JSON member.
MAX_MEMBER_BYTES = 8 << 30
MAX_JSON_BYTES = 64 << 20
#: Largest decompressed size of all members together (the sum the zip's headers claim, checked before reading).
MAX_TOTAL_BYTES = 16 << 30
#: Largest decompressed / compressed size of one member: weights are stored uncompressed and JSON deflates ~10x;
#: deflate cannot exceed ~1030x, which only a bomb of repeated bytes reaches.
MAX_RATIO = 1000
#: Most bytes all compressed members together may inflate beyond their size in the file: a stored member costs
#: what the file holds, a compressed one up to MAX_RATIO times more, so this caps what reading may allocate beyond
#: the bundle's own size (JSON members are KiB; weights repacked with deflate gain ~10%).
MAX_INFLATION_BYTES = 256 << 20
#: Most files a bundle may hold (a cross-validation of many folds is far below).
MAX_ENTRIES = 1000
#: Most ensemble members a manifest may list: each is a network built and run per sliding window (a
#: cross-validation has 5), checked before any plan is parsed.
MAX_MEMBERS = 64
_WINDOWS_ABSOLUTE = re.compile(r"^[A-Za-z]:[\\/]")


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
    """A run folder, a cross-validation folder or an nnU-Net v2 model folder (every fold, converted as ``focusseg
    predict`` converts it: :mod:`focusseg.nnunet.convert`), loaded as ``focusseg predict`` loads it (same checks: no
    code runs, finite weights that fit the plan's network), on the CPU.

    Raises:
        MissingFileError / CheckpointError / UsageError: as :meth:`Predictor.from_run` (no run, bad checkpoint,
            unknown ``checkpoint``); RunFolderError: a cross-validation folder without a finished fold.
    """
    path = Path(source)
    if path.is_dir() and (path / "plans.json").is_file() and (path / "dataset.json").is_file():
        return _nnunet_source(path, checkpoint)
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


def _nnunet_source(path: Path, checkpoint: str) -> ExportSource:
    """An nnU-Net model folder's folds as members ``fold_K`` (weight ``1/n`` each, its post-processing), each built
    and checked as a predictor is (kind ``"nnunet"``)."""
    model = read_model_folder(path, checkpoint_name=None)
    files = nnunet_checkpoint_files(path, checkpoint)
    members = []
    for fold, file in files.items():
        converted = load_fold_plan(model, fold, file)
        net = Predictor(converted.plan, converted.weights, torch.device("cpu"), source=file).network
        members.append({"name": f"fold_{fold}", "plan": converted.plan, "state_dict": net.state_dict(),
                        "weight": 1.0 / len(files), "checkpoint": file.name})
    return ExportSource("nnunet", path, checkpoint, members, model_postprocessing(model))


def _is_absolute_path(text: str) -> bool:
    """A path of the machine that wrote it: POSIX ``/...``, home ``~...``, Windows ``C:\\...`` / ``\\\\server``,
    or a ``file:`` URL."""
    return (text.startswith(("/", "~", "\\\\", "file:")) or bool(_WINDOWS_ABSOLUTE.match(text)))


def portable(value: Any) -> Any:
    """A copy of ``value`` (a plan, or any JSON value) in which every string that is an absolute path of this
    machine (:func:`_is_absolute_path`) is reduced to its base name: an exported model must not carry the
    exporting machine's folders or user name (a fine-tuning source, a dataset path).

    Args:
        value: a JSON value (dicts, lists, strings, numbers).

    Returns:
        the same structure with such strings replaced; everything else unchanged.
    """
    if isinstance(value, str):
        if not _is_absolute_path(value):
            return value
        text = value[len("file:"):].lstrip("/") if value.startswith("file:") else value
        return PureWindowsPath(text).name if "\\" in text else PurePosixPath(text).name
    if isinstance(value, Mapping):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    return value


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=False, allow_nan=False) + "\n").encode()


def model_spec(plan: Mapping[str, Any]) -> dict[str, Any]:
    """What a user of the model needs to know besides the network: labels, channels and the preprocessing /
    inference the network expects (from the plan)."""
    keys = ("labels", "channel_names", "n_classes", "ignore_label", "regions", "normalization", "target_spacing",
            "resample_order_image", "resample_separate_z", "patch_size", "network", "inference", "dataset")
    return {k: plan[k] for k in keys if k in plan}


def write_bundle(source: str | Path | ExportSource, out: str | Path, checkpoint: str = "best") -> Path:
    """Write ``source`` (a run folder, a cross-validation folder, or a loaded :class:`ExportSource`) as a bundle
    at ``out`` (must end in ``.zip``), atomically (:func:`focusseg.io.atomic.atomic_path`). The manifest names the
    source folder only, and the plans' absolute paths are reduced to base names (:func:`portable`).

    Args:
        source: what to export.
        out: the ``.zip`` to write.
        checkpoint: best, final or latest (when ``source`` is a folder).

    Returns:
        ``out``.

    Raises:
        UsageError: ``out`` is not a ``.zip`` or is a folder; as :func:`load_source` otherwise.
    """
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
        files[f"{base}/plan.json"] = _json_bytes(portable(m["plan"]))
        files[f"{base}/weights.safetensors"] = save_safetensors(tensors, metadata={"focusseg_member": m["name"]})
        listed.append({"name": m["name"], "weight": m["weight"], "plan": f"{base}/plan.json",
                       "weights": f"{base}/weights.safetensors", "checkpoint": m["checkpoint"]})
    manifest = {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION, "focusseg_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"kind": src.kind, "path": src.path.resolve().name, "checkpoint": src.checkpoint},
        "members": listed, "postprocessing": POSTPROCESSING,
        "model": model_spec(portable(src.members[0]["plan"])),
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
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, ValueError) as exc:
        raise CheckpointError(f"member {info.filename} cannot be read ({one_line(exc)}): a damaged "
                              "or changed bundle", bundle) from exc
    if len(data) > limit or len(data) != info.file_size:
        raise CheckpointError(f"member {info.filename} holds {len(data)} bytes, its header says {info.file_size}",
                              bundle)
    return data


def _member_limit(name: str) -> int:
    return MAX_MEMBER_BYTES if name.endswith(".safetensors") else MAX_JSON_BYTES


def check_sizes(infos: list[zipfile.ZipInfo], bundle_bytes: int, bundle: Path) -> None:
    """Refuse a zip whose headers claim more than reading it may cost, before any member is read: more than
    :data:`MAX_TOTAL_BYTES` decompressed in all, a member over its own limit, a member whose compressed bytes
    cannot fit in the bundle's ``bundle_bytes`` (a stored member's claimed size is its size in the file; members
    sharing compressed bytes, the overlapping-entries bomb, claim more than the file in all), a
    compressed member that would inflate more than :data:`MAX_RATIO` times, or compressed members that together
    would inflate more than :data:`MAX_INFLATION_BYTES` beyond their compressed size (a zip bomb either way).
    ``zipfile`` never returns more than a member's claimed size, so these bound what reading allocates.

    Raises:
        CheckpointError: naming the bundle, the member and the claimed size.
    """
    total = sum(info.file_size for info in infos)
    if total > MAX_TOTAL_BYTES:
        raise CheckpointError(f"its members claim {total:,} bytes decompressed in all, over the "
                              f"{MAX_TOTAL_BYTES:,}-byte limit (a zip bomb or not a focusseg bundle): refused", bundle)
    for info in infos:
        name, size, packed = info.filename, info.file_size, info.compress_size
        limit = _member_limit(name)
        if size > limit:
            raise CheckpointError(f"member {name} claims {size:,} bytes, over the {limit:,}-byte limit", bundle)
        if packed > bundle_bytes:
            raise CheckpointError(f"member {name} claims {packed:,} compressed bytes, more than the bundle's "
                                  f"{bundle_bytes:,}: a damaged or forged zip", bundle)
        if info.compress_type == zipfile.ZIP_STORED and packed != size:
            raise CheckpointError(f"member {name} is stored uncompressed but claims {size:,} bytes in "
                                  f"{packed:,}: a forged zip header", bundle)
        if size > MAX_RATIO * max(packed, 1):
            raise CheckpointError(f"member {name} would inflate from {packed:,} to {size:,} bytes (more than "
                                  f"{MAX_RATIO}x): a zip bomb, refused", bundle)
    packed_total = sum(info.compress_size for info in infos)
    if packed_total > bundle_bytes:
        raise CheckpointError(f"its members claim {packed_total:,} compressed bytes in all, more than the bundle's "
                              f"{bundle_bytes:,} (overlapping members: a zip bomb), refused", bundle)
    inflation = sum(max(0, i.file_size - i.compress_size) for i in infos if i.compress_type != zipfile.ZIP_STORED)
    if inflation > MAX_INFLATION_BYTES:
        raise CheckpointError(f"its compressed members would inflate by {inflation:,} bytes beyond their size in "
                              f"the file (at most {MAX_INFLATION_BYTES:,}): a zip bomb, refused", bundle,
                              hint="focusseg export stores weights uncompressed: export the model again")


def _parse_json(data: bytes, member: str, bundle: Path) -> Any:
    """A JSON member, parsed within :mod:`focusseg.io.jsonfile`'s bounds, NaN/Infinity refused."""
    return loads_bounded(data, f"{bundle}:{member}", CheckpointError, allow_nan=False)


@dataclass
class Bundle:
    """A verified bundle: its manifest, members ``{name, plan, state_dict, weight}`` and post-processing."""

    path: Path
    manifest: dict[str, Any]
    members: list[dict[str, Any]]
    postprocessing: list[dict[str, Any]]


def _open_checked(zf: zipfile.ZipFile, bundle: Path) -> dict[str, zipfile.ZipInfo]:
    """The zip's members by name, after the entry count, name and size checks (nothing read yet)."""
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
    check_sizes(infos, bundle.stat().st_size, bundle)
    return by_name


def _check_manifest(manifest: Any, bundle: Path) -> tuple[dict[str, dict], list[dict]]:
    """The manifest's ``files`` and ``members``, checked for format, version and the member bound."""
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{MANIFEST} is not a {BUNDLE_FORMAT} manifest", bundle)
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > BUNDLE_FORMAT_VERSION or version < 1:
        raise CheckpointError(f"bundle format version {version!r} is not one this focusseg reads "
                              f"(1..{BUNDLE_FORMAT_VERSION}; made by focusseg "
                              f"{str(manifest.get('focusseg_version'))[:40]})", bundle, hint="upgrade focusseg")
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not all(isinstance(v, dict) for v in listed.values()):
        raise CheckpointError(f"{MANIFEST} lists no files", bundle)
    if len(listed) > MAX_ENTRIES:
        raise CheckpointError(f"{MANIFEST} lists {len(listed)} files, over the {MAX_ENTRIES} limit", bundle)
    entries = manifest.get("members")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise CheckpointError(f"{MANIFEST} lists no members", bundle)
    if len(entries) > MAX_MEMBERS:
        raise CheckpointError(f"{MANIFEST} lists {len(entries):,} members, over the {MAX_MEMBERS} limit (each is a "
                              "network run on every window): refused", bundle)
    return listed, entries


def read_bundle(path: str | Path) -> Bundle:
    """Open and verify a bundle (module docstring); nothing is extracted, nothing can execute code, and nothing is
    allocated beyond the bounds checked first.

    Raises:
        MissingFileError: no such file. CheckpointError: not a zip, truncated, an unsafe / unlisted / missing
            member, sizes over a bound or a zip bomb, too many members, a size or checksum mismatch, a newer format,
            an unreadable plan (NaN / Infinity included), weights or post-processing. PlanError: a member's plan
            outside the settings gate (:func:`focusseg.settings.parse_plan_settings`), before its weights load.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    bundle = Path(path)
    if not bundle.is_file():
        raise MissingFileError("no such model bundle", bundle, hint="export one: focusseg export RUN --out model.zip")
    try:
        zf = zipfile.ZipFile(bundle)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"not a readable zip bundle ({one_line(exc)}): truncated or not a "
                              "focusseg export", bundle) from exc
    with zf:
        by_name = _open_checked(zf, bundle)
        if MANIFEST not in by_name:
            raise CheckpointError(f"no {MANIFEST}: not a focusseg model bundle", bundle)
        manifest = _parse_json(_read_member(zf, by_name[MANIFEST], MAX_JSON_BYTES, bundle), MANIFEST, bundle)
        listed, entries = _check_manifest(manifest, bundle)
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
            data = _read_member(zf, by_name[name], _member_limit(name), bundle)
            if len(data) != entry.get("size") or _sha256(data) != entry.get("sha256"):
                raise CheckpointError(f"member {name}: SHA-256 / size do not match {MANIFEST} (changed after "
                                      "export)", bundle)
            contents[name] = data

    def member_file(name: object, what: str) -> bytes:
        if not isinstance(name, str) or name not in contents:
            raise CheckpointError(f"{MANIFEST}: {what} {str(name)[:200]!r} is not a listed member", bundle)
        return contents[name]

    post_name = manifest.get("postprocessing", POSTPROCESSING)
    post = _parse_json(member_file(post_name, "postprocessing"), post_name, bundle)
    steps = post.get("steps") if isinstance(post, dict) else None
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise CheckpointError(f"member {post_name} holds no list of 'steps'", bundle)
    check_steps(steps, bundle, post_name)
    plans = []
    for e in entries:  # every plan through the settings gate before any weights are loaded
        weight = e.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise CheckpointError(f"{MANIFEST}: member {str(e.get('name'))[:80]!r} has weight {weight!r} "
                                  "(need > 0)", bundle)
        plan_name = str(e.get("plan"))
        plan = _parse_json(member_file(e.get("plan"), "plan"), plan_name, bundle)
        if not isinstance(plan, dict):
            raise CheckpointError(f"member {plan_name} holds no plan (a {type(plan).__name__})", bundle)
        parse_plan_settings(plan, f"{bundle}:{plan_name}")
        plans.append(plan)
    members = []
    for e, plan in zip(entries, plans):
        try:
            state = load_safetensors(member_file(e.get("weights"), "weights"))
        except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
            raise CheckpointError(f"member {e.get('weights')} is not readable safetensors "
                                  f"({one_line(exc)[:200]})", bundle) from exc
        plan, state = checkpoint_parts({"plan": plan, "network": state}, f"{bundle}:{e.get('plan')}")
        members.append({"name": str(e.get("name")), "plan": plan, "state_dict": state,
                        "weight": float(e.get("weight", 1.0)), "source": f"{bundle}:{e.get('weights')}"})
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


__all__ = ["BUNDLE_FORMAT", "BUNDLE_FORMAT_VERSION", "Bundle", "ExportSource", "MAX_ENTRIES", "MAX_INFLATION_BYTES",
           "MAX_JSON_BYTES", "MAX_MEMBERS", "MAX_MEMBER_BYTES", "MAX_RATIO", "MAX_TOTAL_BYTES", "check_sizes",
           "load_bundle", "load_source", "model_spec", "portable", "read_bundle", "write_bundle"]
