"""Surface elements ("surfels") on voxel corners, the definition of deepmind's surface-distance.

Every voxel corner sees the 2x2x2 block of voxels around it; its *neighbourhood code* packs the eight in/out
bits (offset ``(a, b, c)`` weighs ``2 ** (7 - (4a + 2b + c))``, deepmind's kernel). A corner with a code other
than 0 and 255 lies on the border; its surfel is the marching-cubes surface inside that cell, and its area weights
the corner in NSD, HD95 and ASSD. The 256-entry table is derived here from two rules (minority corners separated
on ambiguous faces; the largest-area triangulation) that reproduce deepmind's table exactly (tested at random
spacings). For spacing ``s`` a triangle with unit-cube area vector ``n`` has the area
``|| (n0 s1 s2, n1 s0 s2, n2 s0 s1) ||``.

Reference: Nikolov et al. 2021 (arXiv:1809.04430, "Surface DSC"). The rules in full: ``docs/metrics.md``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from functools import lru_cache

import numpy as np

CORNERS: tuple[tuple[int, int, int], ...] = tuple(itertools.product((0, 1), repeat=3))
"""Corner offsets in bit order: ``CORNERS[i]`` carries weight ``1 << (7 - i)``."""

_Edge = tuple[tuple[int, int, int], tuple[int, int, int]]


def _face_segments(inside: dict, separate_inside: bool) -> list[tuple[_Edge, _Edge]]:
    """Contour segments (pairs of cut cube edges) on each of the six faces."""
    segments = []
    for axis, value in itertools.product(range(3), (0, 1)):
        u, v = (a for a in range(3) if a != axis)

        def corner(i: int, j: int, u: int = u, v: int = v, axis: int = axis, value: int = value) -> tuple:
            p = [0, 0, 0]
            p[axis], p[u], p[v] = value, i, j
            return tuple(p)

        ring = [corner(0, 0), corner(1, 0), corner(1, 1), corner(0, 1)]
        ring_edges = [tuple(sorted((ring[k], ring[(k + 1) % 4]))) for k in range(4)]
        cut = [e for e in ring_edges if inside[e[0]] != inside[e[1]]]
        if len(cut) == 2:
            segments.append((cut[0], cut[1]))
        elif len(cut) == 4:  # ambiguous face: cut off each minority corner on its own
            for k in range(4):
                if inside[ring[k]] == separate_inside:
                    segments.append((ring_edges[k - 1], ring_edges[k]))
    return segments


def _polygons(code: int) -> list[np.ndarray]:
    """Closed marching-cubes polygons (vertices = edge midpoints) of one neighbourhood code."""
    inside = {c: bool(code & (1 << (7 - i))) for i, c in enumerate(CORNERS)}
    segments = _face_segments(inside, separate_inside=bin(code).count("1") <= 4)
    polygons = []
    while segments:
        first, current = segments.pop(0)
        loop = [first, current]
        while True:
            k = next(k for k, s in enumerate(segments) if current in s)
            a, b = segments.pop(k)
            current = b if a == current else a
            if current == first:
                break
            loop.append(current)
        polygons.append(np.array([np.add(e[0], e[1]) / 2.0 for e in loop]))
    return polygons


def _triangulations(idx: Sequence[int]) -> Iterator[list[tuple[int, int, int]]]:
    """All triangulations of the convex-position polygon ``idx`` (Catalan-many; n <= 7 here)."""
    if len(idx) < 3:
        yield []
        return
    i, j = idx[0], idx[-1]
    for m in range(1, len(idx) - 1):
        for left in _triangulations(idx[: m + 1]):
            for right in _triangulations(idx[m:]):
                yield left + right + [(i, idx[m], j)]


def _best_triangle_normals(poly: np.ndarray) -> list[np.ndarray]:
    """Area vectors of the max-area triangulation (ties: lexicographically largest sorted areas)."""
    best_key, best = None, []
    for tris in _triangulations(list(range(len(poly)))):
        normals = [0.5 * np.cross(poly[b] - poly[a], poly[c] - poly[a]) for a, b, c in tris]
        areas = sorted((round(float(np.linalg.norm(n)), 9) for n in normals), reverse=True)
        key = (round(sum(areas), 9), tuple(areas))
        if best_key is None or key > best_key:
            best_key, best = key, normals
    return best


@lru_cache(maxsize=1)
def unit_triangle_normals() -> np.ndarray:
    """``(256, T, 3)`` area vectors of each code's triangles in the unit cube (zero-padded)."""
    per_code = [[n for p in _polygons(code) for n in _best_triangle_normals(p)] for code in range(1, 255)]
    table = np.zeros((256, max(len(t) for t in per_code), 3))
    for code, normals in enumerate(per_code, start=1):
        if normals:
            table[code, : len(normals)] = normals
    table.setflags(write=False)
    return table


@lru_cache(maxsize=64)
def _area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    s0, s1, s2 = spacing
    scale = np.array([s1 * s2, s0 * s2, s0 * s1])
    table = np.linalg.norm(unit_triangle_normals() * scale, axis=-1).sum(axis=-1)
    table.setflags(write=False)
    return table


def surfel_area_table(spacing: Sequence[float]) -> np.ndarray:
    """``(256,)`` surfel area in mm^2 for each neighbourhood code at voxel ``spacing`` (mm, 3 floats)."""
    if len(spacing) != 3:
        raise ValueError(f"spacing must have 3 entries, got {spacing!r}")
    return _area_table(tuple(float(s) for s in spacing))


def neighbourhood_codes(mask: np.ndarray) -> np.ndarray:
    """uint8 code of every voxel corner of a 3D bool ``mask``: shape ``mask.shape + 1`` per axis.

    Corner ``q`` looks at voxels ``q - 1`` and ``q`` along each axis (voxels outside count as 0), so the
    codes cover every corner of the volume; deepmind's crop-and-correlate gives the same codes.
    """
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D, got shape {mask.shape}")
    padded = np.pad(mask.astype(np.uint8, copy=False), 1)
    n0, n1, n2 = (s + 1 for s in mask.shape)
    codes = np.zeros((n0, n1, n2), np.uint8)
    for i, (a, b, c) in enumerate(CORNERS):
        codes |= padded[a : a + n0, b : b + n1, c : c + n2] << np.uint8(7 - i)
    return codes
