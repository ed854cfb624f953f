"""Every decision that depends on which process is running: the device, who writes run files,
which slice of the global batch is this process's, and agreeing to stop.

:class:`SingleProcess` is the runtime of a plain ``genflow train``. A ``torch.distributed``
runtime answers the same questions for several processes (rank 0 writes; each rank takes
its slice; flags are all-reduced), and the training loop does not change.
"""

from __future__ import annotations

from typing import Protocol

import torch

from genflow.errors import GenflowError
from genflow.train.state import Batch


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA, then MPS, then the CPU; an unavailable device is an error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise GenflowError(f"device {name!r} is not available here; use --device cpu or auto")
    return torch.device(name)


class Runtime(Protocol):
    """What the training loop asks about the processes it runs in."""

    device: torch.device
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Whether this process writes run files, checkpoints, sample grids and metrics."""
        ...

    def shard(self, batch: Batch) -> Batch:
        """This process's slice of a global batch."""
        ...

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds in every process (all processes get the same answer)."""
        ...

    def any_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds in at least one process."""
        ...

    def barrier(self) -> None:
        """Wait until every process gets here."""
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

    def all_true(self, flag: bool) -> bool:
        return flag

    def any_true(self, flag: bool) -> bool:
        return flag

    def barrier(self) -> None:
        pass
