"""Plan a dataset: fingerprint (cached under a key of the source files), the planner's plan, then the plan a run
trains (:func:`finish_plan`: recipe form, ``--set`` overrides, configuration, normalisation scheme, network topology,
deep-supervision heads and a patch the network accepts)."""

from __future__ import annotations

from pathlib import Path

from focusseg.augment import preset_names
from focusseg.io import load_dataset_spec
from focusseg.nets import network_divisors
from focusseg.planning.fingerprint import compute_fingerprint, load_or_compute_fingerprint
from focusseg.planning.planner import make_plan, match_deep_supervision, plan_configuration
from focusseg.plugins import expand_augmentation, plan_plugins, read_record, require_plugins
from focusseg.recipes import recipe_plan, resolve_network_topology
from focusseg.settings import network_settings


def _fingerprint(data_dir: Path, fingerprint_path: Path | None, progress: bool) -> dict:
    """The dataset's fingerprint; cached at ``fingerprint_path`` only under a key made of the source files
    (:func:`~focusseg.planning.fingerprint.load_or_compute_fingerprint`)."""
    if fingerprint_path is None:
        return compute_fingerprint(data_dir, progress=progress)
    return load_or_compute_fingerprint(data_dir, fingerprint_path, progress)


def plan_dataset(data_dir: Path, device: str = "cpu", overrides: dict | None = None,
                 fingerprint_path: Path | None = None, progress: bool = True) -> dict:
    """Fingerprint (cached at ``fingerprint_path`` when given, keyed by the source files) and plan a dataset."""
    return make_plan(_fingerprint(Path(data_dir), fingerprint_path, progress), device=device, overrides=overrides,
                     spec=load_dataset_spec(data_dir))  # the spec carries region-based labels (focusseg.regions)


def apply_normalization_scheme(plan: dict) -> dict:
    """``"normalization_scheme": "quantile"`` (a recipe does not know how many channels a dataset has) sets that
    scheme on every channel."""
    scheme = plan.pop("normalization_scheme", None)
    if scheme:
        plan["normalization"] = [{"scheme": scheme} for _ in plan["normalization"]]
    return plan


def fit_patch_to_network(plan: dict) -> dict:
    """Round the patch up so the plan's network accepts it: each size a multiple of the network's divisor and at
    least twice it (a bottleneck of >= 2 voxels per axis, which instance norm needs). A recipe can name any
    network without knowing the dataset's patch."""
    name, kwargs = network_settings(plan).split()
    kwargs.pop("deep_supervision", None)
    divs = network_divisors(name, len(plan["patch_size"]), **kwargs)
    patch = [max(2 * d, -(-int(p) // d) * d) for p, d in zip(plan["patch_size"], divs)]
    if patch != list(plan["patch_size"]):
        plan["patch_size_planned"] = list(plan["patch_size"])
        plan["patch_size"] = patch
    return plan


def finish_plan(plan: dict, recipe: dict | None, overrides: dict | None, device_type: str = "cpu",
                 form: str | None = None, match_heads: bool = True) -> dict:
    """The plan a run trains: the planner's ``plan`` + the recipe's form for ``device_type`` (GPU form on CUDA,
    CPU form otherwise; ``form`` or the recipe's ``"form"`` forces one: ``recipes.recipe_plan``) + ``overrides``
    (``--set``), in the configuration they ask for (``configuration: "2d"``: ``planner.plan_configuration``);
    then the normalisation scheme, a recipe's ``network.topology``, as many deep-supervision heads as
    nonzero weights (``match_heads``; a resumed plan stored before heads were matched keeps its heads) and a patch
    the network accepts. Records ``recipe_form``, and ``plugins`` (:func:`focusseg.plugins.plan_plugins`: each
    plugin whose network, loss, strategy, augmentation or recipe the plan uses, with its version) when there is
    one. A name no registry knows loads the installed plugins (entry points); one that the plan's own record
    says a plugin provided and that is still unknown is a :class:`~focusseg.plugins.MissingPluginError` naming the
    plugin (nothing the plan names is imported)."""
    earlier = read_record(plan)
    recipe_overrides, chosen = recipe_plan(recipe, device_type, form)
    plan = plan_configuration(plan, recipe_overrides, overrides or {})  # configuration "2d": planned in 2D first
    require_plugins(plan, builtin={"augmentation": preset_names()})
    augmentation = expand_augmentation(plan)
    plan = apply_normalization_scheme(plan)
    plan = resolve_network_topology(plan)
    if match_heads:
        plan = match_deep_supervision(plan)
    plan = fit_patch_to_network(plan)
    plan["recipe_form"] = chosen
    record = plan_plugins(plan, {"recipe": (recipe or {}).get("name"), "augmentation": augmentation}, earlier)
    if record:
        plan["plugins"] = record
    else:
        plan.pop("plugins", None)  # a plan of built-ins only has no record (its hash as before)
    return plan
