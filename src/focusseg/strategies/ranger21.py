"""Ranger21 (Wright & Demeure 2021, arXiv 2106.13731; the optimiser of VALDO, paper 001 §2): AdamW core with
adaptive gradient clipping, gradient centralisation and normalisation, positive-negative momentum, norm loss,
stable weight decay, linear warmup / warmdown and lookahead. Written from the paper and the reference package
(PyPI ``ranger21`` 0.1.0, defaults kept), without its known bug.

The schedule ``lr_t`` scales the parameter group's ``lr``, so an outer ``LRController`` still composes (pair with
"constant"). The main difference from ranger21 0.1.0: weight decay and norm loss act on every parameter (0.1.0
applies them to the last parameter of its loop only). The step's formulas, the schedule and every difference
from 0.1.0: ``docs/strategies.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F


def unit_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm per output unit (dim 0) keeping dims; the whole-tensor norm for scalars and vectors."""
    if x.dim() <= 1:
        return x.norm(p=2)
    return x.norm(p=2, dim=tuple(range(1, x.dim())), keepdim=True)


class Ranger21(torch.optim.Optimizer):
    """See the module docstring; ``total_iterations`` (T) is required for warmup/warmdown."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        total_iterations: int = 1000,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-4,
        pnm_momentum: float = 1.0,
        normloss_factor: float = 1e-4,
        agc_clip: float = 1e-2,
        agc_eps: float = 1e-3,
        use_gc: bool = True,
        normalize_gradient: bool = True,
        softplus_beta: float = 50.0,
        lookahead_k: int = 5,
        lookahead_alpha: float = 0.5,
        warmup_iterations: int | None = None,
        warmup_pct: float = 0.22,
        warmdown_start_pct: float = 0.72,
        warmdown_min_lr: float = 3e-5,
        schedule: bool = True,
    ) -> None:
        if lr <= 0 or total_iterations < 1:
            raise ValueError(f"need lr > 0 and total_iterations >= 1, got {lr}, {total_iterations}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            pnm_momentum=pnm_momentum,
            normloss_factor=normloss_factor,
        )
        super().__init__(params, defaults)
        self.total_iterations = int(total_iterations)
        self.agc_clip, self.agc_eps = float(agc_clip), float(agc_eps)
        self.use_gc, self.normalize_gradient = bool(use_gc), bool(normalize_gradient)
        self.softplus_beta = float(softplus_beta)
        self.lookahead_k, self.lookahead_alpha = int(lookahead_k), float(lookahead_alpha)
        if warmup_iterations is None:
            warmup_iterations = math.ceil(2.0 / (1.0 - betas[1]))
            if warmup_iterations / self.total_iterations > 0.45:
                warmup_iterations = int(warmup_pct * self.total_iterations)
        self.warmup_iterations = int(warmup_iterations)
        self.warmdown_start = int(warmdown_start_pct * self.total_iterations)
        self.warmdown_min_lr = float(warmdown_min_lr)
        self.schedule = bool(schedule)
        for group in self.param_groups:
            group.setdefault("step", 0)
            group.setdefault("current_lr", 0.0)

    def scheduled_lr(self, lr: float, t: int) -> float:
        """``lr_t`` for the 1-based iteration ``t`` (warmup, then warmdown; see the module docstring)."""
        if not self.schedule:
            return lr
        if self.warmup_iterations > 0 and t <= self.warmup_iterations:
            lr = lr * min(1.0, t / self.warmup_iterations)
        if t >= self.warmdown_start:
            pct = min((t + 1 - self.warmdown_start) / (self.total_iterations - self.warmdown_start + 1), 1.0)
            lr = max(lr - (lr - self.warmdown_min_lr) * pct, self.warmdown_min_lr)
        return lr

    def _prepare(self, p: torch.Tensor) -> torch.Tensor:
        """Steps 1-2 of the module docstring on a copy of ``p.grad`` (``.grad`` itself is left alone)."""
        g = p.grad.detach()
        if g.is_sparse:
            raise RuntimeError("Ranger21 does not support sparse gradients")
        owned = False
        if self.agc_clip > 0:  # scale = min(1, max_norm / u(g)): the same as clipping where u(g) > max_norm
            max_norm = unit_norm(p.detach()).clamp(min=self.agc_eps) * self.agc_clip
            g = g * (max_norm / unit_norm(g).clamp(min=1e-6)).clamp(max=1.0)
            owned = True
        if self.use_gc and g.dim() > 1:
            mean = g.mean(dim=tuple(range(1, g.dim())), keepdim=True)
            g = g.sub_(mean) if owned else g - mean
            owned = True
        if self.normalize_gradient and g.numel() > 2:
            std = g.std() + 1e-8
            g = g.div_(std) if owned else g / std
        return g

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads: dict[torch.Tensor, torch.Tensor] = {}
        var_sum, size = torch.zeros((), dtype=torch.float64), 0
        for group in self.param_groups:  # phase 1: gradients and second moments, for stable weight decay
            group["step"] += 1
            b2 = group["betas"][1]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["grad_ma"] = torch.zeros_like(p)
                    state["neg_grad_ma"] = torch.zeros_like(p)
                    state["variance_ma"] = torch.zeros_like(p)
                    if self.lookahead_k > 0:
                        state["slow"] = p.detach().clone()
                g = grads[p] = self._prepare(p)
                state["variance_ma"].mul_(b2).addcmul_(g, g, value=1 - b2)
                var_sum = var_sum + state["variance_ma"].sum().to(var_sum) / (1 - b2 ** group["step"])
                size += p.numel()
        if size == 0:
            return loss
        var_norm = math.sqrt(float(var_sum) / size)
        for group in self.param_groups:  # phase 2: decay, norm loss, PNM AdamW update, lookahead
            t = group["step"]
            b1, b2 = group["betas"]
            beta0, eps = group["pnm_momentum"], group["eps"]
            lr = group["current_lr"] = self.scheduled_lr(group["lr"], t)
            noise_norm = math.sqrt((1 + beta0) ** 2 + beta0**2)
            for p in group["params"]:
                if p not in grads:
                    continue
                state = self.state[p]
                if group["weight_decay"] and var_norm > 0:
                    p.mul_(1 - group["weight_decay"] * lr / var_norm)
                if group["normloss_factor"]:
                    p.mul_(1 - lr * 2 * group["normloss_factor"] * (1 - 1 / (unit_norm(p) + eps)))
                ma, neg = (state["grad_ma"], state["neg_grad_ma"])
                if t % 2 == 0:
                    ma, neg = neg, ma
                ma.mul_(b1**2).add_(grads[p], alpha=1 - b1**2)
                denom = state["variance_ma"].sqrt().div_(math.sqrt(1 - b2**t)).add_(eps)
                denom = F.softplus(denom, beta=self.softplus_beta)
                direction = ma.mul(1 + beta0).sub_(neg, alpha=beta0)
                p.addcdiv_(direction, denom, value=-lr / ((1 - b1**t) * noise_norm))
                if self.lookahead_k > 0 and t % self.lookahead_k == 0:
                    p.mul_(self.lookahead_alpha).add_(state["slow"], alpha=1 - self.lookahead_alpha)
                    state["slow"].copy_(p)
        return loss
