"""Crop requested patches from the preprocessed store (zero padding outside the volume), and prefetch
batches on a thread pool while the model trains: the sampler decides in the main process, threads only read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from focusseg.engine.types import PatchRequest
from focusseg.preprocessing.store import PreprocessedStore


def crop_padded(array: np.ndarray, start: tuple[int, ...], size: tuple[int, ...], fill: float = 0) -> np.ndarray:
    """``array[..., start:start+size]`` over the trailing axes, filled with ``fill`` outside the array."""
    lead = array.ndim - len(size)
    out = np.full(array.shape[:lead] + tuple(size), fill, dtype=array.dtype)
    src, dst = [], []
    for st, sz, n in zip(start, size, array.shape[lead:]):
        lo, hi = max(st, 0), min(st + sz, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - st, hi - st))
    out[(slice(None),) * lead + tuple(dst)] = array[(slice(None),) * lead + tuple(src)]
    return out


class PatchLoader:
    """Turns a list of :class:`PatchRequest` into ``(images, labels)`` tensors ``(B, C, *P)``, ``(B, 1, *P)``."""

    def __init__(self, store: PreprocessedStore, patch_size: tuple[int, ...], in_memory: bool = False) -> None:
        self.store = store
        self.patch_size = tuple(patch_size)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.in_memory = in_memory

    def _arrays(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        if case not in self._cache:
            pair = (self.store.image(case, mmap=not self.in_memory), self.store.label(case, mmap=not self.in_memory))
            self._cache[case] = pair
        return self._cache[case]

    def load(self, requests: list[PatchRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        imgs, labs = [], []
        for r in requests:
            img, lab = self._arrays(r.case)
            imgs.append(crop_padded(img, r.start, self.patch_size))
            labs.append(crop_padded(lab, r.start, self.patch_size)[None])
        return torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.stack(labs).astype(np.int64))

    def prefetch(self, batches: Iterable[list[PatchRequest]], depth: int = 2, threads: int = 2
                 ) -> Iterator[tuple[list[PatchRequest], torch.Tensor, torch.Tensor]]:
        """Yield ``(requests, images, labels)`` in order, loading up to ``depth`` batches ahead.
        ``batches`` is consumed lazily in the caller's thread, so the sampler's RNG stays in the main thread."""
        it = iter(batches)
        queue: deque = deque()
        with ThreadPoolExecutor(threads) as pool:
            for reqs in it:
                queue.append((reqs, pool.submit(self.load, reqs)))
                if len(queue) > depth:
                    r, fut = queue.popleft()
                    yield (r, *fut.result())
            while queue:
                r, fut = queue.popleft()
                yield (r, *fut.result())
