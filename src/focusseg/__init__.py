"""focusseg: 3D medical image segmentation whose training focuses on what is hard.

The public API (listed in ``__all__``, documented in :mod:`focusseg.api`): :func:`check`, :func:`plan`,
:func:`train` (-> :class:`Run`), :func:`crossval` (-> :class:`CrossValidation`), :func:`evaluate`,
:class:`Predictor`, the plugin functions :func:`load_plugins` and :func:`register`, and the typed errors of
:mod:`focusseg.errors`. Everything else is private by name or by module. The names are loaded on first use, so
``import focusseg`` (and ``focusseg.__version__``) imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it (imported on first use).
_EXPORTS: dict[str, str] = {
    **{name: "focusseg.api" for name in ("CheckReport", "CrossValidation", "Predictor", "Run", "check", "crossval",
                                         "list_plugins", "load_plugins", "plan", "register",
                                         "resolve_recipe", "train")},
    "evaluate": "focusseg.workflows.evaluate",  # scoring label maps imports no torch
    **{name: "focusseg.errors" for name in ("CheckFailed", "CheckpointError", "DatasetError", "FocussegError",
                                            "ImageError", "MissingFileError", "PartialFailure", "PlanError",
                                            "RunFolderError", "TrainingError", "UsageError")},
    **{name: "focusseg.plugins" for name in ("MissingPluginError", "PluginError")},
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (``focusseg.train`` imports :mod:`focusseg.api`).

    Args:
        name: the attribute asked for.

    Returns:
        The public object.

    Raises:
        AttributeError: for a name that is not public.
    """
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'focusseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
