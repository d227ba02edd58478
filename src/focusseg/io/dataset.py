"""Dataset discovery: nnU-Net v2 raw layout and Medical Segmentation Decathlon (MSD) layout.

nnU-Net v2: ``dataset.json`` with ``channel_names``, ``labels`` (name -> int), ``file_ending``;
``imagesTr/<case>_<CCCC><ending>`` one file per channel, ``labelsTr/<case><ending>``.
MSD: ``dataset.json`` with ``modality`` and ``training: [{"image": ..., "label": ...}]``; 4D images whose
4th axis holds the channels. Both give a list of :class:`CaseFiles`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class DatasetSpec:
    """What ``dataset.json`` declares."""

    name: str
    channel_names: dict[int, str]
    labels: dict[str, int]
    file_ending: str = ".nii.gz"
    layout: str = "nnunetv2"  # or "msd"
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_values(self) -> list[int]:
        return sorted(set(self.labels.values()))

    @property
    def n_classes(self) -> int:
        """Number of output classes: max label value + 1 (values need not be consecutive, e.g. TotalSegmentator)."""
        return max(self.label_values) + 1

    @property
    def foreground_labels(self) -> list[int]:
        return [v for v in self.label_values if v != 0]

    def is_ct(self, channel: int) -> bool:
        return self.channel_names[channel].strip().upper() == "CT"


@dataclass(frozen=True)
class CaseFiles:
    """One case: its id, one image path per channel (MSD: one 4D file), and its label path (or None)."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


def load_dataset_spec(data_dir: str | Path) -> DatasetSpec:
    data_dir = Path(data_dir)
    path = data_dir / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no dataset.json (focusseg reads nnU-Net v2 or MSD dataset folders)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if "channel_names" in raw:
        channels = {int(k): str(v) for k, v in raw["channel_names"].items()}
        labels = {str(k): _label_value(path, k, v) for k, v in raw["labels"].items()}
        layout = "nnunetv2"
    elif "modality" in raw:
        channels = {int(k): str(v) for k, v in raw["modality"].items()}
        labels = {str(v): int(k) for k, v in raw["labels"].items()}  # MSD: "0": "background"
        layout = "msd"
    else:
        raise ValueError(f"{path}: needs 'channel_names' (nnU-Net v2) or 'modality' (MSD)")
    if 0 not in labels.values():
        raise ValueError(f"{path}: labels must declare background as 0")
    return DatasetSpec(
        name=str(raw.get("name", data_dir.name)),
        channel_names=dict(sorted(channels.items())),
        labels=labels,
        file_ending=str(raw.get("file_ending", ".nii.gz")),
        layout=layout,
        raw=raw,
    )


def _label_value(path: Path, name: str, value: object) -> int:
    if isinstance(value, (list, tuple)):
        raise ValueError(f"{path}: region-based label {name!r} = {value} is not supported yet")
    return int(value)  # type: ignore[arg-type]


_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def discover_images(folder: str | Path, file_ending: str = ".nii.gz") -> dict[str, dict[int, Path]]:
    """``<case>_<CCCC><ending>`` files in a folder -> {case: {channel: path}}, sorted by case id."""
    found: dict[str, dict[int, Path]] = {}
    for p in sorted(Path(folder).iterdir()):
        if not p.name.endswith(file_ending) or p.name.startswith("."):
            continue
        m = _CHANNEL_RE.match(p.name[: -len(file_ending)])
        if m:
            found.setdefault(m["case"], {})[int(m["ch"])] = p
    return dict(sorted(found.items()))


def discover_cases(data_dir: str | Path, spec: DatasetSpec | None = None, split: str = "Tr") -> list[CaseFiles]:
    """All cases of ``imagesTr``/``labelsTr`` (or ``imagesTs``/``labelsTs`` with ``split="Ts"``).

    Missing channels are not an error here (``focusseg check`` reports them); such a case lists the channels
    it has, so that callers can see the gap.
    """
    data_dir = Path(data_dir)
    spec = spec or load_dataset_spec(data_dir)
    if spec.layout == "msd":
        return _discover_msd(data_dir, spec, split)
    image_dir, label_dir = data_dir / f"images{split}", data_dir / f"labels{split}"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: folder not found")
    cases = []
    for case_id, chans in discover_images(image_dir, spec.file_ending).items():
        label = label_dir / f"{case_id}{spec.file_ending}"
        cases.append(CaseFiles(case_id, tuple(chans[c] for c in sorted(chans)), label if label.exists() else None))
    return cases


def _discover_msd(data_dir: Path, spec: DatasetSpec, split: str) -> list[CaseFiles]:
    entries = spec.raw.get("training" if split == "Tr" else "test", [])
    cases = []
    for e in entries:
        img = data_dir / (e["image"] if isinstance(e, dict) else e)
        lab = data_dir / e["label"] if isinstance(e, dict) and "label" in e else None
        case_id = img.name[: -len(spec.file_ending)] if img.name.endswith(spec.file_ending) else img.stem
        cases.append(CaseFiles(case_id, (img,), lab if lab is not None and lab.exists() else None))
    return cases
