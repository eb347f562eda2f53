"""Several processes, one model: the few collective operations the trainer needs.

Launch with ``torchrun --nproc_per_node N script.py``; the script calls :func:`setup`
before building the :class:`~seqlab.train.Trainer`, and :func:`cleanup` at the end.
The trainer then wraps the model in DistributedDataParallel, gives each process its
rows of every global batch (:func:`shard_batch`) and makes only rank 0 evaluate and
write checkpoints. With one process (no torchrun, or ``WORLD_SIZE=1``) every function
here is a no-op and the same script runs unchanged.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import torch
import torch.distributed as dist


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected an integer, got {value!r}") from None


def setup(backend: Optional[str] = None) -> tuple[int, int]:
    """Join the process group that torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK.

    ``backend`` defaults to ``"nccl"`` when CUDA is available (and then selects GPU
    ``LOCAL_RANK`` for this process) and ``"gloo"`` otherwise; pass ``"gloo"`` to train on
    the CPU of a machine that has GPUs. Returns ``(rank, world_size)``; ``(0, 1)`` without
    torchrun. Calling it again once initialised returns the same pair.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"expected 0 <= RANK < WORLD_SIZE, got RANK={rank} and WORLD_SIZE={world}")
    if world == 1:
        return 0, 1
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend: expected 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        # Before init: NCCL binds each process to the device that is current when it starts.
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return rank, world


def cleanup() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def is_main() -> bool:
    """True on rank 0, and in a single process: the one that logs, evaluates and checkpoints."""
    return get_rank() == 0


def collective_device() -> torch.device:
    """Where tensors must live for this process group's collectives (NCCL needs the GPU)."""
    if initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over all processes (``t`` itself with one process)."""
    if get_world_size() == 1:
        return t
    out = t.detach().to(collective_device()).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process (picklable objects; only used between our own processes)."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=collective_device())
    return box[0]


def all_gather_object(obj: Any) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process."""
    if get_world_size() == 1:
        return [obj]
    out: list = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def shard_batch(batch: Any, rank: int, world: int) -> Any:
    """Rank ``rank``'s contiguous share of the rows of ``batch`` (the default ``shard`` of the trainer).

    Row ranges are ``[n * rank // world, n * (rank + 1) // world)``, so the shares differ by
    at most one row and together are the whole batch in order. What counts as rows:

    * a tensor: its dim 0;
    * a tuple or dict: each member is sharded by these rules (``(x, y)``, ``{"src": ..., ...}``);
    * a list whose members are all tensors: like a tuple (``[x, y]``);
    * any other list: its members are the rows (BatchIterator's list of examples);
    * anything else (an int, a string, None): the same on every rank.

    All sharded members must have the same number of rows. Pass your own ``shard`` to the
    trainer for a batch that these rules do not fit (e.g. a list of variable-length tensors).

    >>> shard_batch((torch.arange(5), [10, 11, 12, 13, 14]), 1, 2)
    (tensor([2, 3, 4]), [12, 13, 14])
    """
    if world == 1:
        return batch
    rows: set[int] = set()
    out = _shard(batch, rank, world, rows)
    if len(rows) > 1:
        raise ValueError(f"expected every sharded part of a batch to have the same number of rows, got {sorted(rows)}")
    if rows and min(rows) < world:
        raise ValueError(f"expected at least {world} rows in every batch to share among {world} processes, "
                         f"got {min(rows)}")
    return out


def _shard(x: Any, rank: int, world: int, rows: set) -> Any:
    if isinstance(x, torch.Tensor):
        if x.dim() == 0:
            return x
        n = x.shape[0]
        rows.add(n)
        return x[n * rank // world: n * (rank + 1) // world]  # (n_rank, ...)
    if isinstance(x, dict):
        return {k: _shard(v, rank, world, rows) for k, v in x.items()}
    if isinstance(x, tuple):
        parts = [_shard(v, rank, world, rows) for v in x]
        return type(x)(*parts) if hasattr(x, "_fields") else tuple(parts)  # keep namedtuples
    if isinstance(x, list):
        if x and all(isinstance(v, torch.Tensor) for v in x):
            return [_shard(v, rank, world, rows) for v in x]
        n = len(x)
        rows.add(n)
        return x[n * rank // world: n * (rank + 1) // world]
    return x
