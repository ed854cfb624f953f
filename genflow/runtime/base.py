"""Every decision that depends on which process is running: the device, who writes run files,
which slice of the global batch is this process's, and agreeing on what to do next.

:class:`SingleProcess` is the runtime of a plain ``genflow train``. :class:`Distributed`
(:mod:`genflow.runtime.distributed`) answers the same questions for the processes of a
``torchrun`` or ``accelerate launch`` job with ``torch.distributed``: rank 0 writes and
decides, each rank takes its slice, gradients are averaged by DDP, flags are all-reduced.
The training loop and the commands do not change; :func:`runtime_for` picks the runtime
from the launcher's environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol, TypeVar

import torch
from torch import Tensor, nn

from genflow.config import check_device_name
from genflow.errors import GenflowError
from genflow.runtime.rows import Batch

T = TypeVar("T")


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA, then MPS, then the CPU; another name than these, or an unavailable
    device, is an error (for every command: they all come here)."""
    check_device_name(name)
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise GenflowError(f"device {name!r} is not available here; use --device cpu or auto")
    return torch.device(name)


class Runtime(Protocol):
    """What training, sampling and the commands ask about the processes they run in."""

    device: torch.device
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Whether this process writes run files, checkpoints, sample grids and metrics."""
        ...

    def shard(self, batch: Batch) -> Batch:
        """This process's slice of a global batch (rows ``rank * B / N`` up to the next rank's)."""
        ...

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` as the training step calls it: its gradients averaged over the processes."""
        ...

    def without_sync(self, wrapped: nn.Module) -> AbstractContextManager:
        """A context in which backward passes through ``wrapped`` accumulate locally, unsynchronized."""
        ...

    def total(self, values: Tensor) -> Tensor:
        """``values`` summed over the processes (every process gets the sum)."""
        ...

    def largest(self, value: int) -> int:
        """The largest of the processes' ``value`` (every process gets it)."""
        ...

    def decide(self, decision: Callable[[], T]) -> T:
        """Run ``decision`` in the main process only and give its result to every process; a
        :class:`GenflowError` it raises is raised, with the same message, in every process."""
        ...

    def gather_rows(self, rows: Tensor) -> Tensor | None:
        """The processes' ``rows`` concatenated in rank order, in the main process (``None`` elsewhere)."""
        ...

    def all_rows(self, rows: Tensor) -> Tensor:
        """The processes' ``rows`` (the same count in each) concatenated in rank order, in every process."""
        ...


class SingleProcess:
    """One process on one device: it writes, its batch is the global batch, its word is final."""

    rank = 0
    world_size = 1

    def __init__(self, device: str | torch.device = "auto") -> None:
        self.device = device if isinstance(device, torch.device) else pick_device(device)

    @property
    def is_main(self) -> bool:
        return True

    def shard(self, batch: Batch) -> Batch:
        return batch

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def without_sync(self, wrapped: nn.Module) -> AbstractContextManager:
        return nullcontext()

    def total(self, values: Tensor) -> Tensor:
        return values

    def largest(self, value: int) -> int:
        return value

    def decide(self, decision: Callable[[], T]) -> T:
        return decision()

    def gather_rows(self, rows: Tensor) -> Tensor | None:
        return rows

    def all_rows(self, rows: Tensor) -> Tensor:
        return rows


LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What ``torchrun`` and ``accelerate launch`` set in each process they start."""


def launched_distributed() -> bool:
    """Whether this process was started by a distributed launcher (``WORLD_SIZE`` set)."""
    return "WORLD_SIZE" in os.environ


