"""Training on several processes (``torchrun``, DistributedDataParallel): everything distributed behind one object.

:class:`World` is the one place that knows about ranks. On one process it is a no-op (rank 0 of 1, every gather
returns its input), so the loop calls it unconditionally. Under ``torchrun`` :meth:`World.from_env` joins the
process group: NCCL on CUDA (one GPU per rank, from ``LOCAL_RANK``), Gloo on the CPU.

``batch_size`` is the global batch, split over the ranks; each rank's loss is scaled by ``W * b_r / B``
(:meth:`World.loss_scale`), so the ranks step as one process with ``B`` samples. The one approximation: batch
Dice is computed per rank (as nnU-Net v2's DDP). Step feedback, cycle selection and validation counts are
gathered, so every strategy sees the global batch; rank 0 writes. How each part stays exact:
``docs/distributed.md``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from focusseg.errors import UsageError, one_line

#: Collective timeout while training (seconds): a rank that stops answering ends the others within this. A dead
#: rank's sockets close at once, so Gloo and torchrun's agent usually end the others within seconds.
TRAINING_TIMEOUT_S = 300.0
#: Timeout of the first rendezvous and of the wait while rank 0 plans and preprocesses (seconds).
PLANNING_TIMEOUT_S = 4 * 3600.0
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def env_int(name: str, default: int, env: Mapping[str, str] | None = None) -> int:
    """The launcher's integer variable ``name`` (``default`` when absent or not an integer)."""
    env = os.environ if env is None else env
    try:
        return int(env.get(name, str(default)))
    except ValueError:
        return default


def restarted_by_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """Whether torchrun's elastic agent restarted this worker group (``--max-restarts``) after a failure."""
    return env_int("TORCHELASTIC_RESTART_COUNT", 0, env) > 0


@dataclass
class World:
    """Rank, world size and the collectives training needs; ``World()`` is one process (every call a no-op)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    group: Any = None  # the training group (short timeout); None: the default group
    _owns_group: bool = False

    # ---------------------------------------------------------------- set-up
    @staticmethod
    def env_says_distributed(env: dict[str, str] | None = None) -> bool:
        """Whether a launcher (torchrun) started this process as one of several."""
        return env_int("WORLD_SIZE", 1, env) > 1

    @classmethod
    def from_env(cls, device: torch.device, env: dict[str, str] | None = None,
                 timeout_s: float = TRAINING_TIMEOUT_S) -> World:
        """Join the process group the launcher describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
        ``MASTER_ADDR``/``MASTER_PORT``) or return a one-process world. ``device`` is the requested device type:
        CUDA takes GPU ``LOCAL_RANK`` and NCCL; the CPU takes Gloo. An inconsistent world (a rank without a GPU, a
        rank outside the world) is a :class:`~focusseg.errors.UsageError`."""
        import torch.distributed as dist

        env = dict(os.environ if env is None else env)
        if not cls.env_says_distributed(env):
            return cls()
        try:
            rank, size = int(env["RANK"]), int(env["WORLD_SIZE"])
            local = int(env.get("LOCAL_RANK", env["RANK"]))
        except (KeyError, ValueError) as exc:
            raise UsageError(f"a distributed launch needs integer {', '.join(ENV_KEYS)} in the environment "
                             f"({exc})", hint="start with torchrun --nproc_per_node=N -m focusseg train ...") from None
        if not 0 <= rank < size:
            raise UsageError(f"RANK {rank} is outside WORLD_SIZE {size}")
        if device.type == "cuda":
            n = torch.cuda.device_count()
            if local >= n:
                raise UsageError(f"rank {rank} (LOCAL_RANK {local}) has no GPU: this machine shows {n} CUDA "
                                 "device(s)", hint=f"start at most {n} processes per node (--nproc_per_node={n})")
            torch.cuda.set_device(local)
            backend = "nccl"
        elif device.type == "cpu":
            backend = "gloo"
        else:
            raise UsageError(f"distributed training runs on cuda or cpu, not {device.type}")
        if not dist.is_initialized():
            kwargs: dict[str, Any] = {"backend": backend, "timeout": _dt.timedelta(seconds=PLANNING_TIMEOUT_S),
                                      "rank": rank, "world_size": size}
            store = _agent_store(env)
            if store is not None:
                kwargs["store"] = store
            if backend == "nccl":
                kwargs["device_id"] = torch.device("cuda", local)
            dist.init_process_group(**kwargs)
        group = dist.new_group(backend=backend, timeout=_dt.timedelta(seconds=float(timeout_s)))
        return cls(rank, size, local, backend, group, _owns_group=True)

    def device(self, requested: torch.device) -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` on CUDA, else ``requested``."""
        if requested.type == "cuda" and self.active:
            return torch.device("cuda", self.local_rank)
        return requested

    def close(self) -> None:
        """Leave the process group (if this world joined one)."""
        if self._owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                with contextlib.suppress(Exception):
                    dist.destroy_process_group()
            self._owns_group = False

    # ---------------------------------------------------------------- facts
    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.size, "backend": self.backend}

    # ---------------------------------------------------------------- collectives (no-ops on one process)
    def barrier(self, planning: bool = False) -> None:
        """Wait for every rank (``planning``: on the long-timeout default group, for rank 0's planning)."""
        if self.active:
            import torch.distributed as dist

            dist.barrier(group=None if planning else self.group)

    def broadcast_object(self, obj: Any = None, planning: bool = False) -> Any:
        """Rank 0's ``obj`` on every rank (plain data only: dicts, lists, numbers, strings)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=None if planning else self.group)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` (same shape on every rank) concatenated along dim 0, in rank order."""
        if not self.active:
            return tensor
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return torch.cat(parts, 0)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of ``tensor`` (in place; returned)."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    # ---------------------------------------------------------------- work splitting
    def shard(self, items: Sequence[Any]) -> list[Any]:
        """This rank's share of ``items``: every ``size``-th from ``rank`` (balanced; disjoint; covers all)."""
        return list(items)[self.rank::self.size]

    def batch_sizes(self, global_batch: int) -> list[int]:
        """Each rank's share of a global batch, as even as possible (the first ``B mod W`` ranks take one more,
        as nnU-Net v2 splits its batch over GPUs); a :class:`UsageError` when there are more ranks than samples."""
        if global_batch < self.size:
            raise UsageError(f"batch_size {global_batch} (the global batch) is smaller than the {self.size} "
                             "processes: every process needs a sample",
                             hint=f"--set batch_size={self.size} or fewer processes")
        q, r = divmod(int(global_batch), self.size)
        return [q + (1 if i < r else 0) for i in range(self.size)]

    def local_batch_size(self, global_batch: int) -> int:
        """This rank's share of ``global_batch`` (:meth:`batch_sizes`)."""
        return self.batch_sizes(global_batch)[self.rank]

    def local_slice(self, requests: Sequence[Any]) -> list[Any]:
        """This rank's contiguous slice of a global batch of requests."""
        sizes = self.batch_sizes(len(requests))
        start = sum(sizes[:self.rank])
        return list(requests)[start:start + sizes[self.rank]]

    def loss_scale(self, global_batch: int) -> float:
        """The factor on this rank's mean loss that makes DDP's gradient average the gradient of the global
        mean: ``W * b_r / B`` (1 when the batch divides evenly; DDP divides the summed gradients by ``W``)."""
        return self.size * self.local_batch_size(global_batch) / float(global_batch) if self.active else 1.0

    def gather_ragged(self, values: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """Every rank's 1-D ``values`` (rank ``r`` holds ``sizes[r]``) concatenated in rank order: padded to the
        largest size for the all-gather, the padding dropped."""
        if not self.active:
            return values
        width = max(sizes)
        v = values.detach().float().flatten()
        padded = torch.cat([v, v.new_full((width - v.numel(),), math.nan)])
        if self.backend == "gloo":
            padded = padded.cpu()
        rows = self.all_gather(padded.unsqueeze(0))
        return torch.cat([rows[r, :n] for r, n in enumerate(sizes)]).to(values.device)

    # ---------------------------------------------------------------- training
    def wrap(self, module: torch.nn.Module, find_unused_parameters: bool = False) -> torch.nn.Module:
        """``module`` in DistributedDataParallel (gradients averaged over ranks; rank 0's weights broadcast now);
        the module itself on one process. The wrapped module's parameters are the module's own, so its state dict
        keeps its keys."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device = next(module.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, process_group=self.group,
                                       find_unused_parameters=find_unused_parameters)

    def sync_module(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every rank's ``module`` (after a callback changed them)."""
        if not self.active:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0, group=self.group)

    def merge_step(self, step: Any, global_requests: list[Any], stop: bool = False) -> tuple[Any, bool]:
        """The step as the whole world took it, and rank 0's ``stop``: one all-gather of ``[per-sample losses,
        loss, stop]`` per step. The returned step holds the global requests, the global per-sample losses (request
        order) and the mean of the ranks' losses; on one process ``(step, stop)``."""
        if not self.active:
            return step, stop
        sizes = self.batch_sizes(len(global_requests))
        width = max(sizes)
        per = step.per_sample_loss.detach().float().flatten()
        packed = torch.cat([per, per.new_full((width - per.numel(),), math.nan),
                            per.new_tensor([float(step.loss), 1.0 if stop else 0.0])])
        if self.backend == "gloo":
            packed = packed.cpu()
        rows = self.all_gather(packed.unsqueeze(0))  # (W, width + 2)
        step.requests = list(global_requests)
        step.per_sample_loss = torch.cat([rows[r, :n] for r, n in enumerate(sizes)])
        step.loss = float(sum(float(rows[r, width]) * n for r, n in enumerate(sizes)) / sum(sizes))
        return step, bool(rows[0, width + 1] > 0)


def has_unused_parameters(module: torch.nn.Module, input_shape: Sequence[int]) -> bool:
    """Whether some trainable parameter of ``module`` gets no gradient from a training-mode forward pass (e.g. an
    STU-Net's deep-supervision heads when deep supervision is off): DDP must then look for unused parameters
    every step (``find_unused_parameters``), else it waits for their gradients forever. One probe forward and
    backward of a zero input of ``input_shape``; gradients and buffers (normalisation statistics) are restored."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return False
    device = params[0].device
    buffers = {k: v.detach().clone() for k, v in module.named_buffers()}
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    was = module.training
    module.train()
    try:
        out = module(torch.zeros(tuple(input_shape), device=device))
        outs = out if isinstance(out, (list, tuple)) else [out]
        torch.stack([o.float().sum() for o in outs]).sum().backward()
        unused = any(p.grad is None for p in params)
    finally:
        module.train(was)
        for p, g in zip(params, grads):
            p.grad = g
        with torch.no_grad():
            for k, v in module.named_buffers():
                v.copy_(buffers[k])
    return unused


class GlobalSelection:
    """Cycle training's committee selection over the global batch (see the module docstring): gathers a
    per-sample loss vector, selects on the global vector and hands back this rank's mask and the global count."""

    def __init__(self, world: World, global_batch: int) -> None:
        self.world = world
        self.sizes = world.batch_sizes(global_batch)

    def gather(self, losses: torch.Tensor) -> torch.Tensor:
        return self.world.gather_ragged(losses, self.sizes)

    def local(self, mask: torch.Tensor, b: int) -> torch.Tensor:
        start = sum(self.sizes[:self.world.rank])
        return mask[start:start + b]


@contextlib.contextmanager
def world_for(device: torch.device, timeout_s: float = TRAINING_TIMEOUT_S) -> Iterator[World]:
    """The world this process belongs to, for the duration of a training (left afterwards)."""
    world = World.from_env(device, timeout_s=timeout_s)
    try:
        yield world
    finally:
        world.close()


def _agent_store(env: dict[str, str]) -> Any:
    """Under torchrun (``TORCHELASTIC_USE_AGENT_STORE``): the launcher's store, prefixed by the run id and the
    restart round. torchrun restarts workers after a failure (``--max-restarts``); with the default ``env://``
    rendezvous the restarted Gloo group was seen here to connect to the dead round's addresses (connection refused,
    or a hang, in about 1 restart of 3); a fresh prefix per round gives every round its own keys (3 of 3 restarts
    connected). None outside torchrun (``env://`` as usual)."""
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        return None
    import torch.distributed as dist

    base = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), int(env["WORLD_SIZE"]), False,
                         _dt.timedelta(seconds=PLANNING_TIMEOUT_S))
    prefix = f"focusseg/{env.get('TORCHELASTIC_RUN_ID', 'run')}/round{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return dist.PrefixStore(prefix, base)


def seed_for_rank(seed: int, rank: int) -> int:
    """The augmentation/global-RNG seed of ``rank`` (rank 0 keeps the one-process seed, so a one-process run is
    unchanged)."""
    return int(seed) + 1_000_003 * int(rank)


def launch_self(argv: list[str], n: int, extra: list[str] | None = None) -> int:
    """Run ``python -m focusseg ARGV`` on ``n`` processes through PyTorch's launcher (``torch.distributed.run``,
    i.e. ``torchrun --standalone --nproc_per_node=n``); returns its exit code."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(n)}",
           *(extra or []), "-m", "focusseg", *argv]
    return subprocess.call(cmd)


#: What a collective raises when a peer process died or stopped answering (Gloo / NCCL / the c10d store).
_PEER_MESSAGES = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out",
                  "timeout", "socket", "nccl communicator was aborted", "connection refused")


def peer_failure(exc: BaseException) -> str | None:
    """One line for an error raised because another rank died or stopped answering (None for other errors)."""
    name = type(exc).__name__
    text = one_line(exc)
    dist_error = name in ("DistBackendError", "DistNetworkError", "DistStoreError", "DistError")
    if not dist_error and not (isinstance(exc, RuntimeError) and any(m in text.lower() for m in _PEER_MESSAGES)
                               and ("gloo" in text.lower() or "nccl" in text.lower() or "c10d" in text.lower()
                                    or "store" in text.lower())):
        return None
    rank = os.environ.get("RANK", "?")
    return (f"rank {rank}: another training process stopped or cannot be reached, so this one stops too "
            f"({name}: {text[:160]})")


def launched_by_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """Whether torchrun's elastic agent started this process: it gives every worker ``TORCHELASTIC_RUN_ID`` and
    ``LOCAL_WORLD_SIZE`` besides ``RANK``/``WORLD_SIZE``; a shell that merely exports ``RANK``/``WORLD_SIZE``
    (left over from another job) gives neither."""
    env = os.environ if env is None else env
    return "TORCHELASTIC_RUN_ID" in env and "LOCAL_WORLD_SIZE" in env


def prediction_share(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """The share of the cases this process predicts, from the environment: ``(RANK, WORLD_SIZE)`` when torchrun
    started it as one of several (:func:`launched_by_torchrun`), else None (every case). ``RANK``/``WORLD_SIZE``
    set without torchrun are ignored, with one ``warning:`` line on stderr: a stray variable never makes a
    command predict part of the cases and exit 0.

    Args:
        env: the environment (default ``os.environ``).

    Returns:
        ``(part id, number of parts)``, or None for every case.
    """
    env = os.environ if env is None else env
    if not World.env_says_distributed(env):
        return None
    if not launched_by_torchrun(env):
        print(f"warning: WORLD_SIZE={env.get('WORLD_SIZE')} RANK={env.get('RANK', '(unset)')} set but not "
              "launched by torchrun: ignored; predicting all cases (use --num-parts/--part-id to split)",
              file=sys.stderr)
        return None
    return part_from_env(env)


def part_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` as the environment gives them when ``WORLD_SIZE`` > 1, else None. Whether a
    launcher set them is :func:`prediction_share`'s question: ``predict`` and ``evaluate`` under ``torchrun``
    take their share of the cases without a process group."""
    env = os.environ if env is None else env
    if not World.env_says_distributed(env):
        return None
    try:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
