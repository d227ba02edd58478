"""nnU-Net v2 model folders (``nnUNetTrainer__nnUNetPlans__3d_fullres/``) read and checked before anything is built.

A model folder holds ``dataset.json``, ``plans.json`` and one ``fold_K/`` (``fold_all/``) per trained fold with
``checkpoint_final.pth`` (and ``checkpoint_best.pth``). Both JSON files are read bounded (no NaN, no Infinity) and
every field inference uses is checked for type, range and finiteness against focusseg's cost bounds before a
network is sized from it (:func:`read_model_folder`): the configuration's patch size, spacing, normalisation
schemes, architecture; the plans' axis transposition and per-channel intensity statistics; dataset.json's channels,
labels and regions. Only the two nnU-Net network classes of dynamic-network-architectures are accepted
(:data:`NETWORK_CLASSES`), and the names nnU-Net would import (``_kw_requires_import``) are looked up in a fixed
table of torch layers (:data:`IMPORTABLE`), never imported. A cascade stage (its input includes the previous
stage's segmentation) is refused.

``postprocessing.pkl`` is never unpickled by Python's full unpickler: :func:`read_postprocessing` reads
``postprocessing.json`` where present, else the pickle through an unpickler that knows one global -- nnU-Net's
"keep the largest component" function, turned into its name -- and refuses any other.
"""

from __future__ import annotations

import io
import math
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from focusseg.errors import MissingFileError, PlanError, UsageError
from focusseg.io.jsonfile import read_bytes_bounded, read_json
from focusseg.nets.nnunet_dna import (
    ARCH_KWARGS,
    IMPORTABLE,
    MAX_BLOCKS_PER_STAGE,
    MAX_KERNEL,
    MAX_STRIDE,
    NETWORK_CLASSES,
    check_architecture,
)
from focusseg.settings.checks import (
    MAX_BATCH,
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_PATCH_AXIS,
    MAX_PATCH_VOXELS,
    check_bool,
    check_float,
    check_int,
    check_mapping,
    fail,
    freeze,
)

#: nnU-Net's normalisation schemes (the class names a plans file gives).
NORMALIZATION_SCHEMES = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization",
                         "RGBTo01Normalization")
#: The intensity statistics nnU-Net records per input channel.
INTENSITY_KEYS = ("max", "mean", "median", "min", "percentile_00_5", "percentile_99_5", "std")
#: The checkpoint files a fold folder may hold.
CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
#: Post-processing functions nnU-Net writes (``postprocessing.json`` names them; the pickle references them).
POSTPROCESSING_FUNCTIONS = ("remove_all_but_largest_component_from_segmentation",)
_PP_MODULE = "nnunetv2.postprocessing.remove_connected_components"
#: Largest post-processing file read.
MAX_POSTPROCESSING_BYTES = 1 << 20
#: Highest label value (nnU-Net writes uint8 / uint16 label maps).
MAX_LABEL = 65535
#: Deepest chain of ``inherits_from`` configurations.
MAX_INHERITANCE = 8
#: Largest plans.json / dataset.json read.
MAX_JSON_BYTES = 16 << 20
_FOLDER = re.compile(r"(?P<trainer>[A-Za-z0-9_\-]+?)__(?P<plans>[A-Za-z0-9_\-]+?)__(?P<configuration>[A-Za-z0-9_\-.]+)")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")
_FOLD = re.compile(r"fold_(all|[0-9]{1,3})")


@dataclass(frozen=True)
class NnunetDataset:
    """What dataset.json says about a model's inputs and outputs.

    Attributes:
        channel_names: one name per input channel, in channel order.
        labels: label name -> value, or -> the tuple of values a region unites (region-based training).
        regions_class_order: for regions, the label value each output channel is painted with, in order.
        ignore_label: the value of the ``ignore`` label, or None.
        file_ending: the images' file ending (``.nii.gz``).
        has_regions: whether the outputs are (sigmoid) regions rather than (softmax) classes.
        num_heads: the network's output channels (regions without background, or classes with it).
    """

    channel_names: tuple[str, ...]
    labels: Mapping[str, int | tuple[int, ...]]
    regions_class_order: tuple[int, ...] | None
    ignore_label: int | None
    file_ending: str
    has_regions: bool
    num_heads: int


@dataclass(frozen=True)
class NnunetConfiguration:
    """One checked plans configuration (``3d_fullres``...), inheritance resolved.

    Attributes:
        name: the configuration's name.
        data_identifier: nnU-Net's name for its preprocessed data.
        patch_size: the network's input window, in voxels per axis (2 or 3 axes).
        spacing: the spacing images are resampled to, per axis.
        normalization_schemes: one scheme per channel (:data:`NORMALIZATION_SCHEMES`).
        use_mask_for_norm: per channel, whether normalisation uses the non-zero mask only.
        batch_size: the training batch size.
        network_class: ``PlainConvUNet`` or ``ResidualEncoderUNet``.
        arch_kwargs: the class's keyword arguments, checked; per-stage values as tuples, importable ones as the
            short class name (``Conv3d``, ``LeakyReLU``).
        resampling: ``resampling_fn_*`` and ``*_kwargs`` as the plans give them (checked where present).
    """

    name: str
    data_identifier: str
    patch_size: tuple[int, ...]
    spacing: tuple[float, ...]
    normalization_schemes: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    batch_size: int
    network_class: str
    arch_kwargs: Mapping[str, Any]
    resampling: Mapping[str, Any]

    @property
    def dim(self) -> int:
        """2 or 3: the number of spatial axes the network works on."""
        return len(self.patch_size)


@dataclass(frozen=True)
class NnunetModelFolder:
    """A checked nnU-Net v2 model folder.

    Attributes:
        path: the folder.
        trainer: the trainer named by the folder (``nnUNetTrainer``), or None when the name has another form.
        plans_name: the plans identifier (``nnUNetPlans``).
        dataset: dataset.json, checked.
        configuration: the plans configuration used, checked.
        transpose_forward: the axis order nnU-Net moves images to before preprocessing.
        transpose_backward: its inverse.
        intensity_properties: per channel (``"0"``...), the foreground intensity statistics.
        checkpoints: fold (``0``... or ``"all"``) -> the checkpoint file to load.
        image_reader_writer: the plans' ``image_reader_writer`` (``SimpleITKIO``...), or None when absent.
        plans_file: the plans file read (None: ``path / "plans.json"``).
    """

    path: Path
    trainer: str | None
    plans_name: str | None
    dataset: NnunetDataset
    configuration: NnunetConfiguration
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    intensity_properties: Mapping[str, Mapping[str, float]]
    checkpoints: Mapping[int | str, Path]
    image_reader_writer: str | None = None
    plans_file: Path | None = None

    @property
    def plans_path(self) -> Path:
        """The plans file the configuration came from (named in errors)."""
        return self.plans_file if self.plans_file is not None else self.path / "plans.json"


# ----------------------------------------------------------------------------------------------- small checks

def _name(v: Any, path: str, src: Path) -> str:
    if not isinstance(v, str) or not _NAME.fullmatch(v):
        fail(src, path, v, "must be a name (letters, digits, '_', '-', '.'; at most 200 characters)")
    return v


def _list(v: Any, path: str, src: Path, length: int | None = None, lo: int = 0, hi: int = 10_000) -> list[Any]:
    if not isinstance(v, list) or not (lo <= len(v) <= hi) or (length is not None and len(v) != length):
        want = f"{length} entries" if length is not None else f"between {lo} and {hi} entries"
        fail(src, path, v, f"must be a list of {want}")
    return v


# ----------------------------------------------------------------------------------------------- configuration

def resolve_configuration(configurations: Mapping[str, Any], name: str, src: Path) -> dict[str, Any]:
    """The configuration ``name`` with its ``inherits_from`` chain merged in (a child's keys win), as nnU-Net's
    plans handler does.

    Raises:
        PlanError: unknown name, a cycle, a chain deeper than :data:`MAX_INHERITANCE`, or a non-object.
    """
    chain: list[str] = []
    current: str | None = name
    while current is not None:
        if current not in configurations:
            known = ", ".join(sorted(map(str, configurations))[:12])
            raise PlanError(f"configurations has no {current!r} (it has: {known})", src)
        if current in chain or len(chain) >= MAX_INHERITANCE:
            fail(src, f"configurations.{current}.inherits_from", chain, "forms a cycle or a chain deeper than "
                                                                         f"{MAX_INHERITANCE}")
        chain.append(current)
        entry = check_mapping(configurations[current], f"configurations.{current}", src)
        parent = entry.get("inherits_from")
        current = None if parent is None else _name(parent, f"configurations.{current}.inherits_from", src)
    merged: dict[str, Any] = {}
    for part in reversed(chain):
        merged.update({k: v for k, v in configurations[part].items() if k != "inherits_from"})
    return merged


def _resampling(cfg: Mapping[str, Any], where: str, src: Path) -> Mapping[str, Any]:
    out: dict[str, Any] = {}
    for what in ("data", "seg", "probabilities"):
        fn, kwargs = f"resampling_fn_{what}", f"resampling_fn_{what}_kwargs"
        if fn in cfg:
            out[fn] = _name(cfg[fn], f"{where}.{fn}", src)
        if cfg.get(kwargs) is not None:
            section = check_mapping(cfg[kwargs], f"{where}.{kwargs}", src)
            checked: dict[str, Any] = {}
            for k, v in section.items():
                path = f"{where}.{kwargs}.{k}"
                if k in ("is_seg", "memefficient_seg_resampling"):
                    checked[k] = check_bool(v, path, src)
                elif k in ("order", "order_z"):
                    checked[k] = check_int(v, path, src, 0, 5)
                elif k == "force_separate_z":
                    checked[k] = None if v is None else check_bool(v, path, src)
                elif k == "separate_z_anisotropy_threshold":
                    checked[k] = check_float(v, path, src, 1.0, 1000.0)
                else:
                    fail(src, path, v, "is not a resampling argument focusseg knows")
            out[kwargs] = checked
    return freeze(out)


def check_configuration(plans: Mapping[str, Any], name: str, channels: int, src: Path) -> NnunetConfiguration:
    """The plans configuration ``name``, resolved and checked (see :class:`NnunetConfiguration`).

    Args:
        plans: the parsed plans.json.
        name: the configuration (``3d_fullres``...).
        channels: the input channels dataset.json declares.
        src: plans.json.

    Raises:
        PlanError: a cascade stage, or any field missing, of the wrong type, out of range or over a cost bound.
    """
    configurations = check_mapping(plans.get("configurations"), "configurations", src)
    cfg = resolve_configuration(configurations, _name(name, "configuration", src), src)
    where = f"configurations.{name}"
    if cfg.get("previous_stage") is not None or "cascade" in name:
        raise PlanError(f"{where} is a cascade stage (its input includes the previous stage's segmentation); "
                        "focusseg runs single-stage nnU-Net models only (3d_fullres, 3d_lowres, 2d)", src)
    if "architecture" not in cfg:
        raise PlanError(f"{where} has no 'architecture': an old nnU-Net plans format; rerun nnUNetv2_plan_experiment "
                        "with a current nnU-Net", src)
    for key in ("data_identifier", "patch_size", "spacing", "normalization_schemes", "use_mask_for_norm",
                "batch_size"):
        if key not in cfg:
            fail(src, f"{where}.{key}", None, "is required")
    patch = _list(cfg["patch_size"], f"{where}.patch_size", src, lo=2, hi=3)
    dim = len(patch)
    patch_size = tuple(check_int(v, f"{where}.patch_size[{i}]", src, 1, MAX_PATCH_AXIS) for i, v in enumerate(patch))
    if math.prod(patch_size) > MAX_PATCH_VOXELS:
        fail(src, f"{where}.patch_size", patch, f"has {math.prod(patch_size):,} voxels (at most "
                                                f"{MAX_PATCH_VOXELS:,})")
    spacing = tuple(check_float(v, f"{where}.spacing[{i}]", src, 0.0, 1e6, lo_open=True)
                    for i, v in enumerate(_list(cfg["spacing"], f"{where}.spacing", src, dim)))
    schemes = []
    for i, s in enumerate(_list(cfg["normalization_schemes"], f"{where}.normalization_schemes", src, channels)):
        if s not in NORMALIZATION_SCHEMES:
            fail(src, f"{where}.normalization_schemes[{i}]", s, f"is not one of {', '.join(NORMALIZATION_SCHEMES)}")
        schemes.append(s)
    masks = tuple(check_bool(v, f"{where}.use_mask_for_norm[{i}]", src)
                  for i, v in enumerate(_list(cfg["use_mask_for_norm"], f"{where}.use_mask_for_norm", src, channels)))
    cls, kwargs = check_architecture(cfg["architecture"], dim, patch_size, src, f"{where}.architecture")
    return NnunetConfiguration(
        name=name, data_identifier=_name(cfg["data_identifier"], f"{where}.data_identifier", src),
        patch_size=patch_size, spacing=spacing, normalization_schemes=tuple(schemes), use_mask_for_norm=masks,
        batch_size=check_int(cfg["batch_size"], f"{where}.batch_size", src, 1, MAX_BATCH), network_class=cls,
        arch_kwargs=freeze(kwargs), resampling=_resampling(cfg, where, src))


# ----------------------------------------------------------------------------------------------- plans level

def _transpose(v: Any, key: str, src: Path) -> tuple[int, ...]:
    axes = _list(v, key, src, lo=2, hi=3)
    if sorted(axes) != list(range(len(axes))) or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
        fail(src, key, v, f"must be a permutation of 0..{len(axes) - 1}")
    return tuple(axes)


def check_intensity_properties(plans: Mapping[str, Any], schemes: Sequence[str], src: Path
                               ) -> Mapping[str, Mapping[str, float]]:
    """``foreground_intensity_properties_per_channel`` (or the old ``..._by_modality``): every statistic present
    finite, ``std >= 0``, ``percentile_00_5 <= percentile_99_5``; the channels normalised with
    ``CTNormalization`` must have mean, std and both percentiles.

    Raises:
        PlanError: naming the channel and the statistic.
    """
    key = "foreground_intensity_properties_per_channel"
    if key not in plans and "foreground_intensity_properties_by_modality" in plans:
        key = "foreground_intensity_properties_by_modality"
    raw = plans.get(key, {})
    props = check_mapping({} if raw is None else raw, key, src)
    if len(props) > MAX_CHANNELS:
        fail(src, key, f"{len(props)} channels", f"at most {MAX_CHANNELS}")
    out: dict[str, dict[str, float]] = {}
    for ch, stats in props.items():
        stats = check_mapping(stats, f"{key}.{ch}", src)
        out[ch] = {}
        for k, v in stats.items():
            if k in INTENSITY_KEYS:
                out[ch][k] = check_float(v, f"{key}.{ch}.{k}", src, -1e12, 1e12)
        if out[ch].get("std", 0.0) < 0:
            fail(src, f"{key}.{ch}.std", out[ch]["std"], "must be >= 0")
        if out[ch].get("percentile_00_5", -math.inf) > out[ch].get("percentile_99_5", math.inf):
            fail(src, f"{key}.{ch}.percentile_00_5", out[ch]["percentile_00_5"], "must be <= percentile_99_5")
    for i, scheme in enumerate(schemes):
        if scheme == "CTNormalization":
            missing = [k for k in ("mean", "std", "percentile_00_5", "percentile_99_5") if k not in out.get(str(i), {})]
            if missing:
                fail(src, f"{key}.{i}.{missing[0]}", None, "is required for channel "
                                                           f"{i}'s CTNormalization")
    return freeze(out)


# ----------------------------------------------------------------------------------------------- dataset.json

def check_dataset_json(ds: Any, src: Path) -> NnunetDataset:
    """dataset.json checked: channel names (``channel_names`` or the old ``modality``) for channels ``0..C-1``,
    labels (background 0, values or region tuples in ``[0, 65535]``, at most :data:`MAX_CLASSES` outputs, an
    ``ignore`` label above all others), ``regions_class_order`` for region-based models, ``file_ending``.

    Raises:
        PlanError: naming the field.
    """
    ds = check_mapping(ds, "dataset.json", src)
    ch_key = "channel_names" if "channel_names" in ds else "modality"
    channels = check_mapping(ds.get(ch_key), ch_key, src)
    if not 1 <= len(channels) <= MAX_CHANNELS or sorted(channels) != sorted(str(i) for i in range(len(channels))):
        fail(src, ch_key, dict(channels), f"must name channels \"0\"..\"C-1\" (1 to {MAX_CHANNELS} channels)")
    names = tuple(_text(channels[str(i)], f"{ch_key}.{i}", src) for i in range(len(channels)))
    raw_labels = check_mapping(ds.get("labels"), "labels", src)
    if not 2 <= len(raw_labels) <= MAX_CLASSES + 1:
        fail(src, "labels", f"{len(raw_labels)} labels", f"must declare 2 to {MAX_CLASSES + 1} labels")
    labels: dict[str, int | tuple[int, ...]] = {}
    for name, value in raw_labels.items():
        where = f"labels.{name}"
        if isinstance(value, list):
            if not value or len(value) > MAX_CLASSES:
                fail(src, where, value, f"a region must list 1 to {MAX_CLASSES} label values")
            labels[name] = tuple(check_int(v, f"{where}[{i}]", src, 0, MAX_LABEL) for i, v in enumerate(value))
        else:
            labels[name] = check_int(value, where, src, 0, MAX_LABEL)
    if labels.get("background") != 0:
        fail(src, "labels.background", raw_labels.get("background"), "must be declared and be 0")
    ignore = labels.pop("ignore", None)
    if isinstance(ignore, tuple):
        fail(src, "labels.ignore", list(ignore), "must be one label value, not a region")
    has_regions = any(isinstance(v, tuple) and len(v) > 1 for v in labels.values())
    values = sorted({x for v in labels.values() for x in (v if isinstance(v, tuple) else (v,))})
    if ignore is not None and ignore != values[-1] + 1:
        fail(src, "labels.ignore", ignore, f"must be the highest label value ({values[-1] + 1})")
    order: tuple[int, ...] | None = None
    if has_regions:
        foreground = [v for v in labels.values() if (set(v) if isinstance(v, tuple) else {v}) != {0}]
        raw_order = ds.get("regions_class_order")
        order = tuple(check_int(v, f"regions_class_order[{i}]", src, 1, MAX_LABEL)
                      for i, v in enumerate(_list(raw_order, "regions_class_order", src, len(foreground))))
        heads = len(foreground)
    else:
        heads = len(values)
    if heads > MAX_CLASSES:
        fail(src, "labels", f"{heads} outputs", f"at most {MAX_CLASSES}")
    ending = ds.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith(".") or not 2 <= len(ending) <= 20:
        fail(src, "file_ending", ending, "must be a file ending such as '.nii.gz'")
    if ignore is not None:
        labels["ignore"] = ignore
    return NnunetDataset(names, freeze(labels), order, ignore, ending, has_regions, heads)


def _text(v: Any, path: str, src: Path) -> str:
    if not isinstance(v, str) or not v or len(v) > 200:
        fail(src, path, v, "must be a non-empty string of at most 200 characters")
    return v


# ----------------------------------------------------------------------------------------------- the folder

def find_checkpoints(folder: Path, checkpoint_name: str = "checkpoint_final.pth",
                     folds: Sequence[int | str] | None = None) -> dict[int | str, Path]:
    """Fold -> checkpoint file: the given ``folds``, or every ``fold_K`` / ``fold_all`` folder that holds
    ``checkpoint_name``.

    Raises:
        UsageError: an unknown checkpoint name, or a fold that is not an integer in [0, 999] or ``"all"``.
        MissingFileError: a requested fold without the checkpoint, or no fold at all.
    """
    if checkpoint_name not in CHECKPOINT_NAMES:
        raise UsageError(f"checkpoint name {checkpoint_name!r} is not one of {', '.join(CHECKPOINT_NAMES)}")
    found: dict[int | str, Path] = {}
    if folds is None:
        for child in sorted(folder.iterdir()):
            m = _FOLD.fullmatch(child.name)
            if m and (child / checkpoint_name).is_file():
                found["all" if m.group(1) == "all" else int(m.group(1))] = child / checkpoint_name
        if not found:
            raise MissingFileError(f"no fold_K/{checkpoint_name} in the nnU-Net model folder", folder)
        return found
    for f in folds:
        if f != "all" and not (isinstance(f, int) and not isinstance(f, bool) and 0 <= f <= 999):
            raise UsageError(f"fold {f!r} is not an integer in [0, 999] or 'all'")
        file = folder / f"fold_{f}" / checkpoint_name
        if not file.is_file():
            raise MissingFileError(f"no {checkpoint_name} for fold {f}", file)
        found[f] = file
    return found


def read_model_folder(folder: str | Path, configuration: str | None = None,
                      checkpoint_name: str | None = "checkpoint_final.pth",
                      folds: Sequence[int | str] | None = None) -> NnunetModelFolder:
    """Read and check an nnU-Net v2 model folder (no checkpoint is loaded: :mod:`focusseg.nnunet.network`).

    Args:
        folder: ``<trainer>__<plans>__<configuration>/``.
        configuration: the plans configuration; by default the one the folder's name gives (a folder of another
            name: the plans' only configuration).
        checkpoint_name: ``checkpoint_final.pth`` or ``checkpoint_best.pth``; None: no checkpoint is looked for
            (``checkpoints`` is empty: the caller chooses the files).
        folds: the folds to use; by default every fold with the checkpoint.

    Returns:
        the checked folder (:class:`NnunetModelFolder`).

    Raises:
        MissingFileError: no folder, dataset.json, plans.json or checkpoint.
        PlanError: dataset.json or plans.json unreadable, or a field refused (one line naming the file and field).
        UsageError: no configuration given and none in the folder's name, or a bad fold / checkpoint name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError("no such nnU-Net model folder", folder)
    for name in ("dataset.json", "plans.json"):
        if not (folder / name).is_file():
            raise MissingFileError(f"no {name}: not an nnU-Net model folder", folder / name)
    m = _FOLDER.fullmatch(folder.name)
    ds_src, plans_src = folder / "dataset.json", folder / "plans.json"
    if configuration is None and m is not None:
        configuration = m.group("configuration")
    elif configuration is None:  # another folder name: a plans file of one configuration (focusseg's export) names it
        plans = check_mapping(read_json(plans_src, PlanError, allow_nan=False, max_bytes=MAX_JSON_BYTES),
                              "plans.json", plans_src)
        configs = plans.get("configurations")
        if not isinstance(configs, Mapping) or len(configs) != 1:
            raise UsageError(f"{folder}: an nnU-Net model folder's name is <trainer>__<plans>__<configuration>; "
                             "name the configuration")
        configuration = str(next(iter(configs)))
    model = read_plans(plans_src, ds_src, configuration, folder=folder)
    trainer = m.group("trainer") if m else None
    checkpoints = {} if checkpoint_name is None else find_checkpoints(folder, checkpoint_name, folds)
    return NnunetModelFolder(
        path=folder, trainer=trainer, plans_name=model.plans_name, dataset=model.dataset,
        configuration=model.configuration, transpose_forward=model.transpose_forward,
        transpose_backward=model.transpose_backward, intensity_properties=model.intensity_properties,
        checkpoints=checkpoints, image_reader_writer=model.image_reader_writer)


def read_plans(plans_file: str | Path, dataset_file: str | Path, configuration: str,
               folder: Path | None = None) -> NnunetModelFolder:
    """Read and check an nnU-Net plans file and a dataset.json (bounded, no NaN), as a model folder without
    checkpoints: what ``--nnunet-plans`` trains on and what :func:`read_model_folder` checks.

    Args:
        plans_file: nnU-Net's ``nnUNetPlans.json`` (any name).
        dataset_file: the dataset.json giving channels, labels and file ending.
        configuration: the plans configuration (``3d_fullres``...).
        folder: the folder the result's ``path`` names (default: the plans file's folder).

    Returns:
        the checked plans (:class:`NnunetModelFolder` with no checkpoints, no trainer).

    Raises:
        MissingFileError: either file missing.
        PlanError: a file unreadable, or a field refused (one line naming the file and the field).
    """
    plans_src, ds_src = Path(plans_file), Path(dataset_file)
    for src in (ds_src, plans_src):
        if not src.is_file():
            raise MissingFileError("no such file", src)
    dataset = check_dataset_json(read_json(ds_src, PlanError, allow_nan=False, max_bytes=MAX_JSON_BYTES), ds_src)
    plans = check_mapping(read_json(plans_src, PlanError, allow_nan=False, max_bytes=MAX_JSON_BYTES), "plans.json",
                          plans_src)
    manager = plans.get("label_manager", "LabelManager")
    if manager != "LabelManager":
        fail(plans_src, "label_manager", manager, "only nnU-Net's LabelManager is supported")
    config = check_configuration(plans, configuration, len(dataset.channel_names), plans_src)
    forward = _transpose(plans.get("transpose_forward"), "transpose_forward", plans_src)
    backward = _transpose(plans.get("transpose_backward"), "transpose_backward", plans_src)
    if len(backward) != len(forward) or any(forward[backward[i]] != i for i in range(len(forward))):
        fail(plans_src, "transpose_backward", list(backward), f"must undo transpose_forward {list(forward)}")
    if len(forward) < config.dim:
        fail(plans_src, "transpose_forward", list(forward), f"must cover the {config.dim} image axes")
    plans_name = plans.get("plans_name")
    folder = plans_src.parent if folder is None else Path(folder)
    return NnunetModelFolder(
        path=folder, trainer=None,
        plans_name=_name(plans_name, "plans_name", plans_src) if plans_name is not None else None,
        dataset=dataset, configuration=config, transpose_forward=forward, transpose_backward=backward,
        intensity_properties=check_intensity_properties(plans, config.normalization_schemes, plans_src),
        checkpoints={}, image_reader_writer=(None if plans.get("image_reader_writer") is None
                                             else _name(plans["image_reader_writer"], "image_reader_writer",
                                                        plans_src)),
        plans_file=None if plans_src == folder / "plans.json" else plans_src)


# ----------------------------------------------------------------------------------------------- post-processing

class _PostprocessingUnpickler(pickle.Unpickler):
    """Builds lists, tuples, dicts, numbers and strings; the one global it knows becomes its name (a string),
    never the function; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module == _PP_MODULE and name in POSTPROCESSING_FUNCTIONS:
            return name
        raise pickle.UnpicklingError(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("a persistent id")


def _check_steps(fns: Any, kwargs: Any, src: Path, heads_max: int = MAX_CLASSES) -> tuple[tuple[str, Any], ...]:
    if not isinstance(fns, (list, tuple)) or not isinstance(kwargs, (list, tuple)) or len(fns) != len(kwargs) \
            or len(fns) > heads_max + 1:
        raise PlanError("post-processing must be two lists of the same length (functions, their arguments)", src)
    steps = []
    for i, (fn, kw) in enumerate(zip(fns, kwargs)):
        if fn not in POSTPROCESSING_FUNCTIONS:
            fail(src, f"postprocessing_fns[{i}]", fn, f"is not a post-processing step focusseg knows "
                                                      f"({', '.join(POSTPROCESSING_FUNCTIONS)})")
        if not isinstance(kw, Mapping) or set(kw) != {"labels_or_regions"}:
            fail(src, f"postprocessing_kwargs[{i}]", kw, "must be {'labels_or_regions': ...}")
        target = kw["labels_or_regions"]
        steps.append((fn, _labels_or_regions(target, f"postprocessing_kwargs[{i}].labels_or_regions", src)))
    return tuple(steps)


def _labels_or_regions(v: Any, path: str, src: Path) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        return check_int(v, path, src, 0, MAX_LABEL)
    if isinstance(v, (list, tuple)) and 0 < len(v) <= MAX_CLASSES:
        items = [_labels_or_regions(x, f"{path}[{i}]", src) if isinstance(x, (list, tuple))
                 else check_int(x, f"{path}[{i}]", src, 0, MAX_LABEL) for i, x in enumerate(v)]
        return tuple(items) if isinstance(v, tuple) else tuple(items)
    fail(src, path, v, "must be a label value, a region (tuple of values) or a list of them")


def read_postprocessing(folder: str | Path) -> tuple[tuple[str, Any], ...] | None:
    """nnU-Net's post-processing for a model folder (or a ``crossval_results_folds_*`` folder): each step's
    function name and its ``labels_or_regions``; None when neither file exists.

    ``postprocessing.json`` is read bounded where present. Otherwise ``postprocessing.pkl`` is read by an unpickler
    that builds plain containers only and turns nnU-Net's one post-processing function reference into its name; a
    pickle naming any other global is refused before anything is called.

    Raises:
        PlanError: an unreadable or refused file, or steps of the wrong form (one line naming the file).
    """
    folder = Path(folder)
    js, pkl = folder / "postprocessing.json", folder / "postprocessing.pkl"
    if js.is_file():
        data = check_mapping(read_json(js, PlanError, allow_nan=False, max_bytes=MAX_POSTPROCESSING_BYTES),
                             "postprocessing.json", js)
        return _check_steps(data.get("postprocessing_fns"), data.get("postprocessing_kwargs"), js)
    if not pkl.is_file():
        return None
    blob = read_bytes_bounded(pkl, PlanError, MAX_POSTPROCESSING_BYTES, "an nnU-Net post-processing file")
    try:
        data = _PostprocessingUnpickler(io.BytesIO(blob)).load()
    except pickle.UnpicklingError as exc:
        raise PlanError(f"refused: its pickle names {str(exc)[:120]!r}, which could run code (only nnU-Net's "
                        "keep-the-largest-component step is read)", pkl) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError,
            RecursionError) as exc:
        raise PlanError(f"not a readable post-processing pickle ({type(exc).__name__})", pkl) from None
    if not isinstance(data, tuple) or len(data) != 2:
        raise PlanError("not nnU-Net's (functions, arguments) post-processing pair", pkl)
    return _check_steps(data[0], data[1], pkl)


__all__ = ["ARCH_KWARGS", "CHECKPOINT_NAMES", "IMPORTABLE", "INTENSITY_KEYS", "MAX_BLOCKS_PER_STAGE", "MAX_KERNEL",
           "MAX_STRIDE", "NETWORK_CLASSES",
           "NORMALIZATION_SCHEMES", "NnunetConfiguration", "NnunetDataset", "NnunetModelFolder",
           "POSTPROCESSING_FUNCTIONS", "check_architecture", "check_configuration", "check_dataset_json",
           "check_intensity_properties", "find_checkpoints", "read_model_folder", "read_plans", "read_postprocessing",
           "resolve_configuration"]
