"""Blob loss (Kofler et al. 2022, arXiv 2205.08209; VALDO lacunes, paper 001 sec. 2: Dice + BCE extended to
blob loss with alpha 0.66, beta 0.33).

    L = alpha * L_main(p, g) + beta * L_blob,
    L_blob(b) = mean_{c present in b} w_c * mean_{u in instances of class c in b} L_inner(m_u, [inst == u]),
    m_u = p_c * [(g_c == 0) or (inst == u)]

Instances are the connected components of the patch's ground truth (cc3d, default connectivity 26 / 8), labelled
here or delivered by the loader as a second target channel; masking is applied after the activation; multi-class
is one-vs-rest per foreground channel; samples without instances leave the batch mean. The inner losses
(``blob=``, default ``{"dice": 1, "bce": 1}``) are evaluated for all instances at once from per-instance sums.
Readings chosen, deep supervision and the ignore label: ``docs/losses.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from focusseg.losses._build import LOSSES, build_loss
from focusseg.losses._common import (
    ACTIVATIONS,
    REDUCTIONS,
    as_compute_dtype,
    check_class_weights,
    check_ignore_label,
    check_labels,
    check_option,
    flat,
    label_map,
    split_ignore,
)
from focusseg.losses.instances import CONNECTIVITY, MAX_ID, InstanceStats, instance_stats, instance_stats_from_map

LossSpec = str | Mapping[str, Any] | nn.Module


@LOSSES.register("blob")
class BlobLoss(nn.Module):
    """Blob loss around a main loss.

    Args:
        main: spec of the global loss; built with this loss's ``reduction``. Default ``{"dice": 1, "bce": 1}``
            for sigmoid, ``{"dice": 1, "ce": 1}`` for softmax (dice with the same activation).
        blob: the inner instance loss as ``{name: weight}`` or ``{name: {"weight": w, **options}}``.
        alpha, beta: >= 0 weights of the main and the blob term (0.66 / 0.33 as VALDO).
        connectivity: 4/8 (2D), 6/18/26 (3D); None = 8 / 26.
        activation: ``"sigmoid"`` (reference; channel c = label c + 1, or label > 0 for one channel) or
            ``"softmax"`` (instances of classes 1..K-1).
        reduction: ``"mean"`` | ``"none"``.
        fused: sigmoid background sums in one fused pass (``fused.py``); False uses plain autograd ops
            (same values; kept for testing).
        validate_labels: check label and class-weight values (and an instance map's consistency) every call
            (host syncs; for direct API use, training validates labels once per case at load).
        compact_instances: with an instance map, select the instance voxels first (None: on the CPU, where that
            is free and much less work) or use the dense sync-free bins (False; the GPU default).
        ignore_label: the label value left out (module docstring); None: none.
    """

    def __init__(
        self,
        main: LossSpec | None = None,
        blob: Mapping[str, Any] | None = None,
        alpha: float = 0.66,
        beta: float = 0.33,
        connectivity: int | None = None,
        activation: str = "sigmoid",
        reduction: str = "mean",
        fused: bool = True,
        validate_labels: bool = False,
        compact_instances: bool | None = None,
        ignore_label: int | None = None,
    ) -> None:
        super().__init__()
        self.validate_labels = bool(validate_labels)
        self.ignore_label = check_ignore_label(ignore_label)
        self.compact_instances = compact_instances
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got {alpha}, {beta}")
        self.activation = check_option("activation", activation, ACTIVATIONS)
        self.reduction = check_option("reduction", reduction, REDUCTIONS)
        self.alpha, self.beta = float(alpha), float(beta)
        if connectivity is not None and connectivity not in CONNECTIVITY[2] + CONNECTIVITY[3]:
            raise ValueError(f"connectivity must be one of 4, 8 (2D) or 6, 18, 26 (3D), got {connectivity}")
        self.connectivity = connectivity
        self.fused = fused
        if main is None:
            second = "bce" if activation == "sigmoid" else "ce"
            main = {"dice": {"weight": 1.0, "activation": activation}, second: 1.0}
        if isinstance(main, nn.Module):
            if getattr(main, "reduction", reduction) != reduction:
                raise ValueError("the main loss must have the blob loss's reduction")
            self.main = main
        else:
            extra = {} if self.ignore_label is None else {"ignore_label": self.ignore_label}
            self.main = build_loss(main, reduction=reduction, validate_labels=validate_labels, **extra)
        self.inner = _inner_parts(blob if blob is not None else {"dice": 1.0, "bce": 1.0})

    def _connectivity(self, spatial_dims: int) -> int:
        allowed = CONNECTIVITY[spatial_dims]
        if self.connectivity is None:
            return allowed[-1]
        if self.connectivity not in allowed:
            raise ValueError(f"connectivity {self.connectivity} is not valid in {spatial_dims}D ({allowed})")
        return self.connectivity

    def forward(self, logits: Tensor, target: Tensor, class_weights: Tensor | None = None) -> Tensor:
        x = as_compute_dtype(logits)
        inst_map = None
        if target.ndim == x.ndim and target.shape[1] == 2:  # labels + the loader's instance map
            target, inst_map = target[:, :1], target[:, 1]
        labels, annotated = split_ignore(label_map(x, target), self.ignore_label)
        k = x.shape[1]
        check_labels(labels, k, self.activation, self.validate_labels)
        w = check_class_weights(class_weights, k, x, self.validate_labels)
        main = self.main(logits, target, class_weights) if self.alpha > 0 else 0.0
        spatial = tuple(x.shape[2:])
        xf = flat(x) if annotated is None else _zero_probability(flat(x), annotated, self.activation)
        if inst_map is None:
            stats = instance_stats(xf, labels, spatial, self.activation, self._connectivity(len(spatial)),
                                   self.fused)
        else:
            if annotated is not None:
                inst_map = torch.where(annotated.reshape(inst_map.shape), inst_map, inst_map.new_zeros(()))
            if self.validate_labels:
                _check_instance_map(inst_map, labels, k, self.activation)
            stats = instance_stats_from_map(xf, labels, inst_map, self.activation, self.fused,
                                            self.compact_instances)
        if annotated is not None and stats.n_instances:
            n_ch = stats.counts.shape[0] // x.shape[0]
            per_sample_voxels = annotated.sum(1).to(x.dtype).clamp_min(1.0)
            stats.voxel_norm = per_sample_voxels[stats.inst_group // n_ch]
        per_sample, has = self.blob_per_sample(stats, x, w)
        if self.reduction == "none":
            return self.alpha * main + self.beta * per_sample
        # mean over the samples with an instance; none: 0 * sum(per_sample), a zero with a gradient path.
        # Written without boolean indexing (a host sync on a GPU).
        hasf = has.to(per_sample.dtype)
        blob = (per_sample * hasf).sum() / hasf.sum().clamp_min(1.0)
        return self.alpha * main + self.beta * blob

    def blob_per_sample(self, stats: InstanceStats, x: Tensor, w: Tensor | None) -> tuple[Tensor, Tensor]:
        """Blob term per sample ``(B,)`` (0 where a sample has no instance) and the has-instance mask (B,) bool,
        both on ``x``'s device."""
        b = x.shape[0]
        if stats.n_instances == 0:
            return x.sum() * 0.0 + x.new_zeros(b), torch.zeros(b, dtype=torch.bool, device=x.device)
        inst = sum(weight * part.instance_loss(stats) for weight, part in self.inner)
        if isinstance(stats.counts, np.ndarray):
            counts = torch.from_numpy(stats.counts).to(device=x.device, dtype=x.dtype)
        else:  # an instance map's bins: empty ones (size 0) stay out of every mean
            counts = stats.counts.to(x.dtype)
            inst = torch.where(stats.size > 0, inst, inst.new_zeros(()))
        n_groups = counts.shape[0]
        group_mean = inst.new_zeros(n_groups).index_add_(0, stats.inst_group, inst) / counts.clamp_min(1.0)
        n_ch = n_groups // b
        if w is not None:
            group_mean = (group_mean.view(b, n_ch) * w[x.shape[1] - n_ch :]).reshape(-1)
        n_present = (counts > 0).reshape(b, n_ch).sum(1)
        per_sample = group_mean.view(b, n_ch).sum(1) / n_present.clamp_min(1).to(x.dtype)  # absent groups hold 0
        return per_sample, n_present > 0


#: A logit whose sigmoid / softmax share is exactly 0 in float32 and float64 (and softplus of it exactly 0).
_ZERO_LOGIT = -1.0e4


def _zero_probability(x: Tensor, annotated: Tensor, activation: str) -> Tensor:
    """Logits ``(B, K, N)`` whose foreground probabilities are exactly 0 at the ignored voxels (sigmoid: every
    channel; softmax: every channel but background, which gets probability 1); no gradient reaches those voxels."""
    fill = torch.full((x.shape[1], 1), _ZERO_LOGIT, dtype=x.dtype, device=x.device)
    if activation == "softmax":
        fill[0] = 0.0
    return torch.where(annotated[:, None], x, fill)


def _inner_parts(spec: Mapping[str, Any]) -> list[tuple[float, nn.Module]]:
    """``{name: weight | {"weight": w, **options}}`` -> [(weight, loss with ``instance_loss``)]."""
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"blob inner loss must be a non-empty mapping name -> weight, got {spec!r}")
    parts = []
    for name, value in spec.items():
        opts = dict(value) if isinstance(value, Mapping) else {"weight": value}
        weight = float(opts.pop("weight", 1.0))
        if name in ("dice", "soft_dice", "tversky"):
            opts.setdefault("activation", "sigmoid")
        part = LOSSES.build({"name": name, **opts})
        if not callable(getattr(part, "instance_loss", None)):
            raise ValueError(f"loss {name!r} cannot be a blob inner loss (no per-instance form)")
        parts.append((weight, part))
    return parts


def _check_instance_map(inst: Tensor, labels: Tensor, k: int, activation: str) -> None:
    """``validate_labels``: ids in ``[0, cap]``, instance voxels on foreground only (host syncs)."""
    ids = inst.reshape(labels.shape).long()
    cap = MAX_ID.get(inst.dtype, labels.shape[1])
    if inst.dtype.is_floating_point or inst.dtype == torch.bool:
        raise TypeError(f"the instance map must be an integer map, got {inst.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > cap):
        raise ValueError(f"instance ids must lie in [0, {cap}] for a {inst.dtype} instance map")
    code = labels > 0
    if bool((ids > 0).logical_and(~code).any()):
        raise ValueError("the instance map marks background voxels as instances")
