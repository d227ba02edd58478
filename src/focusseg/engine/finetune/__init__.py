"""Fine-tuning: start a run from another run's weights (``focusseg train --init-from``).

- :mod:`~focusseg.engine.finetune.source`: reading the source checkpoint, name-and-shape matching, the table;
- :mod:`~focusseg.engine.finetune.encoder`: which parameters are the encoder (for freezing);
- :mod:`~focusseg.engine.finetune.plan`: the options, the plan's ``training.init_from`` entry, resume;
- :mod:`~focusseg.engine.finetune.training`: the training-changing callbacks (load, freeze, warm-up).

The rules and their reasons (nnU-Net's ``load_pretrained_weights`` compared) are in ``docs/finetuning.md``.
"""

from __future__ import annotations

from focusseg.engine.finetune.encoder import encoder_parameter_names, no_encoder_error, planned_encoder_names
from focusseg.engine.finetune.plan import PLAN_KEY, check_options, keep_on_resume, plan_entry, prepare
from focusseg.engine.finetune.source import (
    RUN_CHECKPOINTS,
    SHOWN_ROWS,
    STRIP_PREFIXES,
    LoadReport,
    Source,
    file_sha256,
    load_matching,
    match_shapes,
    member_weights,
    network_weights,
    no_match_error,
    print_report,
    read_source,
    report_table,
    resolve_source,
)
from focusseg.engine.finetune.training import (
    FreezeEncoder,
    InitFrom,
    LRWarmup,
    WarmupLR,
    callbacks_for,
    task_networks,
)
from focusseg.errors import CheckpointError  # what a bad source raises

__all__ = [
    "PLAN_KEY",
    "RUN_CHECKPOINTS",
    "SHOWN_ROWS",
    "STRIP_PREFIXES",
    "CheckpointError",
    "FreezeEncoder",
    "InitFrom",
    "LRWarmup",
    "LoadReport",
    "Source",
    "WarmupLR",
    "callbacks_for",
    "check_options",
    "encoder_parameter_names",
    "file_sha256",
    "keep_on_resume",
    "load_matching",
    "match_shapes",
    "member_weights",
    "network_weights",
    "no_encoder_error",
    "no_match_error",
    "plan_entry",
    "planned_encoder_names",
    "prepare",
    "print_report",
    "read_source",
    "report_table",
    "resolve_source",
    "task_networks",
]
