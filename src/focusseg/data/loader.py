"""Crop requested patches from the preprocessed store (zero padding outside the volume), and prefetch
batches on worker threads or processes while the model trains: the sampler decides in the main process, workers
only read.

The host side is built so that training is never data-bound (details: ``docs/data.md``): labels are checked once
per case against ``0..n_classes-1`` and the plan's ignore label (a :class:`~focusseg.errors.DatasetError` names the
case), so the losses skip their per-call checks; labels leave as uint8/int16; batches are pinned for a CUDA
device; ``training.loader = {"workers": N, "mode": "threads" | "processes"}`` sets the parallelism (default
:func:`default_workers` threads); with ``instances=`` the workers label each patch's connected components for the
blob loss and return them as a second label channel.
"""

from __future__ import annotations

import multiprocessing
import os
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from focusseg.data.samplers import patch_with_slice
from focusseg.errors import DatasetError, PlanError
from focusseg.losses.instances import CONNECTIVITY
from focusseg.preprocessing.store import PreprocessedStore
from focusseg.roles import PatchRequest
from focusseg.settings import LOADER_MODES, thaw, training_settings

MODES = LOADER_MODES
INSTANCE_ID_MAX = 32767  # ids of one patch in an int16 instance map


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


def default_workers(cpu_count: int | None = None) -> int:
    """``max(2, min(4, cpu_count - 1))`` loader workers: leave a core to the training loop, 4 are plenty for
    cropping memory-mapped patches (nnU-Net's default is 12 processes, for its CPU augmentation)."""
    n = cpu_count if cpu_count is not None else (os.cpu_count() or 2)
    return max(2, min(4, n - 1))


def label_dtype(n_classes: int) -> np.dtype:
    """The smallest host dtype for labels ``0..n_classes-1``: uint8 up to 255 classes, else int16."""
    return np.dtype(np.uint8) if n_classes <= 255 else np.dtype(np.int16)


def label_patch_instances(labels: np.ndarray, connectivity: int, binary: bool = False) -> tuple[np.ndarray, int]:
    """Connected components of one label patch ``(*P)`` as blob loss defines its instances: per label value
    (components of different labels never join), or of ``label > 0`` with ``binary`` (one sigmoid channel).
    Returns the instance map (0 = background, ids ``1..n``) and ``n``. The call the loss makes itself
    (:func:`focusseg.losses.instances.label_instances`), so both give the same ids."""
    import cc3d

    code = labels > 0 if binary else labels
    n_max = int(code.max(initial=0))
    code = np.ascontiguousarray(code, dtype=np.uint8 if n_max < 255 else np.int32)
    cc, n = cc3d.connected_components(code, connectivity=connectivity, return_N=True)
    return cc, int(n)


def parse_loader_spec(spec: Mapping[str, Any] | None, cpu_count: int | None = None) -> tuple[int, str]:
    """``training.loader`` -> ``(workers, mode)``; missing keys take the defaults. Bad values raise PlanError."""
    spec = dict(spec or {})
    unknown = sorted(set(spec) - {"workers", "mode"})
    if unknown:
        raise PlanError(f"training.loader: unknown option(s) {unknown} (known: workers, mode)")
    mode = spec.get("mode", "threads")
    if mode not in MODES:
        raise PlanError(f"training.loader.mode must be one of {MODES}, got {mode!r}")
    workers = spec.get("workers")
    if workers is None:
        workers = default_workers(cpu_count)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise PlanError(f"training.loader.workers must be a positive integer, got {workers!r}")
    return workers, mode


def _store_n_classes(store: PreprocessedStore) -> int | None:
    """``max(label values) + 1`` from the store's key (the plan's ``labels``), None when not recorded."""
    labels = ((store.read_key() or {}).get("fields") or {}).get("labels")
    try:
        return max(int(v) for v in labels.values()) + 1 if labels else None
    except (AttributeError, TypeError, ValueError):
        return None


def _store_ignore_label(store: PreprocessedStore) -> int | None:
    """The plan's ``ignore_label`` recorded in the store's key, None when there is none."""
    value = ((store.read_key() or {}).get("fields") or {}).get("ignore_label")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class PatchLoader:
    """Turns a list of :class:`PatchRequest` into ``(images, labels)`` tensors ``(B, C, *P)``, ``(B, 1, *P)``
    (``(B, 2, *P)`` with ``instances``).

    Args:
        store, patch_size, in_memory: the store, the patch, whether to read whole arrays instead of mmaps.
        n_classes: label range ``0..n_classes-1`` checked once per case; None: read from the store's key (no
            check when the store does not record its labels).
        compact_labels: labels as uint8/int16 (:func:`label_dtype`); default: when ``n_classes`` is given
            (int64, the historical form, otherwise).
        workers, mode: prefetch parallelism (:func:`parse_loader_spec`); ``workers=None``: :func:`default_workers`.
        pin_memory: pin each batch (for asynchronous copies to a CUDA device); ignored without CUDA.
        instances: ``{"connectivity": 6|18|26|4|8, "binary": bool}``: label blob-loss instances per patch.
        ignore_label: the plan's ignore label (``>= n_classes``): a value the labels may hold besides
            ``0..n_classes-1``, kept in the patches (the losses mask it) and never an instance. None: the store's
            (when ``n_classes`` is read from it too).
        slice_axis: the 2D configuration: ``patch_size`` is the in-plane patch (2 values) and every request's
            3D ``start`` names the slice (its ``slice_axis`` coordinate) and the in-plane corner; the loader
            crops the ``(1, H, W)``-like box (:func:`focusseg.data.samplers.patch_with_slice`) from the 3D volume
            and drops the unit axis, so batches are ``(B, C, H, W)`` true slices. None: 3D patches.
    """

    def __init__(self, store: PreprocessedStore, patch_size: tuple[int, ...], in_memory: bool = False,
                 n_classes: int | None = None, compact_labels: bool | None = None, workers: int | None = None,
                 mode: str = "threads", pin_memory: bool = False, instances: Mapping[str, Any] | None = None,
                 ignore_label: int | None = None, slice_axis: int | None = None) -> None:
        self.store = store
        self.patch_size = tuple(patch_size)
        self.slice_axis = None if slice_axis is None else int(slice_axis)
        self.crop_size = self.patch_size if slice_axis is None else tuple(patch_with_slice(patch_size, slice_axis))
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.in_memory = in_memory
        self.compact = n_classes is not None if compact_labels is None else bool(compact_labels)
        self.n_classes = n_classes if n_classes is not None else _store_n_classes(store)
        if ignore_label is None and n_classes is None:
            ignore_label = _store_ignore_label(store)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        if self.compact and self.n_classes is None:
            raise ValueError("compact labels need n_classes (not recorded in the store)")
        self.workers, self.mode = parse_loader_spec({"workers": workers, "mode": mode})
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self.instances = dict(instances) if instances else None
        self._pool: Executor | None = None

    # ---- reading -------------------------------------------------------------------------------------------
    def _arrays(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        if case not in self._cache:
            pair = (self.store.image(case, mmap=not self.in_memory), self.store.label(case, mmap=not self.in_memory))
            self._check_labels(case, pair[1])
            self._cache[case] = pair
        return self._cache[case]

    def _check_labels(self, case: str, label: np.ndarray) -> None:
        """Once per case: every label value in ``0..n_classes-1`` or the ignore label (else DatasetError naming
        case and file)."""
        if self.n_classes is None or label.size == 0:
            return
        lo, hi = int(label.min()), int(label.max())
        bad = lo < 0 or hi > self.n_classes - 1
        if bad and self.ignore_label is not None and lo >= 0:  # the ignore value is allowed besides the classes
            rest = label[label != self.ignore_label]
            bad = rest.size > 0 and int(rest.max()) > self.n_classes - 1
        if bad:
            also = f" or {self.ignore_label} (ignore)" if self.ignore_label is not None else ""
            raise DatasetError(
                f"case {case!r}: label values {lo}..{hi} outside 0..{self.n_classes - 1}{also} "
                f"({self.n_classes} classes)",
                Path(self.store.root) / f"{case}_seg.npy",
                hint="the preprocessed store does not match the plan's labels: delete it to rebuild it")

    def load_numpy(self, requests: list[PatchRequest]) -> tuple[np.ndarray, np.ndarray]:
        """The batch as numpy arrays (what a worker process sends back)."""
        imgs, labs = [], []
        for r in requests:
            img, lab = self._arrays(r.case)
            img_p, lab_p = crop_padded(img, r.start, self.crop_size), crop_padded(lab, r.start, self.crop_size)
            if self.slice_axis is not None:  # the 2D configuration: the slice, without its unit axis
                img_p, lab_p = img_p.squeeze(1 + self.slice_axis), lab_p.squeeze(self.slice_axis)
            imgs.append(img_p)
            labs.append(lab_p[None])
        images, labels = np.stack(imgs), np.stack(labs)
        if self.instances is not None:
            with_inst = self._with_instances(labels)
            if with_inst is not None:
                return images, with_inst
        dtype = label_dtype(self._label_range()) if self.compact else np.dtype(np.int64)
        return images, labels.astype(dtype, copy=False)

    def _label_range(self) -> int:
        """How many label values the compact dtype must hold: ``n_classes``, or up to the ignore label."""
        return self.n_classes if self.ignore_label is None else max(self.n_classes, self.ignore_label + 1)

    def _with_instances(self, labels: np.ndarray) -> np.ndarray | None:
        """``(B, 2, *P)`` int16 labels + instance ids, or None when a patch has too many instances or labels."""
        conn, binary = int(self.instances["connectivity"]), bool(self.instances.get("binary", False))
        out = np.empty((labels.shape[0], 2, *labels.shape[2:]), dtype=np.int16)
        if labels.size and int(labels.max()) > INSTANCE_ID_MAX:
            return None
        for i, lab in enumerate(labels[:, 0]):
            code = lab if self.ignore_label is None else np.where(lab == self.ignore_label, 0, lab)
            cc, n = label_patch_instances(code, conn, binary)
            if n > INSTANCE_ID_MAX:
                return None
            out[i, 0], out[i, 1] = lab, cc
        return out

    def _tensors(self, images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = torch.from_numpy(images), torch.from_numpy(labels)
        if self.pin_memory:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def load(self, requests: list[PatchRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._tensors(*self.load_numpy(requests))

    # ---- prefetching ---------------------------------------------------------------------------------------
    def _executor(self) -> Executor:
        if self._pool is None:
            if self.mode == "threads":
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="focusseg-loader")
            else:
                self._pool = ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                    initargs=(str(self.store.root), self.patch_size, self.in_memory, self.n_classes, self.compact,
                              self.instances, self.ignore_label, self.slice_axis))
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        return self._pool

    def _submit(self, pool: Executor, reqs: list[PatchRequest]):
        if self.mode == "threads":
            return pool.submit(self.load, reqs)
        return pool.submit(_load_in_worker, reqs)

    def _result(self, fut) -> tuple[torch.Tensor, torch.Tensor]:
        out = fut.result()
        return out if self.mode == "threads" else self._tensors(*out)

    def prefetch(self, batches: Iterable[list[PatchRequest]], depth: int = 2, threads: int | None = None
                 ) -> Iterator[tuple[list[PatchRequest], torch.Tensor, torch.Tensor]]:
        """Yield ``(requests, images, labels)`` in order, loading up to ``depth`` batches ahead.
        ``batches`` is consumed lazily in the caller's thread, so the sampler's RNG stays in the main thread.
        ``threads`` (deprecated) overrides the worker count for thread mode."""
        if threads is not None and self.mode == "threads" and threads != self.workers and self._pool is None:
            self.workers = int(threads)
        pool = self._executor()
        queue: deque = deque()
        try:
            for reqs in batches:
                queue.append((reqs, self._submit(pool, reqs)))
                if len(queue) > depth:
                    r, fut = queue.popleft()
                    yield (r, *self._result(fut))
            while queue:
                r, fut = queue.popleft()
                yield (r, *self._result(fut))
        finally:
            for _, fut in queue:
                fut.cancel()

    def close(self) -> None:
        """Stop the workers (a later ``prefetch`` starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# Worker processes: one loader per process, built by the pool's initializer (state of that process only).
_WORKER: PatchLoader | None = None


def _init_worker(root: str, patch_size, in_memory: bool, n_classes, compact: bool, instances,
                 ignore_label=None, slice_axis=None) -> None:
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = PatchLoader(PreprocessedStore(root), patch_size, in_memory, n_classes, compact, workers=1,
                          instances=instances, ignore_label=ignore_label, slice_axis=slice_axis)


def _load_in_worker(requests: list[PatchRequest]) -> tuple[np.ndarray, np.ndarray]:
    assert _WORKER is not None, "loader worker not initialised"
    return _WORKER.load_numpy(requests)


def blob_instance_options(plan: Mapping[str, Any]) -> dict[str, Any] | None:
    """The loader's ``instances`` option for a plan whose training loss is a blob loss (top level, optionally
    under ``training.deep_supervision``): the loss's connectivity (default 26 in 3D, 8 in 2D) and whether it
    labels ``label > 0`` as one class (sigmoid with one channel). None for any other loss (a compound with a
    blob part keeps labelling in the loss: its other parts take one-channel targets)."""
    spec = training_settings(plan).loss
    if spec is None or spec.name != "blob":
        return None
    opts = thaw(spec.kwargs)
    dims = len(plan["patch_size"])
    conn = opts.get("connectivity") or CONNECTIVITY[dims][-1]
    binary = opts.get("activation", "sigmoid") == "sigmoid" and int(plan["n_classes"]) == 1
    return {"connectivity": int(conn), "binary": binary}


def build_loader(store: PreprocessedStore, plan: Mapping[str, Any], device: torch.device | str) -> PatchLoader:
    """The training loader a plan asks for: ``training.loader`` parallelism, ``training.in_memory``, compact
    labels checked against ``n_classes`` (and the plan's ``ignore_label``), pinned batches on CUDA, blob-loss
    instances labelled in the workers, slices along ``slice_axis`` for the 2D configuration."""
    tr = training_settings(plan)
    workers, mode = parse_loader_spec(tr.loader)
    return PatchLoader(store, tuple(plan["patch_size"]), in_memory=tr.in_memory,
                       n_classes=int(plan["n_classes"]), workers=workers, mode=mode,
                       pin_memory=torch.device(device).type == "cuda", instances=blob_instance_options(plan),
                       ignore_label=plan.get("ignore_label"),
                       slice_axis=plan.get("slice_axis") if plan.get("configuration", "3d") == "2d" else None)
