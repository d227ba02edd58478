"""Fine-tuning in the plan: the command-line options, the ``training.init_from`` entry, and what resume keeps.

``focusseg train DATA --out RUN --init-from SOURCE [--freeze-encoder-epochs N] [--warmup-epochs N]`` records
``plan["training"]["init_from"] = {"source", "sha256", "freeze_encoder_epochs", "warmup_epochs", "reinitialised"}``
(``reinitialised``: the network's tensors the source does not provide), so ``plan.json`` says what was done. A
fresh run reads and checks the source before any preprocessing; a resumed run keeps the entry and never loads the
source again (its checkpoint holds the weights).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from focusseg.engine.finetune.encoder import no_encoder_error, planned_encoder_names
from focusseg.engine.finetune.source import Source, match_shapes, member_weights, no_match_error, read_source
from focusseg.errors import CheckpointError, UsageError
from focusseg.io.paths import is_inside
from focusseg.nets.from_plan import build_network_from_plan
from focusseg.settings import training_settings

#: The plan key (in ``training``) recording the fine-tuning settings.
PLAN_KEY = "init_from"


def check_options(init_from: str | Path | None, freeze_encoder_epochs: int | None, warmup_epochs: int | None,
                  run_dir: str | Path | None = None, resume: bool = False) -> dict[str, Any] | None:
    """The fine-tuning options of ``focusseg train`` as one dict.

    Args:
        init_from: ``--init-from`` (a run folder or checkpoint), or None.
        freeze_encoder_epochs: ``--freeze-encoder-epochs``, or None.
        warmup_epochs: ``--warmup-epochs``, or None.
        run_dir: the run folder being trained (``--out``), to refuse a source inside it.
        resume: whether the run is resumed (its own checkpoints are then not being replaced yet).

    Returns:
        ``{"init_from", "freeze_encoder_epochs", "warmup_epochs"}``, or None when no source is given.

    Raises:
        UsageError: a negative or non-integer number of epochs, freezing or warm-up without ``--init-from``, or a
            source inside the run folder being (re)started.
    """
    for flag, v in (("--freeze-encoder-epochs", freeze_encoder_epochs), ("--warmup-epochs", warmup_epochs)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise UsageError(f"{flag} must be a whole number of epochs >= 0, got {v!r}")
    if init_from is None:
        if freeze_encoder_epochs or warmup_epochs:
            raise UsageError("--freeze-encoder-epochs and --warmup-epochs fine-tune: they need --init-from",
                             hint="a resumed run keeps the settings recorded in its plan.json (training.init_from)")
        return None
    if run_dir is not None and not resume:
        src = Path(init_from).expanduser()
        if src.exists() and is_inside(src, Path(run_dir)):
            raise UsageError("--init-from names the run folder being trained (--out), whose checkpoints training "
                             "replaces", src, hint="fine-tune into another --out")
    return {"init_from": init_from, "freeze_encoder_epochs": int(freeze_encoder_epochs or 0),
            "warmup_epochs": int(warmup_epochs or 0)}


def plan_entry(source: Source, freeze_encoder_epochs: int = 0, warmup_epochs: int = 0) -> dict[str, Any]:
    """The ``training.init_from`` entry for ``source`` (without ``reinitialised``, which :func:`prepare` adds)."""
    return {"source": str(source.path), "sha256": source.sha256, "freeze_encoder_epochs": int(freeze_encoder_epochs),
            "warmup_epochs": int(warmup_epochs)}


def prepare(plan: dict, options: dict[str, Any] | None) -> Source | None:
    """Set up fine-tuning of a fresh run: read the source, check it against the planned network, record it.

    The source is the one ``options`` names, else the one the plan's ``training.init_from`` records (a plan reused
    from a fine-tuned run; its sha256 must still match). Before any preprocessing, some tensor must match the
    planned network and, when freezing, the network must have an encoder. The entry (:func:`plan_entry` plus
    ``reinitialised``: the tensors freezing leaves trainable) is written into ``plan["training"]``.

    Args:
        plan: the finished plan, changed in place.
        options: :func:`check_options`' result, or None.

    Returns:
        The source for :func:`~focusseg.engine.finetune.training.callbacks_for`; None for a run from scratch.

    Raises:
        CheckpointError: an unreadable source, a changed file, or one of which no tensor matches.
        PlanError: a malformed ``training.init_from``, or freezing a network without an encoder.
    """
    if options is not None:
        source = read_source(options["init_from"])
        freeze, warmup = options["freeze_encoder_epochs"], options["warmup_epochs"]
    else:
        entry = training_settings(plan).init_from
        if entry is None:
            return None
        source = read_source(entry["source"])
        if entry.get("sha256") and entry["sha256"] != source.sha256:
            raise CheckpointError("--init-from: the checkpoint the plan records has changed since (sha256 differs)",
                                  source.path, hint="fine-tune with --init-from to record the file as it is now")
        freeze, warmup = entry.get("freeze_encoder_epochs", 0), entry.get("warmup_epochs", 0)
    report = match_shapes(_planned_shapes(plan), member_weights(source.weights, 0))
    if not report.loaded:
        raise no_match_error(source, len(source.weights))
    plan.setdefault("training", {})[PLAN_KEY] = {**plan_entry(source, freeze, warmup),
                                                 "reinitialised": report.reinitialised}
    if freeze:
        try:
            encoder = planned_encoder_names(plan)
        except Exception:  # noqa: BLE001  (no meta support: the real network is probed at train start)
            encoder = None
        if encoder == []:
            raise no_encoder_error(plan)
    return source


def keep_on_resume(stored: dict, requested: dict, options: dict[str, Any] | None) -> None:
    """Carry the stored plan's ``init_from`` entry into the plan requested on ``--resume``, unchanged.

    Args:
        stored: the run's stored plan.
        requested: the plan asked for now, changed in place.
        options: :func:`check_options`' result, or None. The same source again is only a note on stderr.

    Raises:
        UsageError: other freezing or warm-up settings than the stored ones, or ``--init-from`` on a run that
            started from scratch.
    """
    entry = (stored.get("training") or {}).get(PLAN_KEY)
    if entry is not None:
        requested.setdefault("training", {})[PLAN_KEY] = entry
    if options is None:
        return
    if entry is None:
        raise UsageError("--resume cannot add --init-from: this run started from scratch",
                         hint="fine-tune into a new run (another --out, or --overwrite)")
    for key in ("freeze_encoder_epochs", "warmup_epochs"):
        if options[key] and options[key] != entry.get(key, 0):
            raise UsageError(f"--resume cannot change {key.replace('_', '-')}: stored {entry.get(key, 0)}, requested "
                             f"{options[key]}", hint="resume without it (the stored settings continue)")
    print(f"note: --init-from is not applied again on --resume (the checkpoint holds the weights; the run started "
          f"from {entry['source']})", file=sys.stderr)


def _planned_shapes(plan: dict) -> dict[str, torch.Size]:
    """Name -> shape of one planned network, built on the meta device (no memory), else on the CPU."""
    try:
        with torch.device("meta"):
            net = build_network_from_plan(plan)
    except Exception:  # noqa: BLE001  (a network that cannot be built on the meta device)
        net = build_network_from_plan(plan)
    return {k: v.shape for k, v in net.state_dict().items()}
