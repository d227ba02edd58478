"""Recipes: one human-readable JSON file per paper system, naming plan overrides, network, loss, sampling,
augmentation, strategies and inference settings. ``focusseg recipes`` lists them; copy one, edit it, and pass
its path to ``--recipe``.

Two forms per recipe: the **CPU form**, ``"plan"`` (a scaled-down configuration a CPU can train;
``"scaled_down"`` says what it changes), and the **GPU form**, ``"gpu": {"plan": {...}, "notes": "..."}``:
overrides applied on top of ``"plan"`` that restore the paper's configuration (``"notes"``: what still differs).
The device picks the form (:func:`recipe_plan`: ``"gpu"`` on CUDA, ``"cpu"`` otherwise); ``--recipe-form`` (or
``"form"`` in a recipe file) forces one, and the plan records it as ``plan["recipe_form"]``. A recipe without a
``"gpu"`` object has a GPU form equal to its CPU form. See ``docs/recipes.md``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from focusseg.errors import PlanError, UsageError
from focusseg.io.jsonfile import read_json
from focusseg.planning.planner import deep_merge
from focusseg.planning.topology import pool_and_conv_props
from focusseg.planning.twod import network_spacing
from focusseg.settings import network_settings

RECIPE_DIR = Path(__file__).parent
#: The two forms of a recipe: ``"cpu"`` (``recipe["plan"]``) and ``"gpu"`` (``recipe["plan"]`` then
#: ``recipe["gpu"]["plan"]``).
FORMS = ("cpu", "gpu")
#: ``network.topology`` value (a recipe key, resolved before the network is built): per-axis kernels and strides.
NNUNET_TOPOLOGY = "nnunet"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def load_recipe(name_or_path: str | Path) -> dict:
    """A recipe by name (packaged) or by path to a JSON file."""
    p = Path(name_or_path)
    if not p.suffix == ".json":
        p = RECIPE_DIR / f"{name_or_path}.json"
    if not p.is_file():
        raise UsageError(f"unknown recipe {str(name_or_path)!r}; known: {', '.join(recipe_names())} "
                         "(or give a path to a recipe .json)")
    try:
        recipe = read_json(p, UsageError, allow_nan=False)  # bounded: size, nesting, digits; no NaN
    except UsageError as exc:
        raise UsageError(f"not a readable recipe JSON ({exc.problem})", p) from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("plan", {}), dict):
        raise UsageError("a recipe is a JSON object whose 'plan' is an object of plan overrides", p)
    gpu = recipe.get("gpu", {})
    if not isinstance(gpu, dict) or not isinstance(gpu.get("plan", {}), dict) or not isinstance(
            gpu.get("notes", ""), str):
        raise UsageError("a recipe's 'gpu' is an object {\"plan\": {plan overrides on top of 'plan'}, "
                         "\"notes\": \"text\"}", p)
    if recipe.get("form") not in (None, *FORMS):
        raise UsageError(f"a recipe's 'form' is one of {', '.join(FORMS)}, got {recipe.get('form')!r}", p)
    recipe.setdefault("name", p.stem)
    recipe.setdefault("plan", {})
    return recipe


def merge_overrides(first: dict, then: dict) -> dict:
    """One override dict equal to applying ``first`` and then ``then`` with ``planning.planner.deep_merge``:
    ``deep_merge(deep_merge(plan, first), then) == deep_merge(plan, merge_overrides(first, then))``.

    ``"_replace": true`` is kept where it decides the result: a dict of ``then`` that replaces stays a
    replacement; a dict of ``then`` merged into a replacement of ``first`` (or into a non-dict value of ``first``)
    becomes the merged replacement."""
    out = copy.deepcopy(first)
    for k, b in then.items():
        a = out.get(k)
        if not isinstance(b, dict) or b.get("_replace") is True or k not in out:
            out[k] = copy.deepcopy(b)
        elif not isinstance(a, dict):
            out[k] = {**copy.deepcopy(b), "_replace": True}
        elif a.get("_replace") is True:
            base = {kk: vv for kk, vv in a.items() if kk != "_replace"}
            out[k] = {**deep_merge(base, b), "_replace": True}
        else:
            out[k] = merge_overrides(a, b)
    return out


def form_for_device(device_type: str) -> str:
    """``"gpu"`` for a CUDA device (``"cuda"``, ``"cuda:1"``), else ``"cpu"``."""
    return "gpu" if str(device_type).startswith("cuda") else "cpu"


def recipe_plan(recipe: dict | None, device_type: str, form: str | None = None) -> tuple[dict, str]:
    """``(plan overrides, form name)`` of ``recipe`` for a device: the GPU form (``recipe["plan"]`` then
    ``recipe["gpu"]["plan"]``, merged by :func:`merge_overrides`) on CUDA, the CPU form (``recipe["plan"]``)
    otherwise. ``form`` (or the recipe's own ``"form"``) forces ``"cpu"`` or ``"gpu"``. ``None`` recipe: ``({},
    form)``."""
    recipe = recipe or {}
    chosen = form or recipe.get("form") or form_for_device(device_type)
    if chosen not in FORMS:
        raise UsageError(f"recipe form must be one of {', '.join(FORMS)}, got {chosen!r}")
    cpu = recipe.get("plan") or {}
    if chosen == "cpu":
        return copy.deepcopy(cpu), chosen
    return merge_overrides(cpu, (recipe.get("gpu") or {}).get("plan") or {}), chosen


def resolve_network_topology(plan: dict) -> dict:
    """``network.topology: "nnunet"`` (a DynUNet whose recipe fixes the patch, e.g. FLARE21's 3d_fullres patch):
    per-axis kernels and strides for the plan's ``target_spacing`` and final ``patch_size`` by nnU-Net's rule
    (``planning.topology.pool_and_conv_props``), written as ``kernel_sizes``, ``strides`` and ``n_stages``; the
    ``topology`` key is removed (the network builder does not know it). Any other plan is returned unchanged.
    Returns a new plan."""
    net = network_settings(plan)
    if net is None or "topology" not in net.kwargs:
        return plan
    if net.get("topology") != NNUNET_TOPOLOGY or net.name != "dynunet":
        raise PlanError(f"network.topology {net.get('topology')!r} is not known for network {net.name!r} "
                        f"(only \"{NNUNET_TOPOLOGY}\" on a dynunet)")
    out = copy.deepcopy(plan)
    kernels, strides = pool_and_conv_props(network_spacing(out),  # in-plane spacing for a 2D plan
                                           [float(p) for p in out["patch_size"]])
    del out["network"]["topology"]
    out["network"].update(kernel_sizes=kernels, strides=strides, n_stages=len(strides))
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
        return "x".join(str(x) for x in v)
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def form_settings(overrides: dict) -> dict[str, str]:
    """The key settings of one recipe form (its plan overrides), for ``focusseg recipes``: network, patch, batch,
    loss, optimizer, epochs, sampler, strategy (Focused Practice, cycle task, class weighter), inference;
    ``"planner"`` where the form leaves the value to the planner."""
    tr = overrides.get("training") or {}
    net = overrides.get("network") or {}
    planner = "planner"
    if net.get("name") or any(k in net for k in ("features", "base_features", "channels", "topology")):
        width = net.get("features") or net.get("channels") or (
            f"{net['base_features']}-{net.get('max_features', '')}".rstrip("-") if "base_features" in net else None)
        if isinstance(width, list):
            width = "-".join(str(w) for w in width)
        parts = [net.get("name") or "planner's", f"width {width}" if width else ""]
        if net.get("topology"):
            parts.append(f"{net['topology']} topology")
        if net.get("act"):
            parts.append(str(net["act"]))
        if net.get("dropout"):
            parts.append(f"dropout {net['dropout']}")
        network = ", ".join(p for p in parts if p)
    else:
        network = planner
    loss = tr.get("loss")
    if isinstance(loss, dict):
        name = loss.get("name")
        rest = {k: v for k, v in loss.items() if k not in ("name", "_replace")}
        if name:  # a named loss and its arguments
            args = ", ".join(f"{k} {_fmt(v)}" for k, v in rest.items())
            loss_text = f"{name} ({args})" if args else str(name)
        else:  # a weighted sum of terms
            terms = []
            for k, v in rest.items():
                w = v.get("weight", 1.0) if isinstance(v, dict) else v
                args = ", ".join(f"{a} {b}" for a, b in v.items() if a != "weight") if isinstance(v, dict) else ""
                terms.append(("" if w == 1 else f"{w} ") + k + (f" ({args})" if args else ""))
            loss_text = " + ".join(terms) or planner
    else:
        loss_text = planner
    ds = tr.get("deep_supervision")
    if isinstance(ds, dict) and isinstance(ds.get("weights"), list):
        loss_text += f", deep supervision {'/'.join(str(w) for w in ds['weights'])}"
    opt = tr.get("optimizer")
    opt_text = f"{opt.get('name', 'sgd')} lr {opt.get('lr', '?')}" if isinstance(opt, dict) else planner
    if isinstance(opt, dict) and opt.get("momentum") is not None:
        opt_text += f" momentum {opt['momentum']}"
    sched = tr.get("lr_schedule")
    if isinstance(sched, dict) and sched.get("name"):
        opt_text += f", {sched['name']}"
        if sched.get("horizon_epochs"):
            opt_text += f" over {sched['horizon_epochs']} epochs"
    sampler = tr.get("sampler")
    sampler_text = sampler.get("name", planner) if isinstance(sampler, dict) else "planner's"
    if tr.get("foreground_oversampling") is not None:
        sampler_text += f", {round(100 * tr['foreground_oversampling'])} % foreground"
    elif not isinstance(sampler, dict):
        sampler_text = planner
    strategy = []
    if isinstance(sampler, dict) and sampler.get("name") not in (None, "foreground"):
        strategy.append(", ".join([str(sampler["name"])] + [f"{k} {_fmt(v)}" for k, v in sampler.items()
                                                             if k not in ("name", "_replace")]))
    for key in ("task", "class_weighter"):
        spec = tr.get(key)
        if isinstance(spec, dict) and spec.get("name"):
            strategy.append(", ".join([f"{key.replace('_', ' ')} {spec['name']}"] + [
                f"{k} {_fmt(v)}" for k, v in spec.items() if k not in ("name", "_replace")]))
    inf = overrides.get("inference") or {}
    inf_parts = []
    if "overlap" in inf:
        inf_parts.append(f"overlap {inf['overlap']}")
    if "mirror_axes" in inf:
        inf_parts.append(f"mirror axes {_fmt(inf['mirror_axes']) or 'none'}")
    if inf.get("noise_passes"):
        inf_parts.append(f"{inf['noise_passes']} noise passes (sigma {inf.get('noise_sigma', 0.1)})")
    if "batch_size" in inf:
        inf_parts.append(f"batch {inf['batch_size']}")
    epochs = "planner / time budget"
    if "max_epochs" in tr:
        epochs = str(tr["max_epochs"]) + (f" x {tr['iterations_per_epoch']} iterations"
                                          if "iterations_per_epoch" in tr else "")
    return {
        "network": network,
        "patch": _fmt(overrides["patch_size"]) if "patch_size" in overrides else planner,
        "batch": str(overrides["batch_size"]) if "batch_size" in overrides else planner,
        "loss": loss_text,
        "optimizer": opt_text,
        "epochs": epochs,
        "sampler": sampler_text,
        "strategy": "; ".join(strategy) or "-",
        "inference": ", ".join(inf_parts) or planner,
    }
