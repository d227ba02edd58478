"""focusseg's public Python API: the CLI's powers as typed functions (the CLI is a thin layer over them).

``check`` a dataset, ``plan`` it, ``train`` a fold (a :class:`Run`), ``crossval`` (a :class:`CrossValidation`),
``evaluate`` predictions, and predict with :class:`Predictor` (a run, a cross-validation or a model bundle).
Plugins: :func:`load_plugins` (installed ones and modules named) and :func:`register` (what a plugin calls).
Errors are :mod:`focusseg.errors`' typed exceptions, each one line naming the file and the problem.
``import focusseg`` exports these names lazily (``focusseg.train`` imports this module, and torch, when used).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from focusseg.data.check import Problem, check_dataset
from focusseg.devices import resolve_device
from focusseg.errors import CheckFailed, MissingFileError, PlanError, RunFolderError, UsageError
from focusseg.export import load_bundle
from focusseg.inference.folders import predict_folder as predict_folder_files
from focusseg.inference.loading import CHECKPOINTS, model_files
from focusseg.inference.postprocess_selection import read_postprocessing_file
from focusseg.inference.predictor import EnsemblePredictor, crossval_predictor
from focusseg.inference.predictor import Predictor as RunPredictor
from focusseg.io import Geometry, load_dataset_spec, read_image
from focusseg.io.atomic import save_json
from focusseg.io.checkpoint import check_sha256, parse_sha256
from focusseg.io.jsonfile import read_json
from focusseg.losses import LOSSES
from focusseg.nets.base import register_network
from focusseg.nnunet import read_model_folder
from focusseg.nnunet.convert import checkpoint_files as nnunet_checkpoint_files
from focusseg.nnunet.convert import load_fold_plan, model_postprocessing
from focusseg.nnunet.plans_import import plan_from_plans
from focusseg.planning.fingerprint import compute_fingerprint
from focusseg.planning.planner import make_plan
from focusseg.plugins import AUGMENTATIONS, RECIPES, PluginSource, load_plugins, plugin_parts
from focusseg.recipes import FORMS, load_recipe
from focusseg.registry import Registry
from focusseg.runfolder import CROSSVAL_JSON, PLAN_JSON, fold_dirs, is_crossval_dir, read_plan
from focusseg.strategies import CLASS_WEIGHTERS, LR_CONTROLLERS, OPTIMIZERS, SAMPLERS
from focusseg.workflows.crossval import PLANNER_PLAN, run_crossval
from focusseg.workflows.evaluate import evaluate
from focusseg.workflows.plan import finish_plan
from focusseg.workflows.train import run_training

#: Registry kinds :func:`register` accepts, and the registries the built-ins use.
REGISTRY_KINDS: dict[str, Registry] = {
    "network": None,  # type: ignore[dict-item]  # networks register with their divisor (register_network)
    "loss": LOSSES,
    "sampler": SAMPLERS,
    "class_weighter": CLASS_WEIGHTERS,
    "lr_controller": LR_CONTROLLERS,
    "optimizer": OPTIMIZERS,
    "augmentation": AUGMENTATIONS,
    "recipe": RECIPES,
}
#: The most bytes of a summary or cross-validation record read back from a run folder.
MAX_RECORD_BYTES = 64 * 1024 * 1024


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class CheckReport:
    """The dataset check's result.

    Args:
        data: the dataset folder.
        problems: one :class:`~focusseg.data.check.Problem` per problem (``str``: ``"<file>: <problem>"``).
    """

    data: Path
    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the check found no problem."""
        return not self.problems

    def raise_for_problems(self) -> None:
        """Raise when the check found problems.

        Raises:
            CheckFailed: with every problem (the CLI prints one ``error:`` line each).
        """
        if self.problems:
            raise CheckFailed(list(self.problems))


@dataclass(frozen=True)
class Run:
    """A trained fold's run folder, as read back from it.

    Args:
        path: the run folder.
        plan: its ``plan.json``.
        summary: its ``summary.json`` (best validation Dice, epochs, iterations, final validation...).
        metrics: the held-out cases' scores (``summary["final_validation"]``), or None when not validated.
    """

    path: Path
    plan: dict = field(repr=False)
    summary: dict = field(repr=False)
    metrics: dict | None = field(default=None, repr=False)

    @classmethod
    def from_folder(cls, path: str | Path, summary: Mapping[str, Any] | None = None) -> Run:
        """Read a run folder (its plan through :func:`focusseg.runfolder.read_plan`, its summary bounded).

        Args:
            path: the run folder.
            summary: the summary already at hand (what training returned), instead of reading ``summary.json``.

        Returns:
            The :class:`Run`.

        Raises:
            MissingFileError: no plan or no summary in the folder.
            PlanError: an unreadable plan.
            RunFolderError: an unreadable summary.
        """
        path = Path(path)
        plan = read_plan(path / PLAN_JSON)
        if summary is None:
            summary = _read_record(path / "summary.json")
        summary = dict(summary)
        metrics = summary.get("final_validation")
        return cls(path, plan, summary, metrics if isinstance(metrics, dict) else None)


@dataclass(frozen=True)
class CrossValidation:
    """A cross-validation folder, as read back from it.

    Args:
        path: the cross-validation folder.
        folds: the finished folds' runs, by fold number.
        result: its ``crossval.json`` (metrics per fold and pooled, post-processing chosen on the pool).
    """

    path: Path
    folds: tuple[Run, ...] = field(repr=False)
    result: dict = field(repr=False)

    @classmethod
    def from_folder(cls, path: str | Path, result: Mapping[str, Any] | None = None) -> CrossValidation:
        """Read a cross-validation folder.

        Args:
            path: the folder (``fold_K`` runs inside).
            result: the result already at hand, instead of reading ``crossval.json``.

        Returns:
            The :class:`CrossValidation`.

        Raises:
            MissingFileError: no ``crossval.json`` (and no result given).
            RunFolderError: an unreadable record.
        """
        path = Path(path)
        if result is None:
            result = _read_record(path / CROSSVAL_JSON)
        return cls(path, tuple(Run.from_folder(d) for d in fold_dirs(path)), dict(result))


def _read_record(path: Path) -> dict:
    if not path.is_file():
        raise MissingFileError("not found (has the run finished?)", path)
    record = read_json(path, RunFolderError, max_bytes=MAX_RECORD_BYTES)
    if not isinstance(record, dict):
        raise RunFolderError("not a focusseg record (expected a JSON object)", path)
    return record


# ------------------------------------------------------------------ plugins


def register(kind: str, name: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a plugin part in the registry the built-ins use (what a plugin's ``register()`` calls).

    Kinds: ``network`` (a builder ``fn(in_channels, out_channels, spatial_dims, deep_supervision, **kw)``;
    ``options``: ``divisor`` (required), ``deep_supervision``, ``spatial_dims``, ``needs_patch_size`` as
    :func:`focusseg.nets.base.register_network`), ``loss``, ``sampler``, ``class_weighter``, ``lr_controller``,
    ``optimizer`` (builders called with the spec's options), ``augmentation`` (a zero-argument function returning
    augmentation options, ``AugmentConfig.from_dict`` input) and ``recipe`` (a zero-argument function returning a
    recipe dict or the path of a recipe JSON file).

    Args:
        kind: one of :data:`REGISTRY_KINDS`.
        name: the name plans and recipes use.
        options: the network's facts (``kind="network"`` only).

    Returns:
        A decorator that registers the function and returns it unchanged.

    Raises:
        UsageError: an unknown kind, or options for a kind that takes none.
    """
    if kind not in REGISTRY_KINDS:
        raise UsageError(f"unknown plugin part kind {kind!r}; known: {', '.join(REGISTRY_KINDS)}")
    if kind == "network":
        if "divisor" not in options:
            raise UsageError(f"network {name!r}: register('network', name, divisor=...) needs its divisor rule")
        return register_network(name, **options)
    if options:
        raise UsageError(f"register({kind!r}, ...) takes no options, got {', '.join(sorted(options))}")
    return REGISTRY_KINDS[kind].register(name)


def list_plugins(modules: Iterable[str] = ()) -> list[tuple[PluginSource, str, str]]:
    """Load the installed plugins and ``modules``, and list what plugins registered.

    Args:
        modules: module names to load as plugins (``MODULE`` or ``MODULE:FUNCTION``).

    Returns:
        ``(plugin, kind, name)`` rows (:func:`focusseg.plugins.plugin_parts`).

    Raises:
        UsageError: a module that cannot be found.
        PluginError: a plugin that fails to load.
    """
    load_plugins(modules)
    return plugin_parts()


def resolve_recipe(recipe: str | Path | Mapping[str, Any] | None, form: str | None = None) -> dict | None:
    """A recipe from a name (packaged, or registered by a plugin), a path to a recipe JSON, or a dict.

    Args:
        recipe: the recipe; None for none.
        form: force the recipe's ``cpu`` or ``gpu`` form (default: the device's).

    Returns:
        The recipe dict (a copy), or None.

    Raises:
        UsageError: an unknown recipe, an unreadable or malformed recipe file, or an unknown form.
    """
    if form is not None and form not in FORMS:
        raise UsageError(f"recipe form must be one of {', '.join(FORMS)}, got {form!r}")
    if recipe is None:
        return None
    load_plugins()
    if isinstance(recipe, Mapping):
        chosen = _checked_recipe(dict(recipe), "the recipe given")
    elif isinstance(recipe, str) and recipe in RECIPES:
        made = RECIPES.build(recipe)
        chosen = load_recipe(made) if isinstance(made, (str, Path)) else _checked_recipe(made, f"recipe {recipe!r}")
        chosen["name"] = recipe
    else:
        chosen = load_recipe(recipe)
    if form is not None:
        chosen["form"] = form
    return chosen


def _checked_recipe(recipe: Any, what: str) -> dict:
    if not isinstance(recipe, dict) or not isinstance(recipe.get("plan", {}), dict) or not isinstance(
            recipe.get("gpu", {}), dict) or not isinstance((recipe.get("gpu") or {}).get("plan", {}), dict):
        raise UsageError(f"{what} is not a recipe: an object whose 'plan' (and 'gpu.plan') are objects of plan "
                         "overrides")
    out = copy.deepcopy(recipe)
    out.setdefault("name", "custom")
    out.setdefault("plan", {})
    return out


# ------------------------------------------------------------------ check, plan


def check(data: str | Path, workers: int = 2, progress: bool = False) -> CheckReport:
    """Validate a dataset before training (as ``focusseg check``): every problem, each naming its file.

    Args:
        data: an nnU-Net v2 raw dataset folder (dataset.json, imagesTr/, labelsTr/).
        workers: parallel processes.
        progress: show a progress bar.

    Returns:
        The :class:`CheckReport` (``.ok``, ``.problems``; ``.raise_for_problems()`` raises :class:`CheckFailed`).

    Raises:
        MissingFileError: no dataset folder or dataset.json.
        DatasetError: a dataset.json that cannot be used at all.
    """
    problems = check_dataset(Path(data), workers=workers, progress=progress)
    return CheckReport(Path(data), tuple(problems))


def plan(data: str | Path, out: str | Path | None = None, device: str = "auto", gpu_memory: float | None = None,
         preset: str | None = None, overrides: Mapping[str, Any] | None = None,
         recipe: str | Path | Mapping[str, Any] | None = None, recipe_form: str | None = None, check: bool = True,
         progress: bool = False, nnunet_plans: str | Path | None = None, configuration: str | None = None) -> dict:
    """Fingerprint a dataset and make the plan a run would train (as ``focusseg plan``); or, with
    ``nnunet_plans``, convert nnU-Net's plans for the dataset instead of planning it.

    Args:
        data: the dataset folder.
        out: write the plan here (atomically) as well; None: only return it.
        device: plan for ``cpu``, ``cuda`` (no GPU needed here) or ``auto`` (this machine; ``cuda`` when a GPU
            budget is asked for).
        gpu_memory: GB of the card to plan for (cuda).
        preset: a GPU budget: ``m``, ``l``, ``xl`` or ``whole``; or nnU-Net's Residual Encoder presets
            ``resenc-m``, ``resenc-l``, ``resenc-xl`` (nnU-Net's plan and network for its 8 / 24 / 40 GB targets,
            on any device).
        overrides: plan overrides (nested, as ``--set`` gives them: ``{"training": {"max_epochs": 5}}``).
        recipe: a recipe name (packaged or a plugin's), a path to a recipe JSON, or a recipe dict.
        recipe_form: the recipe's ``cpu`` or ``gpu`` form (default: the form of the device planned for).
        check: check the dataset first (problems raise :class:`CheckFailed`).
        progress: show progress bars.
        nnunet_plans: an nnU-Net plans file (``nnUNetPlans.json``): the plan is its ``configuration`` converted
            (:func:`focusseg.nnunet.plans_import.plan_from_plans`, labels and channels from the dataset's
            dataset.json); recipes and overrides apply on top, except a recipe's ``network``, which is ignored
            with one warning line (the network is nnU-Net's).
        configuration: with ``nnunet_plans``: ``3d_fullres`` (default) or ``3d_lowres``.

    Returns:
        The plan (a dict, as ``plan.json`` holds it).

    Raises:
        CheckFailed: the dataset check found problems.
        UsageError: a GPU budget for a CPU plan, an unknown recipe or form, a GPU budget or preset with
            ``nnunet_plans``.
        PlanError: overrides that make no usable plan; a plans file refused (a cascade or 2D configuration...).
    """
    data = Path(data)
    load_plugins()
    chosen_recipe = resolve_recipe(recipe) if recipe is not None else None
    if recipe_form is not None and recipe_form not in FORMS:
        raise UsageError(f"--recipe-form must be one of {', '.join(FORMS)}, got {recipe_form!r}")
    if nnunet_plans is not None:
        if preset is not None or gpu_memory is not None:
            raise UsageError("--nnunet-plans gives patch, batch and network: no --preset or --gpu-memory")
        dev = str(device) if str(device).startswith("cuda") else resolve_device(device).type
        if check:
            problems = check_dataset(data)
            if problems:
                raise CheckFailed(problems)
        p = finish_plan(nnunet_plan(data, nnunet_plans, configuration), without_network(chosen_recipe),
                        dict(overrides or {}), dev, recipe_form)
        if chosen_recipe is not None:
            p["recipe"] = chosen_recipe["name"]
        if out is not None:
            save_json(p, Path(out))
        return p
    if configuration is not None:
        raise UsageError("--configuration names an nnU-Net configuration only with --nnunet-plans (focusseg's own: "
                         "--set configuration=2d)")
    resenc = preset is not None and str(preset).strip().lower().startswith("resenc-")
    gpu_asked = gpu_memory is not None or (preset is not None and not resenc)  # nnU-Net's presets fit any device
    if device == "auto" and gpu_asked:
        dev = "cuda"  # a GPU budget was asked for: plan for a card, visible here or not
    elif str(device).startswith("cuda"):
        dev = str(device)  # planning for a card needs none on this machine
    else:
        dev = resolve_device(device).type
    if gpu_asked and not dev.startswith("cuda"):
        raise UsageError(f"--gpu-memory and --preset plan for a GPU, but --device is {device!r}",
                         hint="use --device cuda (no GPU needed to plan)")
    if check:
        problems = check_dataset(data)
        if problems:
            raise CheckFailed(problems)
    p = make_plan(compute_fingerprint(data, progress=progress), device=dev, gpu_memory_gb=gpu_memory, preset=preset,
                  spec=load_dataset_spec(data))  # the spec carries region-based labels (focusseg.regions)
    p = finish_plan(p, chosen_recipe, dict(overrides or {}), dev, recipe_form)  # as training finishes it
    if chosen_recipe is not None:
        p["recipe"] = chosen_recipe["name"]
    if out is not None:
        save_json(p, Path(out))
    return p


# ------------------------------------------------------------------ train, crossval


def nnunet_plan(data: str | Path, nnunet_plans: str | Path, configuration: str | None = None) -> dict:
    """The focusseg plan of an nnU-Net plans file's configuration for the dataset ``data`` (its dataset.json
    gives labels, channels and file ending): :func:`focusseg.nnunet.plans_import.plan_from_plans`.

    Raises:
        MissingFileError: no plans file or dataset.json.
        PlanError / UsageError: as :func:`~focusseg.nnunet.plans_import.plan_from_plans`.
    """
    data = Path(data)
    if not data.is_dir():
        raise MissingFileError("no such dataset folder", data)
    return plan_from_plans(nnunet_plans, data / "dataset.json", configuration or "3d_fullres", data.name)


def without_network(recipe: dict | None) -> dict | None:
    """``recipe`` without its plan overrides' ``network`` (both forms): on nnU-Net's plans the network is
    nnU-Net's. One ``warning:`` line on stderr when there was one to drop."""
    if recipe is None:
        return None
    out = copy.deepcopy(recipe)
    dropped = False
    for section in (out.get("plan"), (out.get("gpu") or {}).get("plan")):
        if isinstance(section, dict) and "network" in section:
            del section["network"]
            dropped = True
    if dropped:
        print(f"warning: recipe {out.get('name', 'custom')!r}: its network is ignored with --nnunet-plans (the "
              "network is the plans' own); its other settings apply", file=sys.stderr)
    return out


def _check_budget(time_budget: float | None) -> None:
    if time_budget is not None and not time_budget > 0:
        raise UsageError(f"--time-budget must be a positive number of minutes, got {time_budget}")


def train(data: str | Path, out: str | Path, fold: int | str = 0,
          recipe: str | Path | Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None,
          time_budget: float | None = None, device: str = "auto", recipe_form: str | None = None,
          resume: bool = False, overwrite: bool = False, plan: str | Path | None = None,
          preprocessed: str | Path | None = None, check: bool = True, progress: bool = False,
          init_from: str | Path | None = None, freeze_encoder_epochs: int | None = None,
          warmup_epochs: int | None = None, callbacks: Sequence[Any] = (), nnunet_plans: str | Path | None = None,
          configuration: str | None = None) -> Run:
    """Check the dataset, plan, preprocess and train one fold into a run folder; then predict and score the
    held-out cases (as ``focusseg train``).

    Args:
        data: the dataset folder.
        out: the run folder (plan, checkpoints, log, summary).
        fold: a fold 0-4 of the split, or ``"all"``.
        recipe: a recipe name (packaged or a plugin's), a path to a recipe JSON, or a recipe dict; None: default.
        overrides: plan overrides (nested: ``{"training": {"max_epochs": 5}}``).
        time_budget: minutes of wall time (stops there, keeps the best checkpoint); None: the plan's epochs.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        recipe_form: the recipe's ``cpu`` or ``gpu`` form (default: gpu on cuda, cpu otherwise).
        resume: continue from the latest checkpoint (only changes that are safe on resume).
        overwrite: delete this run folder's earlier focusseg results first.
        plan: a plan file to train instead of planning the dataset.
        preprocessed: the preprocessed store to (re)use.
        check: check the dataset first.
        progress: show progress bars.
        init_from: fine-tune from this run folder's best checkpoint (or a .pt file).
        freeze_encoder_epochs: with ``init_from``: the encoder does not train for N epochs.
        warmup_epochs: with ``init_from``: the learning rate rises linearly over N epochs.
        callbacks: observers called by the training loop (loggers).
        nnunet_plans: train on this nnU-Net plans file's ``configuration`` instead of planning (as :func:`plan`);
            a recipe's ``network`` is ignored with one warning line.
        configuration: with ``nnunet_plans``: ``3d_fullres`` (default) or ``3d_lowres``.

    Returns:
        The trained :class:`Run` (its plan, summary and held-out metrics).

    Raises:
        CheckFailed: the dataset check found problems.
        UsageError: contradictory options (``plan`` with ``nnunet_plans``...), a fold the split lacks, an unsafe
            change on resume.
        RunFolderError: the folder is in use, holds another run, or has nothing to resume.
        MissingPluginError: the plan needs a plugin that is not installed.
        PlanError: a plans file refused.
    """
    _check_budget(time_budget)
    load_plugins()
    chosen = resolve_recipe("default" if recipe is None else recipe, recipe_form)
    if nnunet_plans is None and configuration is not None:
        raise UsageError("--configuration names an nnU-Net configuration only with --nnunet-plans (focusseg's own: "
                         "--set configuration=2d)")
    if nnunet_plans is not None and plan is not None:
        raise UsageError("--plan and --nnunet-plans both give the plan: use one")
    with tempfile.TemporaryDirectory(prefix="focusseg-nnunet-plan-") as tmp:
        if nnunet_plans is not None:  # the converted plan, as a plan file run_training reads (and finishes)
            plan = save_json(nnunet_plan(data, nnunet_plans, configuration), Path(tmp) / PLAN_JSON)
            chosen = without_network(chosen)
        summary = run_training(data, out, fold=fold, recipe=chosen, overrides=dict(overrides or {}),
                               time_budget_min=time_budget, device=device, resume=resume, plan_path=plan,
                               preprocessed_dir=preprocessed, progress=progress, check=check, overwrite=overwrite,
                               init_from=init_from, freeze_encoder_epochs=freeze_encoder_epochs,
                               warmup_epochs=warmup_epochs, callbacks=list(callbacks))
    return Run.from_folder(out, summary)


def crossval(data: str | Path, out: str | Path, folds: str | Sequence[int] | int = "all",
             recipe: str | Path | Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None,
             time_budget: float | None = None, device: str = "auto", resume: bool = False, overwrite: bool = False,
             check: bool = True, progress: bool = False,
             on_fold: Callable[[int, str, dict], None] | None = None, nnunet_plans: str | Path | None = None,
             configuration: str | None = None) -> CrossValidation:
    """Train folds of a 5-fold cross-validation into ``out/fold_K`` with one shared plan and store, pool their
    held-out predictions and choose post-processing on the pool (as ``focusseg crossval``).

    Args:
        data: the dataset folder.
        out: the cross-validation folder.
        folds: folds to train: ``"all"``, ``"0-4"``, ``"0,1,2"``, a list of ints or one int.
        recipe: a recipe name (packaged or a plugin's), a path to a recipe JSON, or a recipe dict; None: default.
        overrides: plan overrides (nested).
        time_budget: minutes of wall time per fold.
        device: ``cpu``, ``cuda`` or ``auto``.
        resume: continue folds that have checkpoints.
        overwrite: train the chosen folds again from scratch.
        check: check the dataset first.
        progress: show progress bars.
        on_fold: called as ``on_fold(fold, status, summary)`` after each fold.
        nnunet_plans: every fold trains this nnU-Net plans file's ``configuration`` (as :func:`train`); the
            converted plan is the cross-validation's shared plan (``plan_planner.json``).
        configuration: with ``nnunet_plans``: ``3d_fullres`` (default) or ``3d_lowres``.

    Returns:
        The :class:`CrossValidation` (its finished folds and pooled result).

    Raises:
        UsageError: ``resume`` with ``overwrite``, bad folds, an output inside the dataset, a folder planned from
            other plans (without ``overwrite``).
        CheckFailed: the dataset check found problems.
        PlanError: a plans file refused.
    """
    if resume and overwrite:  # run_crossval lets overwrite win; refuse the contradiction
        raise UsageError("--resume and --overwrite contradict each other (continue the folds, or start them again)")
    _check_budget(time_budget)
    load_plugins()
    chosen = resolve_recipe("default" if recipe is None else recipe)
    if nnunet_plans is None and configuration is not None:
        raise UsageError("--configuration names an nnU-Net configuration only with --nnunet-plans (focusseg's own: "
                         "--set configuration=2d)")
    if nnunet_plans is not None:
        _share_nnunet_plan(Path(data), Path(out), nnunet_plan(data, nnunet_plans, configuration), overwrite)
        chosen = without_network(chosen)
    result = run_crossval(data, out, folds if isinstance(folds, (str, list, tuple)) else [int(folds)],
                          recipe=chosen, overrides=dict(overrides or {}), time_budget_min=time_budget, device=device,
                          resume=resume, overwrite=overwrite, check=check, progress=progress, on_fold=on_fold)
    return CrossValidation.from_folder(out, result)


def _share_nnunet_plan(data: Path, cv_dir: Path, converted: dict, overwrite: bool) -> None:
    """Make ``converted`` the cross-validation's shared plan (``cv_dir/plan_planner.json``, which every fold
    trains): written when absent (or with ``overwrite``), kept when it is the same plan, else refused."""
    if cv_dir.resolve() == data.resolve() or data.resolve() in cv_dir.resolve().parents:
        return  # run_crossval refuses an output inside the dataset, before anything is written
    if cv_dir.exists() and not cv_dir.is_dir():
        return  # run_crossval's own message
    path = cv_dir / PLANNER_PLAN
    if path.is_symlink():
        raise UsageError("the shared plan is a link: not written through", path)
    if path.is_file() and not overwrite:
        try:
            same = read_plan(path) == json.loads(json.dumps(converted))
        except PlanError:
            same = False
        if not same:
            raise UsageError("the cross-validation folder was planned from other plans", path,
                             hint="use another --out, or --overwrite to train every chosen fold again")
        return
    save_json(converted, path)


# ------------------------------------------------------------------ evaluate


# ------------------------------------------------------------------ predict


def _is_nnunet_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "plans.json").is_file() and (path / "dataset.json").is_file()


def _nnunet_predictor(path: Path, checkpoint: str, folds: Sequence[int | str] | None, device: torch.device,
                      uncertainty: str | None, postprocess: bool, postprocessing_file: str | Path | None,
                      expected: set[str], digests: list[tuple[Path, str]]) -> EnsemblePredictor:
    """An nnU-Net model folder's folds as an ensemble of focusseg predictors (weight ``1/n_folds`` each); every
    checkpoint's SHA-256 is appended to ``digests`` (and checked against ``expected``) before it is parsed."""
    model = read_model_folder(path, checkpoint_name=None)
    files = nnunet_checkpoint_files(path, checkpoint, folds)
    model = dataclasses.replace(model, checkpoints=files)
    for file in files.values():
        digests.append((file, check_sha256(file, expected)))
    members = []
    for fold, file in files.items():
        converted = load_fold_plan(model, fold, file)
        members.append(RunPredictor(converted.plan, converted.weights, device, source=file))
    if not postprocess:
        steps: list[dict] = []
    elif postprocessing_file is not None:
        steps = read_postprocessing_file(postprocessing_file, [int(v) for v in members[0].plan["labels"].values()])
    else:
        steps = model_postprocessing(model)
    return EnsemblePredictor(members, [1.0 / len(members)] * len(members), uncertainty, postprocessing=steps)


def _mixed_ensemble(models: list[Path], weights: list[float] | None, checkpoint: str,
                    folds: Sequence[int | str] | None, device: torch.device, uncertainty: str | None,
                    postprocess: bool, postprocessing_file: str | Path | None, expected: set[str],
                    digests: list[tuple[Path, str]]) -> EnsemblePredictor:
    """An ensemble of runs and nnU-Net model folders: each model has one weight (default equal), an nnU-Net
    folder's folds share it equally (its ``folds`` chosen as for one folder). Post-processing: ``postprocessing_file``
    when given, else none (each model's own was chosen on that model's predictions, not the ensemble's)."""
    if weights is not None and len(weights) != len(models):
        raise UsageError(f"need one weight per model: {len(models)} models, weights {weights}")
    members, member_weights = [], []
    for model, weight in zip(models, weights or [1.0] * len(models)):
        if _is_nnunet_model_folder(model):
            group = _nnunet_predictor(model, checkpoint, folds, device, None, False, None, expected, digests)
            members += group.members
            member_weights += [weight * w for w in group.weights]
        elif is_crossval_dir(model):
            raise UsageError("a cross-validation folder ensembles with other cross-validation folders only", model)
        else:
            for file in model_files(model, checkpoint):
                digests.append((file, check_sha256(file, expected)))
            members.append(RunPredictor.from_run(model, checkpoint, device))
            member_weights.append(weight)
    steps: list[dict] = []
    if postprocess and postprocessing_file is not None:
        steps = read_postprocessing_file(postprocessing_file, [int(v) for v in members[0].plan["labels"].values()])
    return EnsemblePredictor(members, member_weights, uncertainty, postprocessing=steps)


class Predictor:
    """A trained model ready to segment images: one run, a cross-validation's folds (ensembled), a model bundle or
    an nnU-Net v2 model folder (converted: :mod:`focusseg.nnunet.convert`).

    Load with :meth:`Predictor.load`; then :meth:`predict` one image (a path, or an array with its affine) or
    :meth:`predict_folder` a folder of cases. Nothing is executed from the files loaded (checkpoints load without
    pickled code; a network a plugin provided needs that plugin installed).
    """

    def __init__(self, ensemble: EnsemblePredictor, source: Path, kind: str) -> None:
        """Wrap a loaded ensemble (use :meth:`load`).

        Args:
            ensemble: the members, weights and post-processing.
            source: the run, cross-validation folder or bundle it came from.
            kind: ``"run"``, ``"crossval"``, ``"bundle"`` or ``"nnunet"``.
        """
        self.ensemble = ensemble
        self.source = source
        self.kind = kind
        #: ``(file, SHA-256)`` of every bundle or checkpoint file loaded, in load order.
        self.digests: list[tuple[Path, str]] = []

    @classmethod
    def load(cls, path: str | Path, checkpoint: str = "best", device: str | torch.device = "auto",
             postprocess: bool = True, *, ensemble: Sequence[str | Path] = (), weights: Sequence[float] | None = None,
             uncertainty: str | None = None, postprocessing_file: str | Path | None = None,
             expect_sha256: Iterable[str] = (), folds: Sequence[int | str] | None = None) -> Predictor:
        """Load a run folder, a cross-validation folder (every finished fold), a model bundle ``.zip`` or an nnU-Net
        v2 model folder, with other runs (or cross-validations) to ensemble with -- what ``focusseg predict`` loads.

        An nnU-Net model folder (``<trainer>__<plans>__<configuration>/`` with plans.json, dataset.json and
        ``fold_K/``) is converted into focusseg plans and weights (:func:`focusseg.nnunet.convert.plan_from_nnunet`):
        each fold's checkpoint is read without executing code, its folds are averaged (weight ``1/n_folds``), and
        its post-processing (``postprocessing.json`` / ``.pkl``, read without running code) becomes focusseg's
        ``keep_largest_component`` steps.

        Provenance first: the SHA-256 of the bundle, or of every checkpoint file that will be loaded, is
        computed streaming before the file is parsed (kept in :attr:`digests`); with ``expect_sha256`` a file
        whose digest is not one of them is refused, as pip's hash-checking mode does.

        Args:
            path: the run folder, cross-validation folder or bundle.
            checkpoint: ``best``, ``final`` or ``latest`` (a bundle carries its own; an nnU-Net folder: ``final``
                reads ``checkpoint_final.pth``, ``best`` ``checkpoint_best.pth`` or, for a fold without one, its
                final checkpoint).
            device: ``cpu``, ``cuda``, ``cuda:N``, ``auto`` or a ``torch.device``.
            postprocess: apply the model's post-processing (chosen on its validation).
            ensemble: more run folders (or, with a cross-validation, more cross-validation folders) whose
                predictions are averaged with this one's; nnU-Net model folders ensemble with runs and other
                nnU-Net folders (each folder's folds share its weight equally).
            weights: one ensemble weight per model (``path`` first); default equal (per fold for cross-validations
                and nnU-Net folders).
            uncertainty: also give an uncertainty map: ``entropy``, ``variance`` or ``inverse_confidence``.
            postprocessing_file: apply this ``postprocessing.json``'s steps instead of the model's.
            expect_sha256: hex digests; every file loaded must match one of them.
            folds: an nnU-Net model folder's folds to use (integers or ``"all"``); default every ``fold_K`` present
                (``fold_all`` when there is none).

        Returns:
            The :class:`Predictor`.

        Raises:
            UsageError: a checkpoint name not best/final/latest (best/final for an nnU-Net folder), ensemble
                options a bundle, cross-validation or nnU-Net folder cannot take, ``folds`` for anything but an
                nnU-Net folder, a malformed digest.
            PlanError: an nnU-Net folder whose plans.json / dataset.json is refused or not convertible (a 2D or
                cascade configuration...).
            MissingFileError: no such path, or no checkpoint.
            CheckpointError: a checkpoint or bundle that is damaged, carries code, or whose digest is not expected.
            MissingPluginError: a network a plugin provided, and that plugin is not installed.
        """
        path = Path(path)
        expected = {parse_sha256(h) for h in expect_sha256}  # a malformed digest: refused before anything is read
        if checkpoint not in CHECKPOINTS:
            raise UsageError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
        load_plugins()
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        others = [Path(e) for e in ensemble]
        w = list(weights) if weights else None
        bundle = path.suffix.lower() == ".zip"
        crossval = not bundle and is_crossval_dir(path)
        if bundle and (others or w or checkpoint != "best"):
            raise UsageError("a model bundle carries its members, weights and checkpoint: no ensemble, weights "
                             "or checkpoint choice", path)
        if crossval and w:
            raise UsageError("cross-validation folders are weighted per fold (equal): no weights")
        if crossval and not all(is_crossval_dir(e) for e in others):
            raise UsageError("ensemble a cross-validation folder with other cross-validation folders only")
        nnunet = not bundle and not crossval and _is_nnunet_model_folder(path)
        mixed = not bundle and any(_is_nnunet_model_folder(p) for p in [path, *others]) and bool(others)
        if folds is not None and not any(_is_nnunet_model_folder(p) for p in [path, *others]):
            raise UsageError("folds choose the folds of an nnU-Net model folder only", path)
        if crossval and mixed:
            raise UsageError("ensemble a cross-validation folder with other cross-validation folders only")
        digests: list[tuple[Path, str]] = []
        if mixed:
            loaded = _mixed_ensemble([path, *others], w, checkpoint, folds, dev, uncertainty, postprocess,
                                     postprocessing_file, expected, digests)
            kind = "ensemble"
        elif nnunet:
            loaded = _nnunet_predictor(path, checkpoint, folds, dev, uncertainty, postprocess, postprocessing_file,
                                       expected, digests)
            kind = "nnunet"
        elif bundle:
            if path.is_file():  # a missing bundle: load_bundle's own message
                digests.append((path, check_sha256(path, expected)))
            loaded = load_bundle(path, dev, uncertainty, postprocess, postprocessing_file)
            kind = "bundle"
        else:
            for file in [f for r in [path, *others] for f in model_files(r, checkpoint)]:
                digests.append((file, check_sha256(file, expected)))
            if crossval:
                loaded = crossval_predictor([path, *others], checkpoint, dev, uncertainty, postprocess,
                                            postprocessing_file)
                kind = "crossval"
            else:
                members = [RunPredictor.from_run(r, checkpoint, dev) for r in [path, *others]]
                steps = None if postprocess else []
                if postprocess and postprocessing_file is not None:
                    labels = [int(v) for v in members[0].plan["labels"].values()]
                    steps = read_postprocessing_file(postprocessing_file, labels)
                loaded = EnsemblePredictor(members, w, uncertainty, postprocessing=steps)
                kind = "run"
        predictor = cls(loaded, path, kind)
        predictor.digests = digests
        return predictor

    @property
    def plan(self) -> dict:
        """The (first member's) plan."""
        return self.ensemble.plan

    def predict(self, image: str | Path | np.ndarray | Sequence[str | Path], affine: np.ndarray | None = None,
                probabilities: bool = False, overlap: float | None = None,
                tta: bool = True) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Segment one image.

        Args:
            image: an image file (or one file per channel, in channel order), or an array: ``(X, Y, Z)`` for one
                channel or ``(C, X, Y, Z)`` (``(X, Y)`` / ``(C, X, Y)`` for 2D).
            affine: the array's 4x4 voxel-to-world (RAS mm) affine; default: identity (1 mm voxels). Not with a
                file (its header gives it).
            probabilities: also return the class probabilities ``(K, *shape)`` float32.
            overlap: sliding-window overlap in [0, 1) (default: the plan's).
            tta: mirror test-time augmentation.

        Returns:
            The label map with the image's spatial shape (and the probabilities when asked for).

        Raises:
            UsageError: an affine with a file, a bad overlap, an array with the wrong channel count.
            ImageError: an unreadable image or non-finite voxels.
        """
        array, geometry = self._image(image, affine)
        if overlap is not None and not 0 <= overlap < 1:
            raise UsageError(f"overlap must be in [0, 1), got {overlap}")
        if probabilities:
            seg, _, probs = self.ensemble.predict_with_probabilities(array, geometry, overlap, tta)
            return seg, probs
        return self.ensemble.predict(array, geometry, overlap, tta)[0]

    def _image(self, image: Any, affine: np.ndarray | None) -> tuple[np.ndarray, Geometry]:
        n_ch = len(self.plan["channel_names"])
        if isinstance(image, (str, Path)) or (isinstance(image, (list, tuple)) and image
                                              and all(isinstance(p, (str, Path)) for p in image)):
            if affine is not None:
                raise UsageError("an image file carries its affine: pass affine only with an array")
            files = [Path(image)] if isinstance(image, (str, Path)) else [Path(p) for p in image]
            channels, geometry = [], None
            for f in files:
                if not f.is_file():
                    raise MissingFileError("no such image file", f)
                arr, geo = read_image(f)
                if arr.ndim == 4:  # an MSD image: channels last
                    channels += [arr[..., i] for i in range(arr.shape[-1])]
                else:
                    channels.append(arr)
                geometry = geometry or geo
            array = np.stack(channels).astype(np.float32, copy=False)
            assert geometry is not None
        else:
            array = np.asarray(image, dtype=np.float32)
            spatial = len(self.plan["patch_size"])
            if array.ndim == spatial and n_ch == 1 or array.ndim == 3 and spatial == 2 and n_ch == 1:
                array = array[None]
            if affine is None:
                affine = np.eye(4)
            affine = np.asarray(affine, dtype=np.float64)
            if affine.shape != (4, 4) or not np.isfinite(affine).all():
                raise UsageError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
            geometry = Geometry(affine, tuple(int(s) for s in array.shape[1:]))
        if array.shape[0] != n_ch:
            raise UsageError(f"the model takes {n_ch} channel(s), the image has {array.shape[0]}")
        if not np.isfinite(array).all():
            raise UsageError("the image holds NaN or infinite voxels")
        return array, geometry

    def predict_folder(self, in_dir: str | Path, out_dir: str | Path, overlap: float | None = None,
                       tta: bool = True, save_probabilities: bool = False, output_format: str | None = None,
                       progress: bool = False, part: tuple[int, int] | None = None) -> list[Path]:
        """Segment every case of a folder (``<case>_<CCCC>`` images, nnU-Net's imagesTs layout) into
        ``out_dir/<case>`` files with the input's shape and affine, as ``focusseg predict``.

        Args:
            in_dir: the input images.
            out_dir: where the segmentations are written (atomically; not inside ``in_dir``).
            overlap: sliding-window overlap in [0, 1) (default: the plan's).
            tta: mirror test-time augmentation.
            save_probabilities: also write ``<case>_probabilities.npz``.
            output_format: nifti, nrrd or mha (default: each input's own).
            progress: show a progress bar.
            part: ``(part id, number of parts)``: predict only that share of the sorted cases (every
                ``number``-th from the ``id``-th), as ``--num-parts/--part-id`` do.

        Returns:
            The files written.

        Raises:
            MissingFileError: no input folder. DatasetError: no case in it.
            PartialFailure: cases that failed, after every other case was written.
        """
        if overlap is not None and not 0 <= overlap < 1:
            raise UsageError(f"overlap must be in [0, 1), got {overlap}")
        return predict_folder_files(self.ensemble, in_dir, out_dir, overlap=overlap, tta=tta, progress=progress,
                                    save_probabilities=save_probabilities, output_format=output_format, part=part)


__all__ = ["CheckReport", "CrossValidation", "Predictor", "REGISTRY_KINDS", "Run", "check", "crossval", "evaluate",
           "list_plugins", "load_plugins", "plan", "register", "resolve_recipe", "train"]
