"""Multi-process training under ``torchrun``: process group setup, rank helpers, reductions.

Everything here also works in a single plain process (no ``torchrun``): ranks are 0, the world
size is 1 and reductions return their input, so the engine calls these helpers unconditionally.

Example (a script started with ``torchrun --nproc_per_node 2 script.py``)::

    device = init_distributed(device="cuda")     # cuda:<LOCAL_RANK>, or cpu with gloo
    ...
    with main_process() as main:                 # rank 0 writes, the others wait for it
        if main:
            path.write_text("done")
"""

from __future__ import annotations

import functools
import logging
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK`` from torchrun, 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on rank 0 (and in a plain single process): the process that writes files and logs."""
    return rank() == 0


def init_distributed(*, device: str | torch.device = "cpu", backend: str | None = None) -> torch.device:
    """Join the process group described by torchrun's environment; return this process's device.

    Without ``WORLD_SIZE`` > 1 in the environment nothing is initialised and ``device`` is
    returned as is. With CUDA each process takes ``cuda:<LOCAL_RANK>`` and the NCCL backend;
    on CPU the gloo backend. Calling it twice is harmless.
    """
    device = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend)
        log.info("process group: rank %d of %d, backend %s, device %s", rank(), world_size(), backend, device)
    return device


def destroy() -> None:
    """Leave the process group (end of a torchrun script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over processes (a new tensor; the input is left as is)."""
    out = tensor.clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over processes (equal weight per process)."""
    return all_reduce_sum(tensor) / world_size()


def reduce_weighted(values: dict[str, float], weight: float, *, device=None) -> dict[str, float]:
    """Weighted mean of scalars over processes, e.g. per-rank mean losses weighted by clips seen.

    ``values`` must have the same keys on every process. Returns ``{key: sum(w*v)/sum(w)}``.
    """
    keys = sorted(values)
    t = torch.tensor([weight] + [values[k] * weight for k in keys], dtype=torch.float64, device=device)
    t = all_reduce_sum(t)
    total = float(t[0])
    return {k: (float(v) / total if total else float("nan")) for k, v in zip(keys, t[1:].tolist(), strict=True)}


def all_gather_object(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (``[obj]`` without a group)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, *, src: int = 0):
    """Rank ``src``'s ``obj`` on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@contextmanager
def main_process():
    """Yield True on rank 0 only; every process waits at the end until rank 0 has finished.

    Use it around file writing so that no rank reads a file before rank 0 has written it.
    """
    try:
        yield is_main()
    finally:
        barrier()


def rank_zero_only(fn):
    """Decorator: run ``fn`` on rank 0 only (other ranks get None). No barrier: use for logging."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) if is_main() else None

    return wrapper


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside a ``DistributedDataParallel`` wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
