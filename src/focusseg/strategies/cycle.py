"""Cycle training (paper 004 §2.2, eq. 1): three networks; each is trained on the part of the mini-batch its two
peers (the "committee") pick -- co-teaching (Han et al. 2018) with three networks.

For network A with its peers' per-sample losses ``l_B, l_C`` and ``n = max(1, int(keep * B))`` (keep = 0.75):
``"agreement"`` (eq. 1, the paper's rule) keeps the n samples with the smallest ``|l_B - l_C|`` (reading: argmin
over a set = the n smallest; ties by batch position); ``"small_loss"`` the n smallest ``l_B + l_C``;
``"intersection"`` (PyMIC TriNet) the samples in both peers' n-smallest sets (at least one).

Forgetting-rate ramp (co-teaching): ``keep(e) = 1 - (1 - keep) * min(e / (T - 1), 1)`` over the first ``T``
epochs (``T <= 1``: ``keep`` from the start). Details: ``docs/strategies.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from focusseg.roles import PatchRequest, StepOutput

CRITERIA = ("agreement", "small_loss", "intersection")


def _n_keep(batch: int, keep: float) -> int:
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    return max(1, int(keep * batch))


def _smallest(values: torch.Tensor, n: int) -> torch.Tensor:
    mask = torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    mask[torch.argsort(values, stable=True)[:n]] = True
    return mask


def cycle_select(
    losses_b: torch.Tensor, losses_c: torch.Tensor, keep: float = 0.75, criterion: str = "agreement"
) -> torch.Tensor:
    """The samples the committee (networks B and C) passes to the third network.

    Args:
        losses_b: per-sample losses ``(B,)`` of the first peer (detached here).
        losses_c: per-sample losses ``(B,)`` of the second peer.
        keep: the kept fraction; ``n = max(1, int(keep * B))`` samples.
        criterion: ``"agreement"``, ``"small_loss"`` or ``"intersection"`` (module docstring).

    Returns:
        A boolean mask ``(B,)`` of the selected samples.

    Raises:
        ValueError: when the loss vectors are not two ``(B,)`` tensors of one shape, or for an unknown criterion.
    """
    if losses_b.shape != losses_c.shape or losses_b.dim() != 1:
        raise ValueError(f"need two (B,) loss vectors, got {tuple(losses_b.shape)} and {tuple(losses_c.shape)}")
    lb, lc = losses_b.detach(), losses_c.detach()
    n = _n_keep(lb.numel(), keep)
    if criterion == "agreement":
        return _smallest((lb - lc).abs(), n)
    if criterion == "small_loss":
        return _smallest(lb + lc, n)
    if criterion == "intersection":
        mask = _smallest(lb, n) & _smallest(lc, n)
        return mask if bool(mask.any()) else _smallest(lb + lc, 1)
    raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


def keep_schedule(epoch: int, keep: float = 0.75, ramp_epochs: int = 0) -> float:
    """Co-teaching's ramp: keep ratio 1 at epoch 0 falling linearly to ``keep`` at epoch ``ramp_epochs - 1``."""
    if ramp_epochs <= 1:
        return keep
    return 1.0 - (1.0 - keep) * min(epoch / (ramp_epochs - 1), 1.0)


def _main_output(out: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def class_counts(logits: torch.Tensor, labels: torch.Tensor, k: int | None = None,
                 ignore_label: int | None = None) -> tuple[torch.Tensor, ...]:
    """Per-class TP, FP, FN voxel counts ``(K,)`` of ``argmax(logits)`` against ``labels`` over a batch, on the
    logits' device without a host sync (a scatter-add into ``K * K`` bins; CUDA ``bincount`` would read the
    maximum on the host). ``labels`` ``(B, 1 | 2, *S)`` or ``(B, *S)``, any integer dtype (uint8 widened before
    ``label * K``); with a blob loss's ``(labels, instance map)`` target only channel 0 counts. Voxels labelled
    ``ignore_label`` are not counted (they go to one extra bin that is dropped)."""
    k = int(logits.shape[1]) if k is None else int(k)
    if labels.ndim == logits.ndim:
        labels = labels[:, 0]
    pred = logits.max(1).indices  # = argmax(1) (first maximum), much faster on the CPU
    return label_counts(pred, labels, k, ignore_label)


def label_counts(pred: torch.Tensor, labels: torch.Tensor, k: int, ignore_label: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class TP, FP, FN ``(K,)`` of integer maps ``pred`` and ``labels`` (same number of voxels, any device)
    from a ``K x K`` confusion matrix by scatter-add (no host sync; label values outside ``0..K-1`` are clamped);
    voxels labelled ``ignore_label`` go to one extra bin that is dropped."""
    flat_labels = labels.flatten().long()
    idx = flat_labels.clamp(0, k - 1) * k + pred.flatten().long()
    if ignore_label is None:
        conf = torch.zeros(k * k, dtype=torch.long, device=idx.device).index_add_(0, idx, torch.ones_like(idx))
    else:
        idx = torch.where(flat_labels == int(ignore_label), k * k, idx)
        conf = torch.zeros(k * k + 1, dtype=torch.long, device=idx.device).index_add_(0, idx, torch.ones_like(idx))
        conf = conf[: k * k]
    conf = conf.reshape(k, k)
    tp = conf.diag()
    return tp, conf.sum(0) - tp, conf.sum(1) - tp


@torch.no_grad()
def ensemble_logits(networks: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Mean of the networks' logits (full-resolution output under deep supervision); the caller sets eval mode."""
    return torch.stack([_main_output(net(x)).float() for net in networks]).mean(0)


class CycleTask:
    """Owns three networks and their optimisers; ``step`` does one cycle-training iteration.

    Args:
        networks, optimizers: three each, optimiser ``i`` over network ``i``'s parameters.
        loss_fn: ``loss_fn(logits, target[, class_weights=...]) -> (B,)`` (``reduction="none"``).
        keep, criterion, ramp_epochs: see the module docstring; ``set_epoch`` advances the ramp.
        grad_clip: max gradient norm per network (nnU-Net: 12), None = off.
        ignore_label: the plan's ignore label, left out of the step's class counts (the loss masks it itself).
    """

    def __init__(
        self,
        networks: Sequence[nn.Module],
        optimizers: Sequence[torch.optim.Optimizer],
        loss_fn: Callable[..., torch.Tensor],
        keep: float = 0.75,
        criterion: str = "agreement",
        ramp_epochs: int = 0,
        grad_clip: float | None = 12.0,
        ignore_label: int | None = None,
    ) -> None:
        if len(networks) != 3 or len(optimizers) != 3:
            raise ValueError("cycle training needs exactly three networks and three optimisers")
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
        self.networks, self.optimizers = list(networks), list(optimizers)
        self.loss_fn = loss_fn
        self.keep, self.criterion, self.ramp_epochs = float(keep), criterion, int(ramp_epochs)
        self.grad_clip = grad_clip
        self.ignore_label = ignore_label
        self.epoch = 0
        self.forwards: list[Any] = list(self.networks)  # what the step calls (DDP-wrapped on several processes)
        self.selection: Any = None  # several processes: selection over the global batch (engine.distributed)

    @property
    def keep_now(self) -> float:
        return keep_schedule(self.epoch, self.keep, self.ramp_epochs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        requests: list[PatchRequest] | None = None,
        class_weights: torch.Tensor | None = None,
    ) -> StepOutput:
        """Forward all three, select per network with its peers' detached losses, backward each network's mean
        selected loss, step all three optimisers. ``per_sample_loss`` is the mean of the three networks'.

        ``per_class_tp/fp/fn``: :func:`class_counts` of the mean of the three networks' (main) logits of this
        forward pass -- the ensemble's prediction before the update, as the supervised task counts its
        step's forward -- so no second forward of the three networks is needed."""
        kwargs = {} if class_weights is None else {"class_weights": class_weights}
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        losses, mains = [], []
        for net in self.forwards:
            out = net(images)
            per_sample = self.loss_fn(out, labels, **kwargs)
            if per_sample.dim() != 1 or per_sample.shape[0] != images.shape[0]:
                raise ValueError(f"loss_fn must return per-sample losses (B,), got {tuple(per_sample.shape)}")
            losses.append(per_sample)
            mains.append(_main_output(out).detach().float())
        with torch.no_grad():
            tp, fp, fn = class_counts(torch.stack(mains).mean(0), labels, ignore_label=self.ignore_label)
        detached = [loss.detach() for loss in losses]
        if self.selection is None:
            masks = [cycle_select(detached[(i + 1) % 3], detached[(i + 2) % 3], self.keep_now, self.criterion)
                     for i in range(3)]
            selected = [loss[m].mean() for loss, m in zip(losses, masks)]
        else:  # several processes: select on the global batch, normalise by the global count
            masks, selected = self._select_globally(losses, detached)
        torch.stack(selected).sum().backward()  # the networks share nothing: one backward, three gradients
        for net, opt in zip(self.networks, self.optimizers):
            if self.grad_clip is not None:
                nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
            opt.step()
        stacked = torch.stack(detached)
        return StepOutput(
            requests=list(requests or []),
            loss=float(torch.stack(selected).detach().mean()),
            per_sample_loss=stacked.mean(0),
            per_class_tp=tp,
            per_class_fp=fp,
            per_class_fn=fn,
            extras={"masks": torch.stack(masks), "per_network_loss": stacked, "keep": self.keep_now},
        )

    def _select_globally(self, losses: list[torch.Tensor], detached: list[torch.Tensor]
                         ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Committee selection over the whole world's batch: each network's per-sample losses are gathered, the
        peers' global vectors select, and this rank's loss is ``W * sum(local selected) / global count``; DDP's
        gradient average over the ``W`` ranks then gives the gradient of the global selected mean, exactly as one
        process with the global batch."""
        sel = self.selection
        world_size = sel.world.size
        b = detached[0].shape[0]
        full = [sel.gather(d) for d in detached]
        masks, selected = [], []
        for i in range(3):
            global_mask = cycle_select(full[(i + 1) % 3], full[(i + 2) % 3], self.keep_now, self.criterion)
            local = sel.local(global_mask, b)
            count = global_mask.sum().clamp_min(1).to(losses[i].dtype)
            masks.append(local)
            selected.append(losses[i][local].sum() * world_size / count)
        return masks, selected

    def state_dict(self) -> dict[str, Any]:
        return {
            "networks": [net.state_dict() for net in self.networks],
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for net, s in zip(self.networks, state["networks"]):
            net.load_state_dict(s)
        for opt, s in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(s)
        self.epoch = int(state["epoch"])
