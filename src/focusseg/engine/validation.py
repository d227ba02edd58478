"""Validation on whole held-out volumes: Gaussian sliding window over each preprocessed case, argmax, per-class
Dice from :func:`focusseg.metrics.dice_per_class` (the evaluator's own function, no second implementation)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from focusseg.preprocessing.store import PreprocessedStore


def validate(network: nn.Module, store: PreprocessedStore, case_ids: list[str], plan: dict, device: torch.device,
             amp: torch.dtype | None = None, mirror_axes: tuple[int, ...] = ()) -> dict[int, float]:
    """Mean Dice per foreground class over ``case_ids`` (NaN-aware: a case where a class is absent from both
    prediction and reference does not count for that class)."""
    from focusseg.inference import sliding_window_predict
    from focusseg.metrics import dice_per_class

    labels = sorted(int(v) for v in plan["labels"].values() if int(v) != 0)
    per_case: list[dict[int, float]] = []
    for cid in case_ids:
        image = torch.from_numpy(np.ascontiguousarray(store.image(cid)))
        logits = sliding_window_predict(network, image, plan["patch_size"], overlap=plan["inference"]["overlap"],
                                        mirror_axes=mirror_axes, batch_size=plan["inference"].get("batch_size", 2),
                                        device=device, amp_dtype=amp)
        pred = logits.argmax(0).numpy()
        per_case.append(dice_per_class(pred, np.asarray(store.label(cid)), labels))
    out = {}
    for lab in labels:
        vals = [d[lab] for d in per_case if not np.isnan(d[lab])]
        out[lab] = float(np.mean(vals)) if vals else float("nan")
    return out
