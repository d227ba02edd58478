"""Focused Practice (FP-PET, paper 000 §1.2 and §2): a ``Sampler`` over a fixed grid of patches that remembers
every patch's last loss and oversamples the hard ones.

Patch grid (§1.2, "128³ patches with 0.5 overlap"): nnU-Net's sliding-window placement per case; the request key is
the global patch index. At ``epoch_end`` (§2, "maximum inter-class variance") Otsu's threshold over the seen
losses splits hard from easy, and the ``drop_hardest`` (20 %) hardest are excluded from the next epoch. Reading
chosen for "incorporate the remaining 80 %": every patch plus the kept hard patches once more (weights
``hard_oversample`` = 2 / 1 / 0 for kept hard / easy / excluded); an excluded patch's loss is forgotten. Unseen
patches count as hard (``unseen_loss="max"``) or get the mean loss (``"mean"``); ``foreground_fraction`` draws the
last batch positions from foreground patches. Details: ``docs/strategies.md``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from focusseg.data.samplers import SAMPLERS
from focusseg.inference.windows import compute_steps
from focusseg.roles import PatchRequest, StepOutput


def otsu_threshold(values: torch.Tensor | np.ndarray | Sequence[float], bins: int = 256, edge: bool = False) -> float:
    """Otsu's threshold on 1-D values: maximise the between-class variance ``w0 w1 (mu0 - mu1)^2`` over the
    splits between ``bins`` equal-width histogram bins on ``[min, max]`` (non-finite values ignored).

    Returns the centre of the last bin of class 0 (the convention of ``skimage.filters.threshold_otsu``), or with
    ``edge=True`` that bin's upper edge, so that ``value > t`` reproduces the histogram split exactly (with the
    centre, the upper half of that bin falls in class 1). A constant input returns its value."""
    v = np.asarray(torch.as_tensor(values, dtype=torch.float64).flatten().numpy())
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("otsu_threshold needs at least one finite value")
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    hist = hist.astype(np.float64)
    w0 = np.cumsum(hist)
    w1 = np.cumsum(hist[::-1])[::-1]
    m0 = np.cumsum(hist * centers) / np.maximum(w0, 1e-300)
    m1 = (np.cumsum((hist * centers)[::-1]) / np.maximum(np.cumsum(hist[::-1]), 1e-300))[::-1]
    between = w0[:-1] * w1[1:] * (m0[:-1] - m1[1:]) ** 2
    k = int(np.argmax(between))
    return float(edges[k + 1] if edge else centers[k])


class FocusedPracticeSampler:
    """See the module docstring. ``case_shapes`` maps case id -> spatial shape (preprocessed voxels)."""

    def __init__(
        self,
        case_shapes: Mapping[str, Sequence[int]],
        patch_size: Sequence[int],
        overlap: float = 0.5,
        hard_oversample: float = 2.0,
        drop_hardest: float = 0.2,
        unseen_loss: str = "max",
        foreground_keys: Iterable[int] | None = None,
        foreground_fraction: float = 0.0,
        hist_bins: int = 32,
    ) -> None:
        if not case_shapes:
            raise ValueError("case_shapes is empty")
        if unseen_loss not in ("max", "mean"):
            raise ValueError(f"unseen_loss must be 'max' or 'mean', got {unseen_loss!r}")
        if hard_oversample <= 0 or not 0 <= drop_hardest < 1 or not 0 <= foreground_fraction <= 1:
            raise ValueError("need hard_oversample > 0, 0 <= drop_hardest < 1, 0 <= foreground_fraction <= 1")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.hard_oversample = float(hard_oversample)
        self.drop_hardest = float(drop_hardest)
        self.unseen_loss = unseen_loss
        self.foreground_fraction = float(foreground_fraction)
        self.hist_bins = int(hist_bins)
        self.cases = sorted(case_shapes)
        self.grids: list[list[list[int]]] = [self._grid(case_shapes[c], overlap) for c in self.cases]
        counts = [math.prod(len(a) for a in g) for g in self.grids]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
        self.n_patches = int(self.offsets[-1])
        self.losses = torch.full((self.n_patches,), float("nan"), dtype=torch.float64)
        self.sample_weights = torch.ones(self.n_patches, dtype=torch.float64)
        self.hard = torch.zeros(self.n_patches, dtype=torch.bool)
        self.excluded = torch.zeros(self.n_patches, dtype=torch.bool)
        self.foreground = torch.zeros(self.n_patches, dtype=torch.bool)
        self._cdf: tuple[torch.Tensor, torch.Tensor] | None = None
        self._cdf_weights: torch.Tensor | None = None
        if foreground_keys is not None:
            self.foreground[torch.as_tensor(sorted(set(foreground_keys)), dtype=torch.long)] = True

    def _grid(self, shape: Sequence[int], overlap: float) -> list[list[int]]:
        if len(shape) != len(self.patch_size):
            raise ValueError(f"case shape {tuple(shape)} and patch {self.patch_size} differ in dimensions")
        padded = [max(int(s), p) for s, p in zip(shape, self.patch_size)]
        steps = [sorted(set(st)) for st in compute_steps(padded, self.patch_size, overlap)]  # 2D: one start per slice
        return [st if s >= p else [-((p - s) // 2)] for st, s, p in zip(steps, shape, self.patch_size)]

    # ----- index -------------------------------------------------------------------------------------------
    def request(self, key: int) -> PatchRequest:
        """The patch with global index ``key``."""
        if not 0 <= key < self.n_patches:
            raise IndexError(f"patch key {key} out of range [0, {self.n_patches})")
        ci = bisect.bisect_right(self.offsets, key) - 1
        grid = self.grids[ci]
        idx = np.unravel_index(key - self.offsets[ci], [len(a) for a in grid])
        return PatchRequest(self.cases[ci], tuple(int(a[i]) for a, i in zip(grid, idx)), int(key))

    def keys_containing(self, case: str, coords: np.ndarray) -> list[int]:
        """Keys of the patches of ``case`` that contain at least one voxel of ``coords`` (N, ndim), e.g. the
        foreground class locations stored by preprocessing; feed the union to ``foreground_keys``."""
        ci = self.cases.index(case)
        coords = np.asarray(coords).reshape(-1, len(self.patch_size))
        inside = None
        for ax, (starts, p) in enumerate(zip(self.grids[ci], self.patch_size)):
            st = np.asarray(starts)[:, None]
            m = (coords[None, :, ax] >= st) & (coords[None, :, ax] < st + p)  # (n_ax, N)
            m = m.reshape((1,) * ax + (len(starts),) + (1,) * (len(self.patch_size) - ax - 1) + (-1,))
            inside = m if inside is None else inside & m
        flat = np.flatnonzero(inside.any(axis=-1).ravel()) if coords.size else np.zeros(0, dtype=np.int64)
        return [int(k) + self.offsets[ci] for k in flat]

    # ----- Sampler role ------------------------------------------------------------------------------------
    def next_batch(self, batch_size: int, generator: torch.Generator) -> list[PatchRequest]:
        """Draw with replacement, ``P(key) = weight / sum(weights)``: inverse-CDF sampling on a cumulative sum
        cached until the weights change (``torch.multinomial`` re-scans all weights on every call)."""
        n_fg = batch_size - int(round(batch_size * (1.0 - self.foreground_fraction)))
        if self._cdf is None or self._cdf_weights is not self.sample_weights:
            fg_w = self.sample_weights * self.foreground
            self._cdf = (
                torch.cumsum(self.sample_weights, 0),
                torch.cumsum(fg_w if fg_w.sum() > 0 else self.sample_weights, 0),
            )
            self._cdf_weights = self.sample_weights
        keys = self._draw(self._cdf[0], batch_size - n_fg, generator)
        keys += self._draw(self._cdf[1], n_fg, generator)
        return [self.request(k) for k in keys]

    @staticmethod
    def _draw(cdf: torch.Tensor, n: int, generator: torch.Generator) -> list[int]:
        if n == 0:
            return []
        total = float(cdf[-1])
        if total <= 0:
            raise RuntimeError("every patch has sampling weight 0")
        x = (torch.rand(n, generator=generator, dtype=torch.float64) * total).clamp(max=total * (1 - 1e-12))
        return torch.searchsorted(cdf, x, right=True).tolist()

    def update(self, step: StepOutput) -> None:
        loss = step.per_sample_loss.detach().to("cpu", torch.float64).flatten()
        if loss.numel() != len(step.requests):
            raise ValueError(f"{loss.numel()} per-sample losses for {len(step.requests)} requests")
        for req, value in zip(step.requests, loss.tolist()):
            if req.key >= 0 and math.isfinite(value):
                self.losses[req.key] = value

    def epoch_end(self, epoch: int) -> dict[str, Any]:
        seen = ~torch.isnan(self.losses)
        n_seen = int(seen.sum())
        log: dict[str, Any] = {"epoch": epoch, "n_seen": n_seen, "n_unseen": self.n_patches - n_seen}
        if n_seen == 0:
            self.sample_weights = torch.ones(self.n_patches, dtype=torch.float64)
            return {**log, "threshold": float("nan"), "n_hard": 0, "n_easy": 0, "n_excluded": 0}
        seen_losses = self.losses[seen]
        t = otsu_threshold(seen_losses, edge=True)
        hard = seen & (self.losses > t)
        n_excl = int(self.drop_hardest * int(hard.sum()))
        excluded = torch.zeros_like(hard)
        if n_excl:
            hard_keys = torch.nonzero(hard).flatten()
            order = torch.argsort(-self.losses[hard_keys], stable=True)
            excluded[hard_keys[order[:n_excl]]] = True
        unseen = ~seen
        if self.unseen_loss == "max":
            hard |= unseen
        elif bool((seen_losses.mean() > t).item()):
            hard |= unseen
        hard &= ~excluded
        self.hard, self.excluded = hard, excluded
        self.sample_weights = torch.where(hard, self.hard_oversample, 1.0).to(torch.float64)
        self.sample_weights[excluded] = 0.0
        self.losses[excluded] = float("nan")  # not trained on next epoch: its loss would be stale
        counts, edges = np.histogram(seen_losses.numpy(), bins=self.hist_bins)
        return {
            **log,
            "threshold": t,
            "n_hard": int(hard.sum()),
            "n_easy": self.n_patches - int(hard.sum()) - n_excl,
            "n_excluded": n_excl,
            "loss_hist": {"counts": counts.tolist(), "edges": edges.tolist()},
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "n_patches": self.n_patches,
            "losses": self.losses.clone(),
            "sample_weights": self.sample_weights.clone(),
            "hard": self.hard.clone(),
            "excluded": self.excluded.clone(),
            "foreground": self.foreground.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["n_patches"]) != self.n_patches:
            raise ValueError(f"state has {state['n_patches']} patches, this index has {self.n_patches}")
        for name in ("losses", "sample_weights", "hard", "excluded", "foreground"):
            setattr(self, name, torch.as_tensor(state[name]).clone())


@SAMPLERS.register("focused_practice")
def build_focused_practice_sampler(case_shapes, patch_size, locations=None, p_foreground: float = 0.33, **kwargs: Any):
    """Focused Practice (FP-PET §1.2) over a grid index of patches; foreground oversampling picks among the
    grid patches that contain a stored foreground location."""
    probe = FocusedPracticeSampler(case_shapes, patch_size, **kwargs)
    keys = [k for c in probe.cases for cls, locs in (locations or {}).get(c, {}).items() if len(locs) and int(cls) >= 0
            for k in probe.keys_containing(c, locs)]
    return FocusedPracticeSampler(case_shapes, patch_size, foreground_keys=keys,
                                  foreground_fraction=p_foreground if keys else 0.0, **kwargs)

