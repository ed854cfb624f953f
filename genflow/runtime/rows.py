"""A batch as every part of training sees it: named tensors with one row per example, and the
one way to take rows of it (a process's slice of the global batch, a micro-batch)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

Batch = dict[str, "Tensor"]
"""A training batch: ``images`` (B, C, H, W) in [-1, 1]; also ``labels`` (B,) or paired ``noise``."""


def batch_rows(batch: Mapping[str, Tensor], start: int, stop: int) -> Batch:
    """Rows ``start:stop`` of every entry of ``batch`` (a process's slice, a micro-batch)."""
    return {key: values[start:stop] for key, values in batch.items()}
