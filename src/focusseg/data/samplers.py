"""Patch samplers (the ``Sampler`` role): which case and where to crop, drawn in the main process.

``ForegroundSampler``: each sample picks a case uniformly; with probability ``p_foreground`` (nnU-Net 1/3, the
blob-loss paper 0.95) the patch is centred on a random voxel of a random foreground class present in the case,
otherwise it is placed uniformly so that it overlaps the volume. Reading chosen: the choice is drawn per sample
(the expected fraction of nnU-Net's forced last ``round(B * p)`` samples, for any ``p``).
2D plans place the 3D box :func:`sampling_patch` (extent 1 along ``slice_axis``). With an ignore label the
foreground classes exclude it, and the other patches are centred on an annotated voxel when the store holds their
locations (nnU-Net's ``annotated_classes_key``). Details: ``docs/data.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from focusseg.preprocessing.preprocess import ANNOTATED
from focusseg.registry import Registry
from focusseg.roles import PatchRequest, StepOutput

SAMPLERS: Registry = Registry("sampler")


def sampling_patch(plan: dict) -> tuple[int, ...]:
    """The patch samplers place in the preprocessed (3D) volume: the plan's ``patch_size`` for a 3D plan; for the
    2D configuration the in-plane patch with extent 1 inserted at ``slice_axis`` (a ``(1, H, W)``-like box).

    So a 2D :class:`PatchRequest` is an ordinary 3D start whose ``slice_axis`` coordinate is the slice index and
    whose other two are the in-plane corner; every sampler works unchanged: a foreground patch is centred on a
    foreground voxel, i.e. lies on a slice that holds it, and Focused Practice indexes one grid per slice. The
    loader crops that box and drops the unit axis (:class:`focusseg.data.loader.PatchLoader`, ``slice_axis``)."""
    patch = [int(p) for p in plan["patch_size"]]
    if plan.get("configuration", "3d") != "2d":
        return tuple(patch)
    return tuple(patch_with_slice(patch, int(plan["slice_axis"])))


def patch_with_slice(patch: list[int] | tuple[int, ...], slice_axis: int) -> list[int]:
    """A 2-value in-plane ``patch`` with extent 1 inserted at ``slice_axis`` (3 values)."""
    if len(patch) != 2 or slice_axis not in (0, 1, 2):
        raise ValueError(f"a 2D patch needs 2 sizes and a slice axis 0..2, got {tuple(patch)} and {slice_axis}")
    out = [int(p) for p in patch]
    out.insert(int(slice_axis), 1)
    return out


class ForegroundSampler:
    def __init__(self, case_shapes: dict[str, tuple[int, ...]], patch_size: tuple[int, ...],
                 locations: dict[str, dict[int, np.ndarray]], p_foreground: float = 0.33) -> None:
        if not 0.0 <= p_foreground <= 1.0:
            raise ValueError(f"p_foreground must be in [0, 1], got {p_foreground}")
        self.cases = sorted(case_shapes)
        self.case_shapes = case_shapes
        self.patch_size = tuple(patch_size)
        self.locations = locations
        self.p_foreground = p_foreground

    def _random_start(self, shape: tuple[int, ...], g: torch.Generator) -> tuple[int, ...]:
        start = []
        for s, p in zip(shape, self.patch_size):
            lo, hi = (min(0, s - p), max(0, s - p))  # smaller volume: any placement containing it
            start.append(int(torch.randint(lo, hi + 1, (1,), generator=g)))
        return tuple(start)

    def next_batch(self, batch_size: int, generator: torch.Generator) -> list[PatchRequest]:
        out = []
        for _ in range(batch_size):
            case = self.cases[int(torch.randint(len(self.cases), (1,), generator=generator))]
            shape = self.case_shapes[case]
            start = self._random_start(shape, generator)
            locations = self.locations.get(case, {})
            if float(torch.rand(1, generator=generator)) < self.p_foreground:
                present = [c for c, v in sorted(locations.items()) if len(v) and int(c) >= 0]
                if present:
                    cls = present[int(torch.randint(len(present), (1,), generator=generator))]
                    start = self._centred(locations[cls], shape, generator)
            elif len(locations.get(ANNOTATED, ())):  # ignore label: centred on an annotated voxel
                start = self._centred(locations[ANNOTATED], shape, generator)
            out.append(PatchRequest(case, start))
        return out

    def _centred(self, locs: np.ndarray, shape: tuple[int, ...], generator: torch.Generator) -> tuple[int, ...]:
        """The start of a patch centred on a random voxel of ``locs``, kept inside the volume."""
        centre = locs[int(torch.randint(len(locs), (1,), generator=generator))]
        start = tuple(int(c) - p // 2 for c, p in zip(centre, self.patch_size))
        return tuple(self.clamp(st, s, p) for st, s, p in zip(start, shape, self.patch_size))

    @staticmethod
    def clamp(start: int, size: int, patch: int) -> int:
        """Keep the patch inside the volume where the volume is larger than the patch."""
        if size >= patch:
            return min(max(start, 0), size - patch)
        return min(max(start, size - patch), 0)

    def update(self, step: StepOutput) -> None:  # stateless with respect to training feedback
        return None

    def epoch_end(self, epoch: int) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


@SAMPLERS.register("foreground")
def _foreground(case_shapes, patch_size, locations=None, p_foreground: float = 0.33, **_: Any) -> ForegroundSampler:
    return ForegroundSampler(case_shapes, patch_size, locations or {}, p_foreground)


@SAMPLERS.register("uniform")
def _uniform(case_shapes, patch_size, locations=None, **_: Any) -> ForegroundSampler:
    return ForegroundSampler(case_shapes, patch_size, locations or {}, 0.0)


