"""Shared plumbing of the loss library: input checks, activations, target encodings, reductions.

Conventions every loss follows (``docs/losses.md``): ``logits`` ``(B, K, *spatial)`` (half precision computed in
float32); ``target`` an integer label map ``(B, 1, *spatial)`` or ``(B, *spatial)``; ``activation="softmax"``
(channel ``c`` = label ``c``) or ``"sigmoid"`` (K = 1: ``label > 0``; K > 1: channel ``c`` = ``label == c + 1``);
``class_weights`` ``(K,)``; ``reduction="mean"`` (scalar) or ``"none"`` (``(B,)``); ``ignore_label`` voxels get
no gradient and count in no normalisation (``None``: the unmasked code path, bit for bit).

No host synchronisation in the forward pass: shapes, dtypes and options are checked every call, label and
class-weight *values* only with ``validate_labels=True`` (training checks labels once per case in the loader,
:class:`focusseg.data.loader.PatchLoader`); out-of-range labels in an unvalidated call give undefined values.
"""

from __future__ import annotations

import torch
from torch import Tensor

ACTIVATIONS = ("softmax", "sigmoid")
REDUCTIONS = ("mean", "none")


def check_option(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def as_compute_dtype(logits: Tensor) -> Tensor:
    """Half and bfloat16 logits (autocast) are promoted to float32; float32/float64 stay as they are."""
    if not torch.is_floating_point(logits):
        raise TypeError(f"logits must be a floating point tensor, got {logits.dtype}")
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def label_map(logits: Tensor, target: Tensor) -> Tensor:
    """Validate shapes and return the label map as ``(B, N)`` int64 (spatial axes flattened)."""
    if logits.ndim not in (4, 5):
        raise ValueError(f"logits must be (B, K, X, Y) or (B, K, X, Y, Z), got shape {tuple(logits.shape)}")
    if torch.is_floating_point(target) or target.dtype == torch.bool:
        raise TypeError(f"target must be an integer label map, got {target.dtype}")
    if target.ndim == logits.ndim:
        if target.shape[1] != 1:
            raise ValueError(f"target with a channel axis must have 1 channel, got {tuple(target.shape)}")
        target = target[:, 0]
    if target.shape[0] != logits.shape[0] or target.shape[1:] != logits.shape[2:]:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)} "
            "(expected (B, 1, *spatial) or (B, *spatial))"
        )
    return target.reshape(target.shape[0], -1).long()


def check_ignore_label(value: object) -> int | None:
    """A loss's ``ignore_label`` option: None or a non-negative integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"ignore_label must be None or a non-negative integer, got {value!r}")
    return int(value)


def split_ignore(labels: Tensor, ignore_label: int | None) -> tuple[Tensor, Tensor | None]:
    """``(labels, annotated)`` of a ``(B, N)`` label map: unchanged and None without an ignore label; else the
    labels with the ignored voxels set to 0 (any class would do: they are masked out) and the bool mask of the
    annotated voxels. No host sync."""
    if ignore_label is None:
        return labels, None
    annotated = labels != ignore_label
    return torch.where(annotated, labels, torch.zeros((), dtype=labels.dtype, device=labels.device)), annotated


def check_labels(labels: Tensor, n_channels: int, activation: str, validate: bool = False) -> None:
    """Raise when a label cannot be encoded with ``n_channels`` channels under ``activation``.

    The channel-count rule is always checked; the label values only with ``validate`` (a host sync)."""
    if activation == "softmax" and n_channels < 2:
        raise ValueError("softmax needs at least 2 channels; use activation='sigmoid' for a single channel")
    if not validate or labels.numel() == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    top = n_channels - 1 if activation == "softmax" else (n_channels if n_channels > 1 else None)
    if lo < 0 or (top is not None and hi > top):
        raise ValueError(f"labels must lie in [0, {top}] for {n_channels} {activation} channels, got [{lo}, {hi}]")


def channel_index(labels: Tensor, n_channels: int, activation: str) -> Tensor:
    """Channel that owns each voxel's label, -1 for background voxels without a channel (sigmoid)."""
    if activation == "softmax":
        return labels
    if n_channels == 1:
        return torch.where(labels > 0, 0, -1)
    return labels - 1


def encode_target(labels: Tensor, n_channels: int, activation: str, dtype: torch.dtype) -> Tensor:
    """One-hot (softmax) or per-channel foreground indicators (sigmoid) as ``(B, K, N)``."""
    if activation == "sigmoid" and n_channels == 1:
        return (labels > 0)[:, None].to(dtype)
    first = 0 if activation == "softmax" else 1
    values = torch.arange(first, first + n_channels, device=labels.device)
    return (labels[:, None, :] == values[None, :, None]).to(dtype)


def activate(logits: Tensor, activation: str) -> Tensor:
    return torch.softmax(logits, dim=1) if activation == "softmax" else torch.sigmoid(logits)


def check_class_weights(class_weights: Tensor | None, n_channels: int, like: Tensor,
                        validate: bool = False) -> Tensor | None:
    """Check a ``(K,)`` weight vector's shape (and, with ``validate``, that no weight is negative: a host sync)
    and return it on ``like``'s device and dtype (no copy when it is there already)."""
    if class_weights is None:
        return None
    w = torch.as_tensor(class_weights)
    if w.ndim != 1 or w.shape[0] != n_channels:
        raise ValueError(f"class_weights must have shape ({n_channels},), got {tuple(w.shape)}")
    if not torch.is_floating_point(w):
        w = w.float()
    if validate and bool((w < 0).any()):
        raise ValueError("class_weights must be non-negative")
    return w.to(device=like.device, dtype=like.dtype, non_blocking=True)


def finish(per_sample: Tensor, batch_value: Tensor | None, reduction: str) -> Tensor:
    """``"none"`` -> the per-sample vector; ``"mean"`` -> ``batch_value`` or the mean of the vector."""
    if reduction == "none":
        return per_sample
    return per_sample.mean() if batch_value is None else batch_value


def flat(logits: Tensor) -> Tensor:
    """``(B, K, *spatial)`` -> ``(B, K, N)``."""
    return logits.reshape(logits.shape[0], logits.shape[1], -1)
