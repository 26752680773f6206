"""Running under PyTorch's own launcher: ``torchrun`` sets the environment.

``torchrun --nproc_per_node=N -m napari_irnet.cli <command> ...`` starts N
processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
address in their environment. :func:`init_from_env` joins them into one
process group (NCCL on GPUs, gloo on CPUs); training then wraps the networks
in DistributedDataParallel and splits every batch with a
DistributedSampler (see :mod:`napari_irnet.training.loop`), and batch
prediction gives each process every N-th image (:func:`shard`). Outside
``torchrun`` everything here is a no-op and the world is one process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = ["barrier", "distributed_context", "init_from_env", "is_main", "shard", "shutdown"]

T = TypeVar("T")


def distributed_context() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless a process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True in the process that writes files and prints (rank 0)."""
    return distributed_context()[0] == 0


def init_from_env(device: str = "auto") -> str:
    """Join the process group described by ``torchrun``'s environment, if any.

    Parameters
    ----------
    device : "auto", "cpu", "cuda", ...
        The device asked for. Under ``torchrun`` with CUDA, each process
        takes ``cuda:LOCAL_RANK`` and the backend is NCCL; otherwise gloo.

    Returns
    -------
    str
        The device this process should use.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available() or dist.is_initialized():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available() and device.startswith(("auto", "cuda"))
    if use_cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return device if use_cuda else ("cpu" if device == "auto" else device)


def shard(items: Sequence[T]) -> list[T]:
    """This process's share of ``items``: every world-size-th one, from its rank."""
    rank, world = distributed_context()
    return list(items[rank::world])


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if distributed_context()[1] > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
