"""Probabilities from logits, streaming mean/variance over predictions, and voxel-wise uncertainty maps.

Predictions ``p_j`` with weights ``w_j`` are reduced in one streaming accumulator (memory independent of their
number): mean ``p̄ = sum_j w_j p_j / sum_j w_j``, variance ``sum_j w_j p_j^2 / sum_j w_j - p̄^2`` (per class,
clamped at 0), entropy ``H = -sum_k p̄_k log p̄_k`` (divided by ``log K`` when normalised).

VALDO task 3 (paper 001, section 1.6) computes "the absolute inverse of the model outputs". Reading chosen
(:func:`inverse_confidence`): the bounded, order-preserving ``u = 1 - |2p - 1|`` with ``p = sigmoid(z)``; since
``|2p - 1| = tanh(|z| / 2)`` it ranks voxels as ``1/|z|`` does but lies in [0, 1]. For K softmax classes,
``u = 1 - (p_(1) - p_(2))``, one minus the margin of the two most probable classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ACTIVATIONS = ("softmax", "sigmoid")

__all__ = [
    "ACTIVATIONS",
    "ProbabilisticPrediction",
    "StreamingMoments",
    "activate",
    "entropy",
    "inverse_confidence",
]


def activate(logits: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """Probabilities from logits ``(K, *spatial)``: softmax over axis 0, or element-wise sigmoid."""
    if activation == "softmax":
        return torch.softmax(logits, dim=0)
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def entropy(probabilities: torch.Tensor, normalize: bool = False, binary: bool = False) -> torch.Tensor:
    """``H = -sum_k p_k log p_k`` over axis 0 (``0 log 0 = 0``); ``normalize`` divides by ``log K`` -> [0, 1].

    ``binary`` (sigmoid outputs, also implied by a single channel): each channel ``c`` is a foreground
    probability, ``H_c = -p log p - (1-p) log(1-p)``, and the map is the mean of ``H_c`` over channels
    (normalised by ``log 2``).
    """
    p = probabilities
    if binary or p.shape[0] == 1:
        h = -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)).mean(0)
        return h / math.log(2) if normalize else h
    h = -(torch.special.xlogy(p, p)).sum(0)
    return h / math.log(p.shape[0]) if normalize else h


def inverse_confidence(probabilities: torch.Tensor, binary: bool = False) -> torch.Tensor:
    """VALDO "absolute inverse of the model outputs" (module docstring): ``1 - (p_(1) - p_(2))`` over axis 0.

    ``binary`` (sigmoid outputs, also implied by a single channel): ``max_c (1 - |2 p_c - 1|)``.
    """
    p = probabilities
    if binary or p.shape[0] == 1:
        return (1 - (2 * p - 1).abs()).amax(0)
    top2 = torch.topk(p, 2, dim=0).values
    return 1 - (top2[0] - top2[1])


class StreamingMoments:
    """Weighted running sums of predictions (and of their squares when ``track_variance``) in one buffer each.

    ``add(p, w)`` accepts ``(K, *spatial)`` tensors on any device; the sums live on ``device`` in float32.
    """

    def __init__(self, track_variance: bool = False, device: str | torch.device = "cpu") -> None:
        self.track_variance = track_variance
        self.device = torch.device(device)
        self.total: torch.Tensor | None = None
        self.total_sq: torch.Tensor | None = None
        self.weight = 0.0
        self.count = 0

    def add(self, prediction: torch.Tensor, weight: float = 1.0) -> None:
        if weight <= 0:
            raise ValueError(f"weights must be positive, got {weight}")
        p = prediction.to(self.device, torch.float32)
        if self.total is None:
            self.total = torch.zeros_like(p)
            self.total_sq = torch.zeros_like(p) if self.track_variance else None
        elif p.shape != self.total.shape:
            raise ValueError(f"prediction {tuple(p.shape)} does not match earlier {tuple(self.total.shape)}")
        self.total.add_(p, alpha=weight)
        if self.total_sq is not None:
            self.total_sq.addcmul_(p, p, value=weight)
        self.weight += weight
        self.count += 1

    def mean(self) -> torch.Tensor:
        if self.total is None:
            raise RuntimeError("no prediction was added")
        return self.total / self.weight

    def variance(self) -> torch.Tensor:
        if self.total_sq is None:
            raise RuntimeError("variance needs track_variance=True and at least one prediction")
        return (self.total_sq / self.weight - self.mean() ** 2).clamp_min_(0.0)


@dataclass
class ProbabilisticPrediction:
    """Mean probabilities ``(K, *spatial)`` of ``n_predictions`` predictions and their per-class variance."""

    probabilities: torch.Tensor
    activation: str = "softmax"
    variance: torch.Tensor | None = None
    n_predictions: int = 1

    @classmethod
    def from_moments(cls, moments: StreamingMoments, activation: str) -> ProbabilisticPrediction:
        var = moments.variance() if moments.track_variance else None
        return cls(moments.mean(), activation, var, moments.count)

    def segmentation(self, threshold: float = 0.5) -> torch.Tensor:
        """Label map: argmax over classes (softmax), or ``p > threshold`` per channel (sigmoid, uint8)."""
        if self.activation == "softmax":
            return self.probabilities.argmax(0)
        return (self.probabilities > threshold).to(torch.uint8)

    def entropy(self, normalize: bool = False) -> torch.Tensor:
        """Entropy of the mean probabilities (binary per channel for sigmoid outputs)."""
        return entropy(self.probabilities, normalize, binary=self.activation == "sigmoid")

    def inverse_confidence(self) -> torch.Tensor:
        """VALDO's uncertainty map in the reading of the module docstring."""
        return inverse_confidence(self.probabilities, binary=self.activation == "sigmoid")

    def mean_variance(self) -> torch.Tensor:
        """Variance averaged over classes, one map ``(*spatial)`` (0 with a single prediction)."""
        if self.variance is None:
            raise RuntimeError("no variance: predict with return_uncertainty=True")
        return self.variance.mean(0)
