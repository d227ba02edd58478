"""A plan's ``training``, ``inference`` and ``network`` sections, parsed once into typed, frozen, validated objects.

A plan is a JSON object (:mod:`focusseg.planning.planner` writes it; recipes and ``--set`` override it; run folders
and model bundles carry it). Code that *reads* a section takes it from here instead of ``plan["training"].get(...)``
with a default at each read site: every key has one type, one range and one default, and a plan from a file
someone else made (a bundle, a checkpoint) is refused before anything is allocated for it.

* :func:`training_settings`, :func:`inference_settings`, :func:`network_settings`: one section each (a missing or
  null section is all defaults); :func:`parse_plan_settings`: the three sections plus the top-level fields that
  size the work (``n_classes``, channels, ``patch_size``, ``batch_size``), checked against the cost bounds below.
* Registry specs (``training.loss``, ``optimizer``, ``lr_schedule``, ``sampler``, ``class_weighter``, ``task``,
  ``network``) stay specs (:class:`Spec`: a name and its keyword arguments), validated but not resolved: the
  registries that build them live above this module.
* A key the code base never writes or reads in these sections is refused, naming the known keys (a typo must
  not silently keep a default). ``network`` keeps any key: they are the network builder's keyword arguments.
* Every refusal is one :class:`~focusseg.errors.PlanError` whose one-line message names the plan file (when
  given), the field path (``training.grad_clip``) and the bound.

Where the code has no single default for a key, the field is ``None`` when the plan leaves it out, and each
reader keeps its own default (the field's comment says which).

This is a floor-layer module: it imports the standard library and :mod:`focusseg.errors` only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from focusseg.errors import PlanError

# ----------------------------------------------------------------------------------------------- cost bounds
#: Output classes: one logit map per class per window; 1000 covers every anatomy atlas (TotalSegmentator: 117).
MAX_CLASSES = 1000
#: Input channels (modalities): multi-parametric MR has 4-6; 64 leaves room without allowing absurd first layers.
MAX_CHANNELS = 64
#: One patch axis: 4096 voxels covers a whole 2D slice of any scanner and any 3D axis a patch could sensibly span.
MAX_PATCH_AXIS = 4096
#: Voxels of one patch: 512^3 (0.5 GiB per fp32 channel); the planner's largest CUDA patches are ~2.5e7 voxels.
MAX_PATCH_VOXELS = 512**3
#: Training samples per step (the planner's 2D CUDA cap is 512).
MAX_BATCH = 4096
#: Windows predicted at once (the planner writes at most 64).
MAX_INFERENCE_BATCH = 4096
#: Logit elements of one inference batch (batch x patch voxels x outputs): 2^34 fp32 values = 64 GiB.
MAX_WINDOW_BATCH_ELEMENTS = 2**34
#: Extra Gaussian-noise TTA passes (the VALDO recipe uses 2).
MAX_NOISE_PASSES = 64
#: Network passes per window: 2^(mirror axes) x (1 + noise passes); 8 x 65 = 520 is the most the two bounds allow.
MAX_TTA_PASSES = 520
#: Sliding-window overlap below 1: the number of windows grows as 1 / (1 - overlap)^dims (0.95: 8000x in 3D).
MAX_OVERLAP = 0.95
#: Epochs and iterations per epoch: far beyond any schedule (nnU-Net: 1000 x 250), but finite.
MAX_EPOCHS = 1_000_000
MAX_ITERATIONS_PER_EPOCH = 1_000_000
#: Iterations of one run (max_epochs x iterations_per_epoch): 10^9 steps would take years; the bound keeps
#: schedule arithmetic (LR horizons, time budgets) in range.
MAX_TOTAL_ITERATIONS = 10**9
#: Validation patches per validation (the default is 32).
MAX_VAL_PATCHES = 1_000_000
#: Feature widths of a network stage (nnU-Net caps at 320-512).
MAX_WIDTH = 4096
#: Network stages (resolution levels): 12 halvings of a 4096 axis leave one voxel.
MAX_STAGES = 12
#: Seeds: torch and numpy take 64-bit seeds; the loop adds small offsets to the plan's seed.
MAX_SEED = 2**62

#: ``training.amp`` values (case-insensitive): the autocast dtype (:func:`focusseg.nets.from_plan.amp_dtype`).
AMP_VALUES = ("auto", "bf16", "fp16", "none", "off", "false", "fp32")
#: ``training.validation`` modes (:mod:`focusseg.engine.validation`).
VALIDATION_MODES = ("patches", "volumes")
#: ``training.loader.mode`` values (:mod:`focusseg.data.loader`).
LOADER_MODES = ("threads", "processes")
#: ``training.compile`` object keys (``torch.compile`` options).
COMPILE_OPTIONS = ("mode", "backend", "fullgraph", "dynamic", "options")
#: ``training.deep_supervision`` object keys (:class:`focusseg.losses.DeepSupervisionLoss` arguments).
DEEP_SUPERVISION_OPTIONS = ("weights", "n_outputs", "mode")
#: ``training.init_from`` object keys (:mod:`focusseg.engine.finetune` writes them).
INIT_FROM_OPTIONS = ("source", "sha256", "freeze_encoder_epochs", "warmup_epochs", "reinitialised")
#: The default number of validation patches (``training.val_patches`` absent, null or 0).
DEFAULT_VAL_PATCHES = 32
#: The default whole-volume validation interval during training, in epochs (0: never).
DEFAULT_FULL_EVERY = 10


# ----------------------------------------------------------------------------------------------- helpers

def _show(value: Any, limit: int = 60) -> str:
    """``value`` as short one-line text for a message."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(source: str | Path | None, path: str, value: Any, bound: str) -> NoReturn:
    raise PlanError(f"{path} = {_show(value)}: {bound}", source)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(v: Any, path: str, src: str | Path | None, lo: int, hi: int | None = None) -> int:
    """``v`` as an int in ``[lo, hi]`` (bools and floats refused)."""
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        _fail(src, path, v, f"must be an integer in [{lo}, {hi}]" if hi is not None else f"must be an integer >= {lo}")
    return int(v)


def _float(v: Any, path: str, src: str | Path | None, lo: float, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> float:
    """``v`` as a finite float in the range (NaN and inf refused: ``json.loads`` accepts them)."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok:
        ok = (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
    if not ok:
        low = f"{'(' if lo_open else '['}{lo:g}"
        high = f"{hi:g}{')' if hi_open else ']'}" if hi is not None else "inf)"
        _fail(src, path, v, f"must be a finite number in {low}, {high}")
    return float(v)


def _bool(v: Any, path: str, src: str | Path | None) -> bool:
    if not isinstance(v, bool):
        _fail(src, path, v, "must be true or false")
    return v


def _mapping(v: Any, path: str, src: str | Path | None) -> Mapping[str, Any]:
    if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
        _fail(src, path, v, "must be an object")
    return v


def _known(section: Mapping[str, Any], known: Sequence[str], path: str, src: str | Path | None) -> None:
    unknown = sorted(set(section) - set(known), key=str)
    if unknown:
        raise PlanError(f"{path}.{unknown[0]} is not a known setting"
                        + (f" (nor {', '.join(map(str, unknown[1:]))})" if len(unknown) > 1 else "")
                        + f"; known: {', '.join(known)}", src)


def _finite_json(v: Any, path: str, src: str | Path | None, depth: int = 0) -> None:
    """Refuse NaN/inf anywhere inside a free-form value (spec kwargs), and absurd nesting."""
    if depth > 32:
        _fail(src, path, v, "is nested more than 32 levels deep")
    if isinstance(v, float) and not math.isfinite(v):
        _fail(src, path, v, "must be finite (NaN and inf are refused)")
    if isinstance(v, Mapping):
        for k, x in v.items():
            if not isinstance(k, str):
                _fail(src, path, k, "keys must be strings")
            _finite_json(x, f"{path}.{k}", src, depth + 1)
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _finite_json(x, f"{path}[{i}]", src, depth + 1)


def freeze(value: Any) -> Any:
    """A read-only deep copy of a JSON-like value: mappings become read-only mappings, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The plain JSON-like deep copy of a :func:`freeze` d value (dicts and lists, as a plan holds them)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Spec:
    """A registry spec, validated but not resolved: ``"dice"`` or ``{"name": "dice", **kwargs}``
    (:func:`focusseg.registry.split_spec`). ``name`` is None only for a compound loss written as a mapping of part
    names (``{"ce": 1.0, "soft_dice": 1.0}``), whose parts are then ``kwargs``.

    Attributes:
        name: the registry name (a string), or None for a compound loss mapping.
        kwargs: the keyword arguments, read-only (:meth:`split` gives a fresh mutable copy).
    """

    name: str | None
    kwargs: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def split(self) -> tuple[str, dict[str, Any]]:
        """``(name, kwargs)`` as :func:`focusseg.registry.split_spec` returns them (a fresh, mutable deep copy)."""
        if self.name is None:
            raise PlanError("a compound loss mapping has no registry name")
        return self.name, thaw(self.kwargs)

    def to_value(self) -> str | dict[str, Any]:
        """The spec as a plan holds it: the bare name when there are no kwargs, else a fresh dict."""
        if self.name is None:
            return thaw(self.kwargs)
        return self.name if not self.kwargs else {"name": self.name, **thaw(self.kwargs)}

    def get(self, key: str, default: Any = None) -> Any:
        """One keyword argument (``default`` when absent), as a plain value."""
        return thaw(self.kwargs[key]) if key in self.kwargs else default


def parse_spec(value: Any, path: str, source: str | Path | None = None, compound: bool = False) -> Spec:
    """``value`` as a :class:`Spec`: a non-empty name, or a mapping whose ``"name"`` is a non-empty string;
    ``compound=True`` also accepts a mapping without a name (a compound loss). Raises :class:`PlanError`."""
    if isinstance(value, str):
        if not value:
            _fail(source, path, value, "must be a non-empty registry name")
        return Spec(value)
    if isinstance(value, Mapping):
        _mapping(value, path, source)
        _finite_json(value, path, source)
        if "name" not in value:
            if compound and value:
                return Spec(None, freeze(value))
            _fail(source, path, value, "must be a name or an object with a 'name'"
                  + (" (or a compound mapping of loss parts)" if compound else ""))
        name = value["name"]
        if not isinstance(name, str) or not name:
            _fail(source, f"{path}.name", name, "must be a non-empty string")
        return Spec(name, freeze({k: v for k, v in value.items() if k != "name"}))
    _fail(source, path, value, "must be a registry name or an object with a 'name'")


def _optional_spec(value: Any, path: str, src: str | Path | None, compound: bool = False) -> Spec | None:
    """A spec, or None for null/false/empty (the code treats those as "not set")."""
    return None if value in (None, False, "", {}) else parse_spec(value, path, src, compound)


def _spec_value(spec: Spec | None) -> Any:
    return None if spec is None else spec.to_value()


# ----------------------------------------------------------------------------------------------- training

@dataclass(frozen=True)
class TrainingSettings:
    """The plan's ``training`` section. Defaults are the ones the code applies when a key is absent; a field
    that is None where the plan leaves the key out has no single default (see its comment).

    Attributes:
        loss: the loss spec (a compound mapping allowed); None when absent: building the loss needs one.
        deep_supervision: :class:`~focusseg.losses.DeepSupervisionLoss` arguments (``weights``: ``"nnunet"`` or
            non-negative numbers; ``n_outputs``; ``mode``), or None (null/false/empty: no deep supervision).
        optimizer: the optimizer spec; None when absent (building the optimizer needs one; the divergence hint
            reads it as ``sgd``).
        lr_schedule: the learning-rate controller spec; None when absent (building the controller needs one).
        grad_clip: the gradient-norm clip; 12.0 when absent, None when the plan says null (no clipping).
        max_epochs / iterations_per_epoch: the schedule; None when absent (training needs both; the report
            shows "–").
        foreground_oversampling: the sampler's ``p_foreground`` unless the sampler spec sets it (0.33).
        augmentation: a preset name or an object of augmentation options (``"nnunet"``).
        amp: the autocast setting, lower-cased (one of :data:`AMP_VALUES`); None when absent: the network
            builder, the memory profile and the report read it as ``"none"``, the 2D planner as ``"auto"``.
        validation: ``"patches"`` or ``"volumes"`` (``"patches"``; null and "" too).
        val_patches: validation patches (32; null and 0 too).
        val_every: validate every N epochs (1).
        val_full_every: whole-volume validation every N epochs during training, 0: never (10).
        val_max_cases: validate on at most this many cases; None (or 0): all.
        sampler: the patch sampler spec (``{"name": "foreground"}``; null and {} too).
        class_weighter: the class weighter spec, or None.
        task: the training task spec; None when absent (:attr:`task_name` is ``"supervised"`` then; the report
            shows the task only when the plan sets it).
        channels_last: channels-last memory format for 3D training (False).
        compile: ``torch.compile``: False, True or a read-only object of its options (False; null too).
        seed: the run's seed (0).
        max_nonfinite_steps: non-finite steps in a row tolerated before training stops (25).
        loader: ``training.loader`` (``workers``, ``mode``) as a read-only object, or None (defaults there).
        in_memory: keep the preprocessed store in memory (False).
        init_from: the fine-tuning entry (``source``, ``sha256``, ``freeze_encoder_epochs``, ``warmup_epochs``,
            ``reinitialised``) as a read-only object, or None (from scratch; null, false and {} too).
    """

    loss: Spec | None = None
    deep_supervision: Mapping[str, Any] | None = None
    optimizer: Spec | None = None
    lr_schedule: Spec | None = None
    grad_clip: float | None = 12.0
    max_epochs: int | None = None
    iterations_per_epoch: int | None = None
    foreground_oversampling: float = 0.33
    augmentation: str | Mapping[str, Any] = "nnunet"
    amp: str | None = None
    validation: str = "patches"
    val_patches: int = DEFAULT_VAL_PATCHES
    val_every: int = 1
    val_full_every: int = DEFAULT_FULL_EVERY
    val_max_cases: int | None = None
    sampler: Spec = field(default_factory=lambda: Spec("foreground"))
    class_weighter: Spec | None = None
    task: Spec | None = None
    channels_last: bool = False
    compile: bool | Mapping[str, Any] = False
    seed: int = 0
    max_nonfinite_steps: int = 25
    loader: Mapping[str, Any] | None = None
    in_memory: bool = False
    init_from: Mapping[str, Any] | None = None

    @property
    def task_name(self) -> str:
        """The training task's registry name (``"supervised"`` when the plan sets none)."""
        return "supervised" if self.task is None else str(self.task.name)

    @property
    def lr(self) -> float:
        """The optimizer's initial learning rate (its ``lr``; 0.01 when it sets none, or sets no optimizer)."""
        return float(self.optimizer.get("lr", 0.01)) if self.optimizer is not None else 0.01

    def need(self, name: str, source: str | Path | None = None) -> Any:
        """The field ``name``, refused (:class:`PlanError`) when the plan leaves it out: for the keys that
        have no default (``loss``, ``optimizer``, ``lr_schedule``, ``max_epochs``, ``iterations_per_epoch``)
        where the code needs them."""
        value = getattr(self, name)
        if value is None:
            raise PlanError(f"training.{name} is missing: the plan must set it to train", source)
        return value

    def deep_supervision_kwargs(self) -> dict[str, Any] | None:
        """``deep_supervision`` as a fresh dict of keyword arguments, or None."""
        return None if self.deep_supervision is None else thaw(self.deep_supervision)

    def augmentation_options(self) -> dict[str, Any]:
        """The augmentation as ``AugmentConfig.from_dict`` takes it: ``{"preset": name}`` or the options."""
        aug = self.augmentation
        return {"preset": aug} if isinstance(aug, str) else thaw(aug)

    def compile_spec(self) -> bool | dict[str, Any]:
        """``compile`` as the training step takes it: a bool, or a fresh dict of ``torch.compile`` options."""
        return self.compile if isinstance(self.compile, bool) else thaw(self.compile)

    def to_dict(self) -> dict[str, Any]:
        """The section as plain JSON values (specs in their plan form); parsing it gives an equal object."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_value() if isinstance(v, Spec) else thaw(v)
        return out


#: ``training`` keys: those the planner writes, then those recipes, fine-tuning and users add.
TRAINING_KEYS = tuple(f.name for f in dataclasses.fields(TrainingSettings))


def _deep_supervision(v: Any, src: str | Path | None) -> Mapping[str, Any] | None:
    path = "training.deep_supervision"
    if v in (None, False, {}):
        return None
    ds = _mapping(v, path, src)
    _known(ds, DEEP_SUPERVISION_OPTIONS, path, src)
    w = ds.get("weights", "nnunet")
    if isinstance(w, str):
        if w != "nnunet":
            _fail(src, f"{path}.weights", w, "must be \"nnunet\" or a list of non-negative numbers")
    elif isinstance(w, (list, tuple)) and 0 < len(w) <= MAX_STAGES:
        for i, x in enumerate(w):
            _float(x, f"{path}.weights[{i}]", src, 0.0)
    else:
        _fail(src, f"{path}.weights", w, f"must be \"nnunet\" or 1 to {MAX_STAGES} non-negative numbers")
    if ds.get("n_outputs") is not None:
        _int(ds["n_outputs"], f"{path}.n_outputs", src, 1, MAX_STAGES)
    if "mode" in ds and not isinstance(ds["mode"], str):
        _fail(src, f"{path}.mode", ds["mode"], "must be a string")
    return freeze(ds)


def _loader(v: Any, src: str | Path | None) -> Mapping[str, Any] | None:
    path = "training.loader"
    if v is None:
        return None
    spec = _mapping(v, path, src)
    unknown = sorted(set(spec) - {"workers", "mode"})
    if unknown:  # the wording of focusseg.data.loader.parse_loader_spec
        raise PlanError(f"training.loader: unknown option(s) {unknown} (known: workers, mode)", src)
    if "mode" in spec and spec["mode"] not in LOADER_MODES:
        _fail(src, f"{path}.mode", spec["mode"], f"must be one of {', '.join(LOADER_MODES)}")
    if spec.get("workers") is not None:
        _int(spec["workers"], f"{path}.workers", src, 1, 1024)
    return freeze(spec)


def _init_from(v: Any, src: str | Path | None) -> Mapping[str, Any] | None:
    path = "training.init_from"
    if v in (None, {}, False):
        return None
    if not isinstance(v, Mapping) or not isinstance(v.get("source"), str):
        _fail(src, path, v, "must be an object with a 'source' path (a run folder or .pt)")
    _known(v, INIT_FROM_OPTIONS, path, src)
    for key in ("freeze_encoder_epochs", "warmup_epochs"):
        if key in v:
            _int(v[key], f"{path}.{key}", src, 0, MAX_EPOCHS)
    if v.get("sha256") is not None and not isinstance(v["sha256"], str):
        _fail(src, f"{path}.sha256", v["sha256"], "must be a string")
    _finite_json(v, path, src)
    return freeze(v)


def _amp(v: Any, src: str | Path | None) -> str | None:
    if v is None:
        return None
    if v is False:  # ``--set training.amp=false`` parses as JSON false: no autocast, as before
        return "false"
    if not isinstance(v, str) or v.lower() not in AMP_VALUES:
        _fail(src, "training.amp", v, f"must be one of {', '.join(AMP_VALUES)}")
    return v.lower()


def _compile(v: Any, src: str | Path | None) -> bool | Mapping[str, Any]:
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, Mapping):
        unknown = set(v) - set(COMPILE_OPTIONS)
        if unknown:  # the wording of focusseg.engine.task.training_forward
            raise PlanError(f"training.compile: unknown option(s) {', '.join(sorted(map(str, unknown)))} "
                            f"(known: {', '.join(COMPILE_OPTIONS)})", src)
        _finite_json(v, "training.compile", src)
        return freeze(v)
    raise PlanError(f"training.compile {_show(v)} must be true, false or an object of torch.compile options", src)


def _augmentation(v: Any, src: str | Path | None) -> str | Mapping[str, Any]:
    if isinstance(v, str) and v:
        return v
    if isinstance(v, Mapping):
        _mapping(v, "training.augmentation", src)
        _finite_json(v, "training.augmentation", src)
        if "preset" in v and not isinstance(v["preset"], str):
            _fail(src, "training.augmentation.preset", v["preset"], "must be a preset name")
        return freeze(v)
    _fail(src, "training.augmentation", v, "must be a preset name or an object of augmentation options")


def training_settings(plan: Mapping[str, Any], source: str | Path | None = None) -> TrainingSettings:
    """The plan's ``training`` section (absent or null: all defaults), validated.

    Args:
        plan: the plan (only its ``training`` is read).
        source: the plan's file, named in the error message.

    Returns:
        the frozen :class:`TrainingSettings`.

    Raises:
        PlanError: a value of the wrong type, out of range, non-finite, or an unknown key (one line naming
            ``source``, the field and the bound).
    """
    raw = plan.get("training") if isinstance(plan, Mapping) else None
    if raw is None:
        return TrainingSettings()
    tr = _mapping(raw, "training", source)
    _known(tr, TRAINING_KEYS, "training", source)
    s = source
    kw: dict[str, Any] = {}
    if "loss" in tr:
        kw["loss"] = _optional_spec(tr["loss"], "training.loss", s, compound=True)
    if "deep_supervision" in tr:
        kw["deep_supervision"] = _deep_supervision(tr["deep_supervision"], s)
    for key in ("optimizer", "lr_schedule", "class_weighter", "task"):
        if key in tr:
            kw[key] = _optional_spec(tr[key], f"training.{key}", s)
    if kw.get("optimizer") is not None and "lr" in kw["optimizer"].kwargs:
        _float(kw["optimizer"].kwargs["lr"], "training.optimizer.lr", s, 0.0, lo_open=True)
    if kw.get("lr_schedule") is not None and "horizon_epochs" in kw["lr_schedule"].kwargs:
        _int(kw["lr_schedule"].kwargs["horizon_epochs"], "training.lr_schedule.horizon_epochs", s, 1, MAX_EPOCHS)
    if "sampler" in tr:
        kw["sampler"] = _optional_spec(tr["sampler"], "training.sampler", s) or Spec("foreground")
    if "grad_clip" in tr:
        kw["grad_clip"] = None if tr["grad_clip"] is None else _float(tr["grad_clip"], "training.grad_clip", s, 0.0,
                                                                         lo_open=True)
    for key, hi in (("max_epochs", MAX_EPOCHS), ("iterations_per_epoch", MAX_ITERATIONS_PER_EPOCH)):
        if tr.get(key) is not None:
            kw[key] = _int(tr[key], f"training.{key}", s, 1, hi)
    if "foreground_oversampling" in tr:
        kw["foreground_oversampling"] = _float(tr["foreground_oversampling"], "training.foreground_oversampling", s,
                                               0.0, 1.0)
    if "augmentation" in tr:
        kw["augmentation"] = _augmentation(tr["augmentation"], s)
    if "amp" in tr:
        kw["amp"] = _amp(tr["amp"], s)
    if tr.get("validation"):
        mode = tr["validation"]
        if not isinstance(mode, str) or mode.lower() not in VALIDATION_MODES:
            _fail(s, "training.validation", mode, f"must be one of {', '.join(VALIDATION_MODES)}")
        kw["validation"] = mode.lower()
    if tr.get("val_patches"):
        kw["val_patches"] = _int(tr["val_patches"], "training.val_patches", s, 1, MAX_VAL_PATCHES)
    if "val_every" in tr:
        kw["val_every"] = _int(tr["val_every"], "training.val_every", s, 1, MAX_EPOCHS)
    if "val_full_every" in tr:
        kw["val_full_every"] = _int(tr["val_full_every"], "training.val_full_every", s, 0, MAX_EPOCHS)
    if tr.get("val_max_cases") is not None:
        kw["val_max_cases"] = _int(tr["val_max_cases"], "training.val_max_cases", s, 0) or None
    for key in ("channels_last", "in_memory"):
        if key in tr:
            kw[key] = _bool(tr[key], f"training.{key}", s)
    if "compile" in tr:
        kw["compile"] = _compile(tr["compile"], s)
    if "seed" in tr:
        kw["seed"] = _int(tr["seed"], "training.seed", s, 0, MAX_SEED)
    if "max_nonfinite_steps" in tr:
        kw["max_nonfinite_steps"] = _int(tr["max_nonfinite_steps"], "training.max_nonfinite_steps", s, 1)
    if "loader" in tr:
        kw["loader"] = _loader(tr["loader"], s)
    if "init_from" in tr:
        kw["init_from"] = _init_from(tr["init_from"], s)
    total = kw.get("max_epochs", 0) * kw.get("iterations_per_epoch", 0)
    if total > MAX_TOTAL_ITERATIONS:
        _fail(s, "training.max_epochs", kw["max_epochs"],
              f"times training.iterations_per_epoch {kw['iterations_per_epoch']} exceeds {MAX_TOTAL_ITERATIONS:,} "
              "iterations")
    return TrainingSettings(**kw)



# ----------------------------------------------------------------------------------------------- inference

@dataclass(frozen=True)
class InferenceSettings:
    """The plan's ``inference`` section.

    Attributes:
        overlap: the sliding-window overlap in ``[0, MAX_OVERLAP]``; None when absent: prediction and
            validation need it (the planner writes 0.5), the exported graph spec and the final-validation time
            estimate read it as 0.5.
        mirror_axes: mirror TTA axes (spatial, from 0) (``()``; null too).
        batch_size: windows predicted at once (2).
        noise_passes: extra TTA passes with Gaussian input noise (0).
        noise_sigma: their noise's standard deviation (0.1).
        noise_seed: their generator's seed (0).
        postprocessing: ``"auto"`` (the steps chosen on validation), a tuple of fixed steps (read-only), or any
            other value (no post-processing: null, false, ``"none"``) (``"auto"``).
    """

    overlap: float | None = None
    mirror_axes: tuple[int, ...] = ()
    batch_size: int = 2
    noise_passes: int = 0
    noise_sigma: float = 0.1
    noise_seed: int = 0
    postprocessing: str | tuple[Any, ...] | bool | None = "auto"

    @property
    def tta_passes(self) -> int:
        """Network passes per window: ``2^len(mirror_axes) * (1 + noise_passes)``."""
        return 2 ** len(self.mirror_axes) * (1 + self.noise_passes)

    def postprocessing_steps(self) -> list[Any] | None:
        """The fixed post-processing steps as plain values, or None when the plan fixes none."""
        return thaw(self.postprocessing) if isinstance(self.postprocessing, tuple) else None

    def to_dict(self) -> dict[str, Any]:
        """The section as plain JSON values; parsing it gives an equal object."""
        return {f.name: thaw(getattr(self, f.name)) for f in dataclasses.fields(self)}


INFERENCE_KEYS = tuple(f.name for f in dataclasses.fields(InferenceSettings))


def inference_settings(plan: Mapping[str, Any], source: str | Path | None = None) -> InferenceSettings:
    """The plan's ``inference`` section (absent or null: all defaults), validated. Mirror axes are checked
    against 3 spatial axes, not the patch's: the sliding window refuses a 2D plan's third axis when it predicts
    (a recipe's 3D mirror axes merged onto a 2D plan still plans and trains).

    Args:
        plan: the plan (only its ``inference`` is read).
        source: the plan's file, named in the error message.

    Returns:
        the frozen :class:`InferenceSettings`.

    Raises:
        PlanError: as :func:`training_settings`; also more TTA passes than :data:`MAX_TTA_PASSES`.
    """
    raw = plan.get("inference") if isinstance(plan, Mapping) else None
    if raw is None:
        return InferenceSettings()
    inf = _mapping(raw, "inference", source)
    _known(inf, INFERENCE_KEYS, "inference", source)
    s = source
    kw: dict[str, Any] = {}
    if inf.get("overlap") is not None:
        kw["overlap"] = _float(inf["overlap"], "inference.overlap", s, 0.0, MAX_OVERLAP)
    if inf.get("mirror_axes") is not None:
        axes = inf["mirror_axes"]
        if not isinstance(axes, (list, tuple)) or len(set(map(repr, axes))) != len(axes) or not all(
                _is_int(a) and 0 <= a < 3 for a in axes):
            _fail(s, "inference.mirror_axes", axes, "must be distinct spatial axes in [0, 2]")
        kw["mirror_axes"] = tuple(int(a) for a in axes)
    if "batch_size" in inf:
        kw["batch_size"] = _int(inf["batch_size"], "inference.batch_size", s, 1, MAX_INFERENCE_BATCH)
    if "noise_passes" in inf:
        kw["noise_passes"] = _int(inf["noise_passes"], "inference.noise_passes", s, 0, MAX_NOISE_PASSES)
    if "noise_sigma" in inf:
        kw["noise_sigma"] = _float(inf["noise_sigma"], "inference.noise_sigma", s, 0.0, 1e3)
    if "noise_seed" in inf:
        kw["noise_seed"] = _int(inf["noise_seed"], "inference.noise_seed", s, 0, MAX_SEED)
    if "postprocessing" in inf:
        post = inf["postprocessing"]
        if isinstance(post, (list, tuple)):
            for i, step in enumerate(post):
                if not (isinstance(step, str) or (isinstance(step, Mapping) and isinstance(step.get("name"), str))):
                    _fail(s, f"inference.postprocessing[{i}]", step, "must be a step name or an object with a 'name'")
            _finite_json(post, "inference.postprocessing", s)
            post = freeze(post)
        elif not (post is None or isinstance(post, (str, bool))):
            _fail(s, "inference.postprocessing", post, "must be \"auto\", a list of steps, or null")
        kw["postprocessing"] = post
    out = InferenceSettings(**kw)
    if out.tta_passes > MAX_TTA_PASSES:
        _fail(s, "inference.noise_passes", out.noise_passes,
              f"gives {out.tta_passes} TTA passes with {len(out.mirror_axes)} mirror axes (at most {MAX_TTA_PASSES})")
    return out


# ----------------------------------------------------------------------------------------------- network

@dataclass(frozen=True)
class NetworkSettings:
    """The plan's ``network`` spec: the network's registry name and its builder's keyword arguments (any keys:
    each network validates its own). The widths, stage counts and dropout a plan commonly sets are checked here
    against the cost bounds.

    Attributes:
        name: the network's registry name.
        kwargs: the builder's keyword arguments, read-only (:meth:`split` gives a mutable copy).
    """

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @property
    def spec(self) -> Spec:
        return Spec(self.name, self.kwargs)

    @property
    def deep_supervision(self) -> bool:
        """Whether the network is built with deep-supervision heads (its ``deep_supervision`` kwarg)."""
        return bool(self.kwargs.get("deep_supervision"))

    def get(self, key: str, default: Any = None) -> Any:
        """One keyword argument as a plain value (``default`` when absent)."""
        return thaw(self.kwargs[key]) if key in self.kwargs else default

    def split(self) -> tuple[str, dict[str, Any]]:
        """``(name, kwargs)`` as :func:`focusseg.registry.split_spec` returns them (a fresh, mutable copy)."""
        return self.name, thaw(self.kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a plan holds it (``{"name": ..., **kwargs}``); parsing it gives an equal object."""
        return {"name": self.name, **thaw(self.kwargs)}


def _widths(v: Any, path: str, src: str | Path | None) -> None:
    if not isinstance(v, (list, tuple)) or not 0 < len(v) <= MAX_STAGES + 2:
        _fail(src, path, v, f"must be a list of 1 to {MAX_STAGES + 2} widths")
    for i, w in enumerate(v):
        _int(w, f"{path}[{i}]", src, 1, MAX_WIDTH)


def network_settings(plan: Mapping[str, Any], source: str | Path | None = None) -> NetworkSettings | None:
    """The plan's ``network`` spec, validated (None when the plan has none).

    Args:
        plan: the plan (only its ``network`` is read).
        source: the plan's file, named in the error message.

    Returns:
        the frozen :class:`NetworkSettings`, or None.

    Raises:
        PlanError: not a spec; NaN/inf in its arguments; widths above :data:`MAX_WIDTH`, more than
            :data:`MAX_STAGES` stages, a non-boolean ``deep_supervision`` or a dropout outside ``[0, 1)``.
    """
    raw = plan.get("network") if isinstance(plan, Mapping) else None
    if raw is None:
        return None
    spec = parse_spec(raw, "network", source)
    kw, s = spec.kwargs, source
    for key in ("channels", "features"):
        if key in kw:
            _widths(kw[key], f"network.{key}", s)
    for key in ("base_features", "max_features"):
        if key in kw:
            _int(kw[key], f"network.{key}", s, 1, MAX_WIDTH)
    if "n_stages" in kw:
        _int(kw["n_stages"], "network.n_stages", s, 1, MAX_STAGES)
    for key in ("strides", "kernel_sizes"):
        if key in kw and (not isinstance(kw[key], (list, tuple)) or len(kw[key]) > MAX_STAGES):
            _fail(s, f"network.{key}", kw[key], f"must be a list of at most {MAX_STAGES} entries")
    if "deep_supervision" in kw:
        _bool(kw["deep_supervision"], "network.deep_supervision", s)
    if kw.get("dropout") is not None:
        _float(kw["dropout"], "network.dropout", s, 0.0, 1.0, hi_open=True)
    return NetworkSettings(str(spec.name), kw)


# ----------------------------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class PlanSettings:
    """What a plan asks of the machine, checked against the cost bounds, plus its three typed sections.

    Attributes:
        n_classes: output classes (``n_classes``), in ``[1, MAX_CLASSES]``.
        n_outputs: output channels: one per region for a region plan, else ``n_classes``.
        in_channels: input channels (``len(channel_names)``), in ``[1, MAX_CHANNELS]``.
        patch_size: the patch (2 or 3 axes, each in ``[1, MAX_PATCH_AXIS]``, at most ``MAX_PATCH_VOXELS``).
        batch_size: training samples per step (``batch_size``, default 2), in ``[1, MAX_BATCH]``.
        training / inference / network: the sections (:func:`training_settings`, :func:`inference_settings`,
            :func:`network_settings`).
    """

    n_classes: int
    n_outputs: int
    in_channels: int
    patch_size: tuple[int, ...]
    batch_size: int
    training: TrainingSettings
    inference: InferenceSettings
    network: NetworkSettings | None

    @property
    def patch_voxels(self) -> int:
        return math.prod(self.patch_size)


def parse_plan_settings(plan: Mapping[str, Any], source: str | Path | None = None) -> PlanSettings:
    """Parse and bound a whole plan before anything is allocated for it: the gate for plans from files others
    made (checkpoints, model bundles).

    Args:
        plan: the plan (a JSON object).
        source: the plan's file, named in the error message.

    Returns:
        the frozen :class:`PlanSettings`.

    Raises:
        PlanError: a section as :func:`training_settings` / :func:`inference_settings` /
            :func:`network_settings` says, or a top-level field out of its bound (``n_classes``, channels,
            ``patch_size``, ``batch_size``, ``regions``, the inference batch's logit elements).
    """
    if not isinstance(plan, Mapping):
        raise PlanError(f"a plan must be a JSON object, not {type(plan).__name__}", source)
    s = source
    n_classes = _int(plan.get("n_classes"), "n_classes", s, 1, MAX_CLASSES)
    names = plan.get("channel_names")
    if not isinstance(names, (Mapping, list, tuple)) or not 0 < len(names) <= MAX_CHANNELS:
        _fail(s, "channel_names", names, f"must name 1 to {MAX_CHANNELS} input channels")
    patch = plan.get("patch_size")
    if not isinstance(patch, (list, tuple)) or len(patch) not in (2, 3):
        _fail(s, "patch_size", patch, "must be 2 or 3 integers")
    patch_size = tuple(_int(p, f"patch_size[{i}]", s, 1, MAX_PATCH_AXIS) for i, p in enumerate(patch))
    if math.prod(patch_size) > MAX_PATCH_VOXELS:
        _fail(s, "patch_size", list(patch_size), f"has {math.prod(patch_size):,} voxels (at most "
                                                 f"{MAX_PATCH_VOXELS:,})")
    batch = _int(plan.get("batch_size", 2), "batch_size", s, 1, MAX_BATCH)
    regions = plan.get("regions")
    n_outputs = n_classes
    if regions:
        if not isinstance(regions, (list, tuple)) or len(regions) > MAX_CLASSES:
            _fail(s, "regions", regions, f"must be a list of at most {MAX_CLASSES} regions")
        n_outputs = len(regions)
    inference = inference_settings(plan, s)
    elements = inference.batch_size * math.prod(patch_size) * n_outputs
    if elements > MAX_WINDOW_BATCH_ELEMENTS:
        _fail(s, "inference.batch_size", inference.batch_size,
              f"x patch {math.prod(patch_size):,} voxels x {n_outputs} outputs = {elements:,} logits (at most "
              f"{MAX_WINDOW_BATCH_ELEMENTS:,})")
    return PlanSettings(n_classes=n_classes, n_outputs=n_outputs, in_channels=len(names), patch_size=patch_size,
                        batch_size=batch, training=training_settings(plan, s), inference=inference,
                        network=network_settings(plan, s))


__all__ = [
    "DEFAULT_FULL_EVERY",
    "DEFAULT_VAL_PATCHES",
    "INFERENCE_KEYS",
    "MAX_BATCH",
    "MAX_CHANNELS",
    "MAX_CLASSES",
    "MAX_INFERENCE_BATCH",
    "MAX_NOISE_PASSES",
    "MAX_OVERLAP",
    "MAX_PATCH_AXIS",
    "MAX_PATCH_VOXELS",
    "MAX_TTA_PASSES",
    "MAX_WINDOW_BATCH_ELEMENTS",
    "TRAINING_KEYS",
    "InferenceSettings",
    "NetworkSettings",
    "PlanSettings",
    "Spec",
    "TrainingSettings",
    "freeze",
    "inference_settings",
    "network_settings",
    "parse_plan_settings",
    "parse_spec",
    "thaw",
    "training_settings",
]
