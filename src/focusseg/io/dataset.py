"""Dataset discovery: nnU-Net v2 raw layout and Medical Segmentation Decathlon (MSD) layout.

nnU-Net v2: ``dataset.json`` with ``channel_names``, ``labels`` (name -> int), ``file_ending``;
``imagesTr/<case>_<CCCC><ending>`` one file per channel, ``labelsTr/<case><ending>``. MSD: ``dataset.json`` with
``modality`` and ``training: [{"image": ..., "label": ...}]``, 4D images whose 4th axis holds the channels. Both
give a list of :class:`CaseFiles`. ``dataset.json`` is validated field by field (a
:class:`~focusseg.errors.DatasetError` naming the file and the field); case ids and the file ending are checked
before they are joined to a path (:mod:`focusseg.io.paths`), and MSD image paths must stay inside the folder.

Also read: nnU-Net v2's ignore label (a label named ``ignore`` with the highest value: no class, never predicted,
left out of losses and metrics) and region-based labels (list-valued labels plus ``regions_class_order``,
:mod:`focusseg.regions`). Their rules: ``docs/data.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from focusseg.errors import DatasetError, MissingFileError
from focusseg.io.atomic import is_temp_name
from focusseg.io.jsonfile import read_json
from focusseg.io.paths import is_inside, validate_case_id, validate_file_ending

#: Labels are stored as int16 in the preprocessed store: larger values cannot be trained.
MAX_LABEL_VALUE = 32767
#: The name of the ignore label in ``dataset.json`` (compared case-insensitively), as nnU-Net v2.
IGNORE_NAME = "ignore"


def is_ignore_name(name: object) -> bool:
    """Whether a label name declares the ignore label (``ignore``, any case, surrounding spaces ignored)."""
    return isinstance(name, str) and name.strip().lower() == IGNORE_NAME


def ignore_label_of(labels: dict[str, int]) -> int | None:
    """The value of the label named ``ignore`` in a name -> value mapping, or None when there is none."""
    found = [int(v) for k, v in labels.items() if is_ignore_name(k)]
    return found[0] if found else None


def split_ignore_label(labels: dict[str, int]) -> tuple[dict[str, int], int | None]:
    """``(class labels, ignore value or None)``: the mapping without the ignore label, and its value."""
    classes = {str(k): int(v) for k, v in labels.items() if not is_ignore_name(k)}
    return classes, ignore_label_of(labels)


@dataclass(frozen=True)
class DatasetSpec:
    """What ``dataset.json`` declares."""

    name: str
    channel_names: dict[int, str]
    labels: dict[str, int]
    file_ending: str = ".nii.gz"
    layout: str = "nnunetv2"  # or "msd"
    raw: dict = field(default_factory=dict, compare=False, repr=False)
    #: Region-based labels (module docstring): region name -> label values, in dataset.json order; None: none.
    regions: dict[str, tuple[int, ...]] | None = None
    #: The label value each region paints, in region order (required with regions).
    regions_class_order: tuple[int, ...] | None = None

    @property
    def region_list(self) -> list[list[int]] | None:
        """The regions as a list of lists of label values (the plan's ``regions``), or None."""
        return None if not self.regions else [list(v) for v in self.regions.values()]

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_values(self) -> list[int]:
        """Every declared value a label file may hold, the ignore label's included."""
        return sorted(set(self.labels.values()))

    @property
    def ignore_label(self) -> int | None:
        """The value of the label named ``ignore`` (module docstring), or None."""
        return ignore_label_of(self.labels)

    @property
    def class_labels(self) -> dict[str, int]:
        """The labels that are classes: name -> value without the ignore label."""
        return split_ignore_label(self.labels)[0]

    @property
    def class_values(self) -> list[int]:
        """The class values (the label values without the ignore label)."""
        return sorted(set(self.class_labels.values()))

    @property
    def n_classes(self) -> int:
        """Number of output classes: max class value + 1 (values need not be consecutive, e.g. TotalSegmentator;
        the ignore label has no output channel)."""
        return max(self.class_values) + 1

    @property
    def labels_contiguous(self) -> bool:
        """Whether the class values are exactly ``0..n_classes-1`` (every class index is a declared label)."""
        return self.class_values == list(range(self.n_classes))

    @property
    def foreground_labels(self) -> list[int]:
        """The class values other than background (never the ignore label)."""
        return [v for v in self.class_values if v != 0]

    def is_ct(self, channel: int) -> bool:
        return self.channel_names[channel].strip().upper() == "CT"


@dataclass(frozen=True)
class CaseFiles:
    """One case: its id, one image path per channel (MSD: one 4D file), and its label path (or None)."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


def load_dataset_spec(data_dir: str | Path) -> DatasetSpec:
    """Read and validate ``data_dir/dataset.json``.

    Args:
        data_dir: a dataset folder in the nnU-Net v2 or MSD layout.

    Returns:
        The dataset's :class:`DatasetSpec` (layout, channels, labels, file ending, ignore label, regions).

    Raises:
        MissingFileError: when the folder or its ``dataset.json`` does not exist.
        DatasetError: naming ``dataset.json`` and the field for anything malformed: not JSON, not an object,
            missing or mistyped ``channel_names`` / ``modality``, ``labels``, ``file_ending``, ``numTraining``;
            malformed region-based labels or ``regions_class_order`` (``docs/data.md``; MSD datasets have no
            regions); an ignore label that is not the highest label value (or declared twice).
    """
    data_dir = Path(data_dir)
    path = data_dir / "dataset.json"
    if not path.is_file():
        if not data_dir.exists():
            raise MissingFileError("dataset folder not found", data_dir)
        raise MissingFileError("no dataset.json (focusseg reads nnU-Net v2 or MSD dataset folders)", path)
    try:
        raw = read_json(path, DatasetError, allow_nan=False)  # bounded: size, nesting, digits; no NaN
    except DatasetError as exc:
        if exc.problem.startswith("not UTF-8"):
            raise DatasetError(f"not valid JSON ({exc.problem})", path) from None
        raise
    if not isinstance(raw, dict):
        raise DatasetError(f"must hold a JSON object, not {_json_type(raw)}", path)
    if "channel_names" in raw:
        channels = _channels(path, "channel_names", raw["channel_names"])
        labels, regions, order = _region_labels(path, raw.get("labels"), raw.get("regions_class_order"))
        layout = "nnunetv2"
        if "file_ending" not in raw:
            raise DatasetError("field 'file_ending' is missing", path, hint='add e.g. "file_ending": ".nii.gz"')
        file_ending = validate_file_ending(raw["file_ending"], path)
    elif "modality" in raw:
        channels = _channels(path, "modality", raw["modality"])
        labels = _msd_labels(path, raw.get("labels"))
        regions, order = None, None
        if "regions_class_order" in raw:
            raise DatasetError("field 'regions_class_order': region-based labels need the nnU-Net v2 layout "
                               "(channel_names), not MSD", path)
        layout = "msd"
        file_ending = validate_file_ending(raw.get("file_ending", ".nii.gz"), path)
        for key in ("training", "test"):
            if key in raw and not isinstance(raw[key], list):
                raise DatasetError(f"field {key!r} must be a list, not {_json_type(raw[key])}", path)
    else:
        raise DatasetError("needs 'channel_names' (nnU-Net v2) or 'modality' (MSD)", path)
    if "numTraining" in raw and (not isinstance(raw["numTraining"], int) or isinstance(raw["numTraining"], bool)
                                 or raw["numTraining"] < 0):
        raise DatasetError(f"field 'numTraining' must be a non-negative integer, not {raw['numTraining']!r}", path)
    _check_ignore_label(path, labels)
    if 0 not in labels.values():
        raise DatasetError("field 'labels' must declare background as 0", path)
    name = raw.get("name", data_dir.name)
    return DatasetSpec(
        name=str(name) if isinstance(name, (str, int, float)) else data_dir.name,
        channel_names=dict(sorted(channels.items())),
        labels=labels,
        file_ending=file_ending,
        layout=layout,
        raw=raw,
        regions=regions,
        regions_class_order=order,
    )


def _json_type(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _channels(path: Path, key: str, value: object) -> dict[int, str]:
    if not isinstance(value, dict) or not value:
        raise DatasetError(f"field {key!r} must be a non-empty object such as {{\"0\": \"CT\"}}, "
                           f"not {_json_type(value)}", path)
    out: dict[int, str] = {}
    for k, v in value.items():
        if not (isinstance(k, str) and k.strip().isdigit()):
            raise DatasetError(f"field {key!r}: key {k!r} is not a channel number", path)
        if not isinstance(v, str):
            raise DatasetError(f"field {key!r}: channel {k} must be named by a string, not {_json_type(v)}", path)
        out[int(k)] = v
    if sorted(out) != list(range(len(out))):
        raise DatasetError(f"field {key!r}: channels must be numbered 0..{len(out) - 1}, got {sorted(out)}", path)
    return out


def _label_value(path: Path, name: str, value: object, region: bool = False) -> int:
    if isinstance(value, (list, tuple)):
        raise DatasetError(f"field 'labels': region-based label {name!r} = {value} is not supported here "
                           "(regions need the nnU-Net v2 layout, with regions_class_order)", path)
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
        what = f"region {name!r} must list integer label values" if region else \
            f"label {name!r} must have an integer value"
        raise DatasetError(f"field 'labels': {what}, not {value!r}", path)
    v = int(value)
    if not 0 <= v <= MAX_LABEL_VALUE:
        raise DatasetError(f"field 'labels': label {name!r} = {v} is outside 0..{MAX_LABEL_VALUE} "
                           "(labels are stored as int16)", path)
    return v


def _check_unique(path: Path, labels: dict[str, int]) -> dict[str, int]:
    seen: dict[int, str] = {}
    for name, v in labels.items():
        if v in seen:
            raise DatasetError(f"field 'labels': {seen[v]!r} and {name!r} both have value {v}", path)
        seen[v] = name
    return labels


def _check_ignore_label(path: Path, labels: dict[str, int]) -> None:
    """At most one label named ``ignore`` (any case), and its value above every other label value."""
    names = [k for k in labels if is_ignore_name(k)]
    if len(names) > 1:
        raise DatasetError(f"field 'labels': {len(names)} ignore labels ({', '.join(map(repr, names))}); declare "
                           "one", path)
    if not names:
        return
    value = labels[names[0]]
    others = {k: v for k, v in labels.items() if k != names[0]}
    if not others:
        raise DatasetError(f"field 'labels': only the ignore label {names[0]!r} is declared; declare background "
                           "as 0 and the classes", path)
    top_name, top = max(others.items(), key=lambda kv: kv[1])
    if value <= top:
        raise DatasetError(f"field 'labels': the ignore label {names[0]!r} = {value} must be the highest label "
                           f"value (nnU-Net's rule), but {top_name!r} = {top}; give it e.g. {top + 1}", path)


def _region_labels(path: Path, value: object, order: object
                   ) -> tuple[dict[str, int], dict[str, tuple[int, ...]] | None, tuple[int, ...] | None]:
    """nnU-Net v2 ``labels`` (+ ``regions_class_order``) -> ``(label values, regions or None, order or None)``;
    plain integer labels go through :func:`_nnunet_labels` unchanged (module docstring for the region rules)."""
    if not (isinstance(value, dict) and any(isinstance(v, (list, tuple)) for v in value.values())):
        if order is not None:
            raise DatasetError("field 'regions_class_order' is given but no label is a region (a list of label "
                               "values such as \"whole_tumor\": [1, 2, 3])", path)
        return _nnunet_labels(path, value), None, None
    regions: dict[str, tuple[int, ...]] = {}
    background = []
    for name, v in value.items():
        name = str(name)
        if is_ignore_name(name):
            raise DatasetError(f"field 'labels': the ignore label {name!r} cannot be combined with region-based "
                               "labels in focusseg", path, hint="drop the ignore label or the regions")
        items = list(v) if isinstance(v, (list, tuple)) else [v]
        if not items:
            raise DatasetError(f"field 'labels': region {name!r} is an empty list", path)
        values = tuple(_label_value(path, name, x, region=True) for x in items)
        if not isinstance(v, (list, tuple)) and values == (0,):
            background.append(name)
            continue
        if 0 in values:
            raise DatasetError(f"field 'labels': region {name!r} = {list(values)} contains the background value "
                               "0 (regions are foreground)", path)
        if len(set(values)) != len(values):
            raise DatasetError(f"field 'labels': region {name!r} = {list(values)} lists a value twice", path)
        for other, ov in regions.items():
            if set(ov) == set(values):
                raise DatasetError(f"field 'labels': regions {other!r} and {name!r} hold the same values "
                                   f"{sorted(values)}", path)
        regions[name] = values
    if len(background) != 1:
        raise DatasetError("field 'labels' must declare background as 0 (once) beside the regions", path)
    if not regions:
        raise DatasetError("field 'labels' declares no region besides the background", path)
    if order is None:
        raise DatasetError(f"field 'regions_class_order' is missing: region-based labels need one label value per "
                           f"region ({len(regions)}: {', '.join(regions)})", path,
                           hint="e.g. \"regions_class_order\": [1, 2, 3] (the value each region paints)")
    if not isinstance(order, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in order):
        raise DatasetError(f"field 'regions_class_order' must be a list of integers, not {order!r}", path)
    if len(order) != len(regions):
        raise DatasetError(f"field 'regions_class_order' has {len(order)} value(s) for {len(regions)} region(s) "
                           f"({', '.join(regions)})", path)
    every = sorted({x for vs in regions.values() for x in vs})
    for x in order:
        if x not in every:
            raise DatasetError(f"field 'regions_class_order': value {x} is in no region (region values: {every})",
                               path)
    labels = {background[0]: 0, **{f"label_{x}": x for x in every}}
    return labels, regions, tuple(int(x) for x in order)


def _nnunet_labels(path: Path, value: object) -> dict[str, int]:
    if not isinstance(value, dict) or not value:
        raise DatasetError(f"field 'labels' must be a non-empty object of name -> integer value, "
                           f"not {_json_type(value)}", path)
    return _check_unique(path, {str(k): _label_value(path, str(k), v) for k, v in value.items()})


def _msd_labels(path: Path, value: object) -> dict[str, int]:
    if not isinstance(value, dict) or not value:
        raise DatasetError(f"field 'labels' must be a non-empty object of value -> name, not {_json_type(value)}",
                           path)
    out = {}
    for k, v in value.items():
        if not isinstance(v, str):
            raise DatasetError(f"field 'labels': label {k!r} must be named by a string, not {_json_type(v)}", path)
        out[v] = _label_value(path, v, k)
    return _check_unique(path, out)


_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def discover_images(folder: str | Path, file_ending: str = ".nii.gz") -> dict[str, dict[int, Path]]:
    """``<case>_<CCCC><ending>`` files in a folder -> {case: {channel: path}}, sorted by case id.

    Dot files and temporaries (:func:`~focusseg.io.atomic.is_temp_name`) are skipped; focusseg's side outputs
    (``<case>_uncertainty<ending>``, ``<case><ending>`` predictions) have no ``_CCCC`` suffix and never match.
    A case id that cannot safely name a file raises :class:`DatasetError` naming the file.
    """
    folder = Path(folder)
    file_ending = validate_file_ending(file_ending, folder)
    if not folder.is_dir():
        raise MissingFileError("folder not found", folder)
    found: dict[str, dict[int, Path]] = {}
    for p in sorted(folder.iterdir()):
        if not p.name.endswith(file_ending) or is_temp_name(p.name) or p.is_dir():
            continue
        m = _CHANNEL_RE.match(p.name[: -len(file_ending)])
        if m:
            found.setdefault(validate_case_id(m["case"], p), {})[int(m["ch"])] = p
    return dict(sorted(found.items()))


def channel_of(path: Path, case_id: str, file_ending: str) -> int | None:
    """The channel number of ``<case>_<CCCC><ending>``, or None when the name has another form."""
    stem = path.name[: -len(file_ending)] if path.name.endswith(file_ending) else path.name
    m = _CHANNEL_RE.match(stem)
    return int(m["ch"]) if m and m["case"] == case_id else None


def discover_cases(data_dir: str | Path, spec: DatasetSpec | None = None, split: str = "Tr") -> list[CaseFiles]:
    """All cases of ``imagesTr``/``labelsTr`` (or ``imagesTs``/``labelsTs`` with ``split="Ts"``).

    Missing channels are not an error here (``focusseg check`` reports them); such a case lists the channels
    it has, so that callers can see the gap.

    Args:
        data_dir: the dataset folder.
        spec: its :class:`DatasetSpec`; read from ``dataset.json`` when None.
        split: ``"Tr"`` or ``"Ts"``.

    Returns:
        One :class:`CaseFiles` per case (label None where the case has no label file).

    Raises:
        MissingFileError: when the images folder does not exist.
    """
    data_dir = Path(data_dir)
    spec = spec or load_dataset_spec(data_dir)
    if spec.layout == "msd":
        return _discover_msd(data_dir, spec, split)
    image_dir, label_dir = data_dir / f"images{split}", data_dir / f"labels{split}"
    if not image_dir.is_dir():
        raise MissingFileError("folder not found", image_dir)
    cases = []
    for case_id, chans in discover_images(image_dir, spec.file_ending).items():
        label = label_dir / f"{case_id}{spec.file_ending}"
        cases.append(CaseFiles(case_id, tuple(chans[c] for c in sorted(chans)), label if label.is_file() else None))
    return cases


def case_sources(case: CaseFiles, root: str | Path) -> list[list]:
    """The signature of a case's source files: ``[name, size, mtime_ns]`` per image and label file, ``name``
    relative to ``root`` (the dataset folder). Caches built from a case record it; any edit changes it."""
    root = Path(root)
    out = []
    for p in (*case.images, *((case.label,) if case.label is not None else ())):
        try:
            st = Path(p).stat()
        except FileNotFoundError:
            raise MissingFileError("file not found", p) from None
        except OSError as exc:
            raise DatasetError(f"cannot be read ({exc.strerror or exc})", p) from exc
        try:
            name = Path(p).relative_to(root).as_posix()
        except ValueError:
            name = str(p)
        out.append([name, int(st.st_size), int(st.st_mtime_ns)])
    return out


def _msd_path(data_dir: Path, source: Path, key: str, i: int, value: object) -> Path:
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{key} entry {i}: path must be a non-empty string, not {value!r}", source)
    rel = Path(value)
    if rel.is_absolute() or "\x00" in value:
        raise DatasetError(f"{key} entry {i}: path {value!r} must be relative to the dataset folder", source)
    path = data_dir / rel
    if ".." in rel.parts or not is_inside(path, data_dir):
        raise DatasetError(f"{key} entry {i}: path {value!r} leaves the dataset folder", source)
    return path


def _discover_msd(data_dir: Path, spec: DatasetSpec, split: str) -> list[CaseFiles]:
    source = data_dir / "dataset.json"
    key = "training" if split == "Tr" else "test"
    entries = spec.raw.get(key, [])
    if not isinstance(entries, list):
        raise DatasetError(f"field {key!r} must be a list", source)
    cases, seen = [], set()
    for i, e in enumerate(entries):
        if isinstance(e, dict):
            if "image" not in e:
                raise DatasetError(f"{key} entry {i} has no 'image'", source)
            img = _msd_path(data_dir, source, key, i, e["image"])
            lab = _msd_path(data_dir, source, key, i, e["label"]) if e.get("label") is not None else None
        elif isinstance(e, str):
            img, lab = _msd_path(data_dir, source, key, i, e), None
        else:
            raise DatasetError(f"{key} entry {i} must be an object with 'image'/'label' or a path string", source)
        case_id = img.name[: -len(spec.file_ending)] if img.name.endswith(spec.file_ending) else img.stem
        validate_case_id(case_id, img)
        if case_id in seen:
            raise DatasetError(f"{key} entry {i}: case {case_id!r} is listed twice", source)
        seen.add(case_id)
        cases.append(CaseFiles(case_id, (img,), lab if lab is not None and lab.is_file() else None))
    return cases
