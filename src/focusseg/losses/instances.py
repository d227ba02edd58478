"""Per-instance sums for blob loss, vectorised over all instances of a batch.

Blob loss scores instance ``u`` (a connected component of class ``c`` in sample ``b``) with
``m_u = p_c * [(g_c == 0) or (inst == u)]`` against ``y_u = [inst == u]``; every region or voxel loss of that
pair is a function of ``inst_sum(f)[u] = sum_{v in u} f(p_c(v))`` (one ``index_add``) and
``bg_sum(f)[u] = sum_{v : g_c(v) = 0} f(p_c(v))`` (the channel total minus the class's instance voxels, in
float64). Cost: O(B K N), independent of the instance count.

Components come from cc3d on the CPU (:func:`instance_stats`) or from the loader's instance map
(:func:`instance_stats_from_map`, indexed on the device with fixed-size tensors: no host sync). Details:
``docs/losses.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import cc3d
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from focusseg.losses.fused import SigmoidSums

CONNECTIVITY = {2: (4, 8), 3: (6, 18, 26)}
FUSED = {"p": 0, "p2": 1, "nlog1mp": 2}  # bg sums served by the fused sigmoid pass (see fused.py)
Quantity = str | Callable[[Any], Tensor]


class ProbView:
    """``p``, ``p2`` (= p^2), ``logp``, ``log1mp`` and ``nlog1mp`` of the foreground channels ``(B, C, N)``.

    Computed lazily; no clamping is needed: ``logsigmoid``, ``softplus``, ``log_softmax`` and
    :func:`log1m_softmax` are finite for finite logits.
    """

    def __init__(self, x: Tensor, activation: str, first: int) -> None:
        self.x, self.activation, self.first = x, activation, first

    @cached_property
    def lse(self) -> Tensor:
        return torch.logsumexp(self.x, dim=1, keepdim=True)

    @cached_property
    def logp(self) -> Tensor:
        return F.logsigmoid(self.x) if self.activation == "sigmoid" else self.x[:, self.first :] - self.lse

    @cached_property
    def p(self) -> Tensor:
        return torch.sigmoid(self.x) if self.activation == "sigmoid" else torch.exp(self.logp)

    @cached_property
    def p2(self) -> Tensor:
        return self.p * self.p

    @cached_property
    def nlog1mp(self) -> Tensor:
        """``-log(1 - p)`` (``softplus(x)`` for sigmoid)."""
        return F.softplus(self.x) if self.activation == "sigmoid" else -log1m_softmax(self.x)[:, self.first :]

    @cached_property
    def log1mp(self) -> Tensor:
        return -self.nlog1mp


class _Gathered:
    """The same quantities at the instance voxels only (``lin``: linear indices into ``(B, C, N)``)."""

    def __init__(self, full: ProbView, lin: Tensor, n_voxels: int, x_sel: Tensor | None) -> None:
        self.full, self.lin, self.n_voxels, self._x_sel = full, lin, n_voxels, x_sel

    @cached_property
    def x(self) -> Tensor:
        if self._x_sel is not None:
            return self._x_sel
        if self.full.activation == "sigmoid":
            return self.full.x.reshape(-1)[self.lin]
        _, k, n = self.full.x.shape
        c = k - self.full.first
        sample, rest = self.lin // (c * n), self.lin % (c * n)
        return self.full.x.reshape(-1)[(sample * k + self.full.first + rest // n) * n + rest % n]

    @cached_property
    def logp(self) -> Tensor:
        if self.full.activation == "sigmoid":
            return F.logsigmoid(self.x)
        c = self.full.x.shape[1] - self.full.first
        return (
            self.x
            - self.full.lse.reshape(-1)[(self.lin // (c * self.n_voxels)) * self.n_voxels + self.lin % self.n_voxels]
        )

    @cached_property
    def p(self) -> Tensor:
        return torch.sigmoid(self.x) if self.full.activation == "sigmoid" else torch.exp(self.logp)

    @cached_property
    def p2(self) -> Tensor:
        return self.p * self.p

    @cached_property
    def log1mp(self) -> Tensor:
        if self.full.activation == "sigmoid":
            return F.logsigmoid(-self.x)
        return self.full.log1mp.reshape(-1)[self.lin]

    @cached_property
    def nlog1mp(self) -> Tensor:
        return -self.log1mp


def _value(view: ProbView | _Gathered, q: Quantity) -> Tensor:
    return getattr(view, q) if isinstance(q, str) else q(view)


def log1m_softmax(x: Tensor) -> Tensor:
    """``log(1 - softmax(x))`` over dim 1 with finite gradients.

    For the arg-max channel ``1 - p`` is the sum of the other probabilities: ``logsumexp`` of the other logits
    minus ``logsumexp`` of all; every other channel has ``p <= 1/2`` and uses ``log1p(-p)``.
    """
    lse = torch.logsumexp(x, dim=1, keepdim=True)
    amax = x.max(dim=1, keepdim=True).indices  # = argmax (first maximum); faster than argmax on the CPU over dim 1
    is_max = torch.zeros_like(x, dtype=torch.bool).scatter_(1, amax, True)
    rest = torch.logsumexp(x.masked_fill(is_max, float("-inf")), dim=1, keepdim=True) - lse
    p_other = torch.exp(x - lse).masked_fill(is_max, 0.0)
    return torch.where(is_max, rest, torch.log1p(-p_other))


@dataclass
class InstanceStats:
    """Instances of one batch and the sums blob loss needs (see the module docstring).

    ``size`` (M,), ``inst_group`` (M,) = ``b * C + c``; ``counts`` (B*C,) instances per (sample, channel).
    A quantity is a name (``"p"``, ``"p2"``, ``"logp"``, ``"log1mp"``, ``"nlog1mp"``) or a function of a view.
    With sigmoid and ``fused=True`` the background sums of ``p``, ``p2`` and ``nlog1mp`` come from one fused
    pass (:class:`~focusseg.losses.fused.SigmoidSums`).
    """

    view: ProbView
    lin: Tensor  # (S,) linear index into (B, C, N) of every instance voxel
    voxel_inst: Tensor  # (S,) instance index 0..M-1
    voxel_group: Tensor  # (S,) b * C + c
    size: Tensor  # (M,)
    inst_group: Tensor  # (M,)
    counts: np.ndarray | Tensor  # (B*C,) instances per group (a device tensor for instance maps)
    n_voxels: int
    n_instances: int
    fused: bool = True
    trash: bool = False  # voxels of no instance: voxel_inst == n_instances, voxel_group == number of groups
    voxel_norm: Tensor | None = None  # (M,) annotated voxels of each instance's sample (ignore label), else None

    @property
    def norm(self) -> Tensor | int:
        """What the voxel losses of every instance are divided by: the voxel count ``N``, or with an ignore label
        the annotated voxel count of the instance's sample ``(M,)``."""
        return self.n_voxels if self.voxel_norm is None else self.voxel_norm

    @cached_property
    def _fused_sums(self) -> tuple[Tensor, Tensor] | None:
        if not (self.fused and self.view.activation == "sigmoid"):
            return None
        x = self.view.x
        return SigmoidSums.apply(x.reshape(-1, x.shape[-1]), self.lin)

    @cached_property
    def _gathered(self) -> _Gathered:
        fused = self._fused_sums
        return _Gathered(self.view, self.lin, self.n_voxels, None if fused is None else fused[1])

    def inst_sum(self, q: Quantity) -> Tensor:
        """``sum_{v in u} q(p(v))`` for every instance u, shape (M,)."""
        vals = _value(self._gathered, q)
        out = vals.new_zeros(self.n_instances + self.trash).index_add_(0, self.voxel_inst, vals)
        return out[: self.n_instances] if self.trash else out

    def bg_sum(self, q: Quantity) -> Tensor:
        """``sum_{v : g_c(v) = 0} q(p_c(v))`` over the background of every instance's class, shape (M,)."""
        fused = self._fused_sums
        if fused is not None and isinstance(q, str) and q in FUSED:
            total = fused[0][:, FUSED[q]]
        else:
            total = _value(self.view, q).sum(-1).reshape(-1).to(torch.float64)
        inst = _value(self._gathered, q).to(torch.float64)
        if self.trash:
            total = torch.cat([total, total.new_zeros(1)])
        total = total.index_add(0, self.voxel_group, inst, alpha=-1.0)
        return total[self.inst_group].to(self.view.x.dtype)


def label_instances(chan: np.ndarray, connectivity: int) -> list[tuple[np.ndarray, int]]:
    """Connected components of every sample of ``chan`` ((B, *spatial), 0 = none, c + 1 = channel c).

    Voxels of different channels never join one component. Returns (component map, count) per sample.
    """
    return [cc3d.connected_components(a, connectivity=connectivity, return_N=True) for a in chan]


def instance_stats(
    x: Tensor, labels: Tensor, spatial: tuple[int, ...], activation: str, connectivity: int, fused: bool = True
) -> InstanceStats:
    """Label the instances of ``labels`` ((B, N) int) and index them into the logits ``x`` ((B, K, N))."""
    b, k, n = x.shape
    first = 1 if activation == "softmax" else 0
    n_ch = k - first
    # code = channel + 1 of the voxel's instance channel, 0 = none: the label itself, except for one sigmoid
    # channel, where every non-zero label is foreground
    code = (labels > 0) if activation == "sigmoid" and k == 1 else labels
    code = code.to(torch.uint8 if n_ch < 255 else torch.int32).cpu().numpy().reshape(b, *spatial)
    lin, vinst, vgroup, inst_group = [], [], [], []
    offset = 0
    for i, (cc, count) in enumerate(label_instances(code, connectivity)):
        flat_cc = cc.reshape(-1)
        sel = np.flatnonzero(flat_cc)
        ch = code[i].reshape(-1)[sel].astype(np.int64) - 1
        ids = flat_cc[sel].astype(np.int64) - 1
        lin.append((i * n_ch + ch) * n + sel)
        vinst.append(ids + offset)
        vgroup.append(i * n_ch + ch)
        owner = np.empty(count, dtype=np.int64)
        owner[ids] = ch
        inst_group.append(i * n_ch + owner)
        offset += int(count)
    cat = np.concatenate
    inst_group_np = cat(inst_group) if inst_group else np.zeros(0, np.int64)
    vinst_np = cat(vinst)

    def dev(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(x.device)

    return InstanceStats(
        view=ProbView(x, activation, first),
        lin=dev(cat(lin)),
        voxel_inst=dev(vinst_np),
        voxel_group=dev(cat(vgroup)),
        size=torch.from_numpy(np.bincount(vinst_np, minlength=offset)).to(device=x.device, dtype=x.dtype),
        inst_group=dev(inst_group_np),
        counts=np.bincount(inst_group_np, minlength=b * n_ch),
        n_voxels=n,
        n_instances=offset,
        fused=fused,
    )


#: Largest instance id per instance-map dtype (the number of bins per sample); wider maps use the voxel count.
MAX_ID = {torch.uint8: 255, torch.int8: 127, torch.int16: 32767}


def instance_stats_from_map(
    x: Tensor, labels: Tensor, inst: Tensor, activation: str, fused: bool = True, compact: bool | None = None
) -> InstanceStats:
    """Index the instances of an instance map into the logits ``x`` ((B, K, N)) on ``x``'s device, sync-free.

    ``labels`` (B, N) is the label map, ``inst`` (B, N) integer instance ids (0 = no instance; each instance
    lies in one class, ids unique within a sample and at most ``MAX_ID[dtype]``, or N for int32/int64 maps),
    as the loader's cc3d labelling gives them. Instance ``id`` of sample ``b`` is bin ``b * cap + id - 1``;
    ``size`` and ``counts`` count only non-empty bins, so ids that vanished (augmentation, deep-supervision
    downsampling) or were never used do not enter any mean. Same sums as :func:`instance_stats` on the same
    components (the bins keep cc3d's id order).

    ``compact`` (default: on the CPU, where reading a tensor costs nothing): select the instance voxels and
    renumber the instances ``0..M-1`` (``nonzero``/``unique``, data-dependent sizes: host syncs on a GPU),
    which is much less work than the dense bins when instances are sparse; the result is then exactly
    :func:`instance_stats`'s. ``False``: the dense, sync-free form.
    """
    b, k, n = x.shape
    first = 1 if activation == "softmax" else 0
    n_ch = k - first
    cap = MAX_ID.get(inst.dtype, n)
    dev = x.device
    code = (labels > 0).long() if activation == "sigmoid" and k == 1 else labels.long()
    ids = inst.reshape(b, n).long()
    valid = ids > 0
    ch = (code - 1).clamp(0, n_ch - 1)  # the voxel's foreground channel (any channel for non-instance voxels)
    sample = torch.arange(b, device=dev)[:, None]
    group = sample * n_ch + ch
    n_bins, n_groups = b * cap, b * n_ch
    if compact if compact is not None else dev.type == "cpu":
        sel = valid.reshape(-1).nonzero().squeeze(1)
        s_b, s_v = sel // n, sel % n
        s_group = group.reshape(-1)[sel]
        uniq, voxel_inst = torch.unique(s_b * cap + ids.reshape(-1)[sel], return_inverse=True)  # sorted: cc3d's order
        m = int(uniq.numel())
        size = torch.bincount(voxel_inst, minlength=m)
        inst_group = torch.zeros(m, dtype=torch.long, device=dev).scatter_(0, voxel_inst, s_group)
        return InstanceStats(
            view=ProbView(x, activation, first), lin=s_group * n + s_v, voxel_inst=voxel_inst,
            voxel_group=s_group, size=size.to(x.dtype), inst_group=inst_group,
            counts=np.bincount(inst_group.cpu().numpy(), minlength=n_groups), n_voxels=n, n_instances=m,
            fused=fused)
    lin = (group * n + torch.arange(n, device=dev)).reshape(-1)
    voxel_inst = torch.where(valid, sample * cap + (ids - 1).clamp(0, cap - 1), n_bins).reshape(-1)
    voxel_group = torch.where(valid, group, n_groups).reshape(-1)
    size = x.new_zeros(n_bins + 1).index_add_(0, voxel_inst, valid.reshape(-1).to(x.dtype))[:n_bins]
    inst_group = torch.zeros(n_bins + 1, dtype=torch.long, device=dev).scatter_(0, voxel_inst, voxel_group)
    inst_group = inst_group[:n_bins].clamp_max(n_groups - 1)  # empty bins: any group (they are masked)
    counts = x.new_zeros(n_groups).index_add_(0, inst_group, (size > 0).to(x.dtype))
    return InstanceStats(
        view=ProbView(x, activation, first), lin=lin, voxel_inst=voxel_inst, voxel_group=voxel_group, size=size,
        inst_group=inst_group, counts=counts, n_voxels=n, n_instances=n_bins, fused=fused, trash=True)
