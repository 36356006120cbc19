"""Data-parallel helpers shared by the experiment runner and the benchmark: torchrun's process group,
rank-0 checks every rank sees, and the local device of a rank."""
from __future__ import annotations

import os
from typing import Callable

import torch.distributed as dist

from .errors import WorkbenchError


def process_group() -> tuple[int, int, bool]:
    """(rank, world, created): join torchrun's group when WORLD_SIZE > 1 (gloo)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
        return dist.get_rank(), world, True
    return 0, 1, False


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def on_rank0(rank: int, world: int, fn: Callable[[], None]) -> None:
    """Run a check on rank 0 and raise its WorkbenchError on every rank (so no rank waits forever)."""
    error: list[WorkbenchError | None] = [None]
    if rank == 0:
        try:
            fn()
        except WorkbenchError as exc:
            error = [exc]
    if world > 1:
        dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise error[0]


def local_device(device: str) -> str:
    """``cuda`` means this process's GPU under torchrun (``cuda:LOCAL_RANK``)."""
    if str(device).startswith("cuda") and "LOCAL_RANK" in os.environ and ":" not in str(device):
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device
