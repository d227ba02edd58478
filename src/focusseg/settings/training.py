"""The plan's ``training`` section as a typed, frozen, validated object (:func:`training_settings`).

Every key has one type, one range and one default; a key the code base never writes or reads is refused, naming
the known keys. Where the code has no single default for a key the field is None when the plan leaves it out, and
each reader keeps its own default (the field's comment says which).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from focusseg.errors import PlanError
from focusseg.settings.checks import (
    MAX_EPOCHS,
    MAX_ITERATIONS_PER_EPOCH,
    MAX_SEED,
    MAX_STAGES,
    MAX_TOTAL_ITERATIONS,
    MAX_VAL_PATCHES,
    check_bool,
    check_finite_json,
    check_float,
    check_int,
    check_known,
    check_mapping,
    fail,
    freeze,
    read_section,
    show_value,
    thaw,
)
from focusseg.settings.spec import Spec, parse_optional_spec

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
        channels_last: memory format for 3D training: False (contiguous), True (the whole network and its input in
            channels-last 3D) or ``"thin"`` (only the convolutions with at most
            :data:`~focusseg.nets.layout.THIN_CHANNELS` input or output channels; :mod:`focusseg.nets.layout`).
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
    channels_last: bool | str = False
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
    ds = check_mapping(v, path, src)
    check_known(ds, DEEP_SUPERVISION_OPTIONS, path, src)
    w = ds.get("weights", "nnunet")
    if isinstance(w, str):
        if w != "nnunet":
            fail(src, f"{path}.weights", w, "must be \"nnunet\" or a list of non-negative numbers")
    elif isinstance(w, (list, tuple)) and 0 < len(w) <= MAX_STAGES:
        for i, x in enumerate(w):
            check_float(x, f"{path}.weights[{i}]", src, 0.0)
    else:
        fail(src, f"{path}.weights", w, f"must be \"nnunet\" or 1 to {MAX_STAGES} non-negative numbers")
    if ds.get("n_outputs") is not None:
        check_int(ds["n_outputs"], f"{path}.n_outputs", src, 1, MAX_STAGES)
    if "mode" in ds and not isinstance(ds["mode"], str):
        fail(src, f"{path}.mode", ds["mode"], "must be a string")
    return freeze(ds)


def _loader(v: Any, src: str | Path | None) -> Mapping[str, Any] | None:
    path = "training.loader"
    if v is None:
        return None
    spec = check_mapping(v, path, src)
    unknown = sorted(set(spec) - {"workers", "mode"})
    if unknown:  # the wording of focusseg.data.loader.parse_loader_spec
        raise PlanError(f"training.loader: unknown option(s) {unknown} (known: workers, mode)", src)
    if "mode" in spec and spec["mode"] not in LOADER_MODES:
        fail(src, f"{path}.mode", spec["mode"], f"must be one of {', '.join(LOADER_MODES)}")
    if spec.get("workers") is not None:
        check_int(spec["workers"], f"{path}.workers", src, 1, 1024)
    return freeze(spec)


def _init_from(v: Any, src: str | Path | None) -> Mapping[str, Any] | None:
    path = "training.init_from"
    if v in (None, {}, False):
        return None
    if not isinstance(v, Mapping) or not isinstance(v.get("source"), str):
        fail(src, path, v, "must be an object with a 'source' path (a run folder or .pt)")
    check_known(v, INIT_FROM_OPTIONS, path, src)
    for key in ("freeze_encoder_epochs", "warmup_epochs"):
        if key in v:
            check_int(v[key], f"{path}.{key}", src, 0, MAX_EPOCHS)
    if v.get("sha256") is not None and not isinstance(v["sha256"], str):
        fail(src, f"{path}.sha256", v["sha256"], "must be a string")
    check_finite_json(v, path, src)
    return freeze(v)


def _amp(v: Any, src: str | Path | None) -> str | None:
    if v is None:
        return None
    if v is False:  # ``--set training.amp=false`` parses as JSON false: no autocast, as before
        return "false"
    if not isinstance(v, str) or v.lower() not in AMP_VALUES:
        fail(src, "training.amp", v, f"must be one of {', '.join(AMP_VALUES)}")
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
        check_finite_json(v, "training.compile", src)
        return freeze(v)
    raise PlanError(f"training.compile {show_value(v)} must be true, false or an object of torch.compile options", src)


def _augmentation(v: Any, src: str | Path | None) -> str | Mapping[str, Any]:
    if isinstance(v, str) and v:
        return v
    if isinstance(v, Mapping):
        check_mapping(v, "training.augmentation", src)
        check_finite_json(v, "training.augmentation", src)
        if "preset" in v and not isinstance(v["preset"], str):
            fail(src, "training.augmentation.preset", v["preset"], "must be a preset name")
        return freeze(v)
    fail(src, "training.augmentation", v, "must be a preset name or an object of augmentation options")


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
    tr = read_section(plan, "training", TRAINING_KEYS, source)
    if tr is None:
        return TrainingSettings()
    s = source
    kw: dict[str, Any] = {}
    if "loss" in tr:
        kw["loss"] = parse_optional_spec(tr["loss"], "training.loss", s, compound=True)
    if "deep_supervision" in tr:
        kw["deep_supervision"] = _deep_supervision(tr["deep_supervision"], s)
    for key in ("optimizer", "lr_schedule", "class_weighter", "task"):
        if key in tr:
            kw[key] = parse_optional_spec(tr[key], f"training.{key}", s)
    if kw.get("optimizer") is not None and "lr" in kw["optimizer"].kwargs:
        check_float(kw["optimizer"].kwargs["lr"], "training.optimizer.lr", s, 0.0, lo_open=True)
    if kw.get("lr_schedule") is not None and "horizon_epochs" in kw["lr_schedule"].kwargs:
        check_int(kw["lr_schedule"].kwargs["horizon_epochs"], "training.lr_schedule.horizon_epochs", s, 1, MAX_EPOCHS)
    if "sampler" in tr:
        kw["sampler"] = parse_optional_spec(tr["sampler"], "training.sampler", s) or Spec("foreground")
    if "grad_clip" in tr:
        clip = tr["grad_clip"]
        kw["grad_clip"] = None if clip is None else check_float(clip, "training.grad_clip", s, 0.0, lo_open=True)
    for key, hi in (("max_epochs", MAX_EPOCHS), ("iterations_per_epoch", MAX_ITERATIONS_PER_EPOCH)):
        if tr.get(key) is not None:
            kw[key] = check_int(tr[key], f"training.{key}", s, 1, hi)
    if "foreground_oversampling" in tr:
        kw["foreground_oversampling"] = check_float(tr["foreground_oversampling"],
                                                    "training.foreground_oversampling", s, 0.0, 1.0)
    if "augmentation" in tr:
        kw["augmentation"] = _augmentation(tr["augmentation"], s)
    if "amp" in tr:
        kw["amp"] = _amp(tr["amp"], s)
    if tr.get("validation"):
        mode = tr["validation"]
        if not isinstance(mode, str) or mode.lower() not in VALIDATION_MODES:
            fail(s, "training.validation", mode, f"must be one of {', '.join(VALIDATION_MODES)}")
        kw["validation"] = mode.lower()
    if tr.get("val_patches"):
        kw["val_patches"] = check_int(tr["val_patches"], "training.val_patches", s, 1, MAX_VAL_PATCHES)
    if "val_every" in tr:
        kw["val_every"] = check_int(tr["val_every"], "training.val_every", s, 1, MAX_EPOCHS)
    if "val_full_every" in tr:
        kw["val_full_every"] = check_int(tr["val_full_every"], "training.val_full_every", s, 0, MAX_EPOCHS)
    if tr.get("val_max_cases") is not None:
        kw["val_max_cases"] = check_int(tr["val_max_cases"], "training.val_max_cases", s, 0) or None
    if "channels_last" in tr:
        v = tr["channels_last"]
        if v != "thin" and not isinstance(v, bool):
            fail(s, "training.channels_last", v, 'must be true or false, or "thin"')
        kw["channels_last"] = v
    if "in_memory" in tr:
        kw["in_memory"] = check_bool(tr["in_memory"], "training.in_memory", s)
    if "compile" in tr:
        kw["compile"] = _compile(tr["compile"], s)
    if "seed" in tr:
        kw["seed"] = check_int(tr["seed"], "training.seed", s, 0, MAX_SEED)
    if "max_nonfinite_steps" in tr:
        kw["max_nonfinite_steps"] = check_int(tr["max_nonfinite_steps"], "training.max_nonfinite_steps", s, 1)
    if "loader" in tr:
        kw["loader"] = _loader(tr["loader"], s)
    if "init_from" in tr:
        kw["init_from"] = _init_from(tr["init_from"], s)
    total = kw.get("max_epochs", 0) * kw.get("iterations_per_epoch", 0)
    if total > MAX_TOTAL_ITERATIONS:
        fail(s, "training.max_epochs", kw["max_epochs"],
             f"times training.iterations_per_epoch {kw['iterations_per_epoch']} exceeds {MAX_TOTAL_ITERATIONS:,} "
             "iterations")
    return TrainingSettings(**kw)
