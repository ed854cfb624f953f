"""The runtime of a distributed launch: ``torchrun`` or ``accelerate launch`` start one
process per device and set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; each process joins PyTorch's process group (NCCL on CUDA, gloo on CPUs),
trains through ``DistributedDataParallel`` and takes its slice of the global batch.

Rank 0 writes and decides (:meth:`Distributed.decide`): the run directory, the lock, the
checkpoint to resume from, every file. Whatever it decides, or the one-line error it meets,
reaches every rank, so no rank waits forever in a collective that another has left.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from genflow.errors import GenflowError, SharedError
from genflow.runtime.base import LAUNCHER_VARIABLES
from genflow.runtime.rows import Batch, batch_rows

T = TypeVar("T")
MAIN = 0


def launch_device(name: str, local_rank: int) -> torch.device:
    """The device of the process with ``local_rank`` on its node: ``cuda:LOCAL_RANK`` for
    ``auto`` (where CUDA is available) and ``cuda``, else the CPU."""
    cuda = torch.cuda.is_available()
    if name == "mps":
        raise GenflowError("a distributed launch runs on CUDA (NCCL) or CPUs (gloo), not mps; pass --device cuda or cpu")
    if name == "cpu" or (name == "auto" and not cuda):
        return torch.device("cpu")
    if not cuda:
        raise GenflowError("device 'cuda' is not available here; use --device cpu or auto")
    if local_rank >= torch.cuda.device_count():
        raise GenflowError(
            f"LOCAL_RANK {local_rank} has no GPU: this node has {torch.cuda.device_count()}; start at most that many "
            "processes per node (torchrun --nproc-per-node)"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


class Distributed:
    """One of ``world_size`` processes in a ``torch.distributed`` process group."""

    def __init__(self, device: torch.device, rank: int, world_size: int) -> None:
        self.device, self.rank, self.world_size = device, rank, world_size

    @classmethod
    def from_environment(cls, device_name: str) -> Distributed:
        """Join the process group the launcher's variables describe (once per process)."""
        missing = [name for name in LAUNCHER_VARIABLES if name not in os.environ]
        if missing:
            raise GenflowError(
                f"WORLD_SIZE is set but {', '.join(missing)} are not; launch with 'torchrun --nproc-per-node N -m genflow ...' "
                "or 'accelerate launch -m genflow ...', or unset WORLD_SIZE"
            )
        rank, world_size, local_rank = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        device = launch_device(device_name, local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
            atexit.register(dist.destroy_process_group)
        return cls(device, rank, world_size)

    @property
    def is_main(self) -> bool:
        return self.rank == MAIN

    def shard(self, batch: Batch) -> Batch:
        size = len(batch["images"]) // self.world_size
        return batch_rows(batch, self.rank * size, (self.rank + 1) * size)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel`` over ``model``: its gradients are averaged over the ranks
        during the backward pass (Li et al. 2020, "PyTorch Distributed")."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def without_sync(self, wrapped: nn.Module) -> AbstractContextManager:
        return wrapped.no_sync()

    def total(self, values: Tensor) -> Tensor:
        summed = values.detach().clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return summed

    def largest(self, value: int) -> int:
        flag = torch.tensor([value], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def decide(self, decision: Callable[[], T]) -> T:
        if not self.is_main:
            outcome: list[object] = [None]
            dist.broadcast_object_list(outcome, src=MAIN)
            kind, value = outcome[0]
            if kind == "error":
                raise SharedError(value)
            return value
        try:
            result = decision()
        except GenflowError as error:
            dist.broadcast_object_list([("error", str(error))], src=MAIN)
            raise
        except Exception as error:
            dist.broadcast_object_list([("error", f"rank 0 failed: {error!r:.300}")], src=MAIN)
            raise
        dist.broadcast_object_list([("ok", result)], src=MAIN)
        return result

    def gather_rows(self, rows: Tensor) -> Tensor | None:
        counts: list[int] = [0] * self.world_size
        dist.all_gather_object(counts, len(rows))
        padded = rows.new_zeros((max(counts), *rows.shape[1:]))
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in counts] if self.is_main else None
        dist.gather(padded, parts, dst=MAIN)
        return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)]) if self.is_main else None

    def all_rows(self, rows: Tensor) -> Tensor:
        parts = [torch.empty_like(rows) for _ in range(self.world_size)]
        dist.all_gather(parts, rows.contiguous())
        return torch.cat(parts)
