"""Shared helpers for the metrics tests: analytic shapes and the real-data path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "../shared/data"


def ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float, spacing=(1.0, 1.0, 1.0)):
    """Bool mask of voxels whose centre lies within ``radius`` mm of ``centre`` (voxel units)."""
    grid = np.indices(shape).astype(np.float64)
    d2 = sum(((grid[a] - centre[a]) * spacing[a]) ** 2 for a in range(3))
    return d2 <= radius**2


def random_blobs(rng: np.random.Generator, shape=(24, 22, 20), n=4) -> np.ndarray:
    """A few overlapping random balls: irregular surfaces that exercise every neighbourhood code."""
    m = np.zeros(shape, bool)
    for _ in range(n):
        c = tuple(rng.uniform(4, s - 4) for s in shape)
        m |= ball(shape, c, rng.uniform(2.0, 6.0))
    return m
