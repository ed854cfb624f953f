"""Which runtime this process runs under, read from the launcher's environment."""

from __future__ import annotations

from genflow.runtime.base import Runtime, SingleProcess, launched_distributed
from genflow.runtime.distributed import Distributed


def runtime_for(device: str) -> Runtime:
    """The runtime of this process: :class:`Distributed` under ``torchrun`` or ``accelerate
    launch`` (one process per device), else :class:`SingleProcess` on ``device``."""
    if not launched_distributed():
        return SingleProcess(device)
    return Distributed.from_environment(device)
