"""Multi-process training with ``torch.distributed``, set up from the variables ``torchrun`` exports.

``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` select the process; without them training runs as
one process. The backend is NCCL on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "Processes",
    "all_gather_objects",
    "broadcast_object",
    "mean_over_processes",
    "start_processes",
    "stop_processes",
]


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start_processes(device_type: str) -> Processes:
    """Join the process group described by ``torchrun``'s variables (a no-op for one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes()
    procs = Processes(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(procs.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return procs


def mean_over_processes(values: torch.Tensor, procs: Processes) -> torch.Tensor:
    """Elementwise mean of ``values`` over all processes (``values`` itself for one process)."""
    if not procs.distributed:
        return values
    total = values.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)  # gloo has no AVG
    return total / procs.world_size


def broadcast_object(value: Any, procs: Processes) -> Any:
    """Rank 0's ``value`` on every process."""
    if not procs.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(value: Any, procs: Processes) -> list[Any]:
    """Every process's ``value``, indexed by rank."""
    if not procs.distributed:
        return [value]
    gathered: list[Any] = [None] * procs.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def stop_processes(procs: Processes) -> None:
    """Leave the process group joined by :func:`start_processes`."""
    if procs.distributed and dist.is_initialized():
        dist.destroy_process_group()
