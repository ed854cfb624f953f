"""The loss of a training step. An objective turns a model and a batch into per-sample losses;
the loop averages them and steps the optimizer, whatever the objective is. Reflow (paired
noise and data) and distillation land here as new objectives, not as branches in the loop."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from genflow.processes.base import GaussianProcess, Model
from genflow.train.state import Batch


class Objective(Protocol):
    """``objective.loss(model, batch, generator) -> (B,)`` per-sample losses; every random draw
    comes from ``generator`` (the run's seeded training-noise stream), so resume is exact."""

    def loss(self, model: Model, batch: Batch, generator: torch.Generator) -> Tensor: ...


class DenoisingObjective:
    """The process's own denoising loss on ``batch["images"]``: a time from the process's
    training distribution, ``x_t = alpha x0 + sigma eps``, and the squared error of the
    prediction against its target (:meth:`GaussianProcess.training_loss`; Ho et al. 2020,
    eq. 14; Lipman et al. 2023, eq. 9; Liu et al. 2022, eq. 1)."""

    def __init__(self, process: GaussianProcess) -> None:
        self.process = process

    def loss(self, model: Model, batch: Batch, generator: torch.Generator) -> Tensor:
        return self.process.training_loss(model, batch["images"], generator)
