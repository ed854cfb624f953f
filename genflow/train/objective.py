"""The loss of a training step. An objective turns a model and a batch into per-sample losses;
the loop averages them and steps the optimizer, whatever the objective is. Reflow (paired
noise and data) and distillation land here as new objectives, not as branches in the loop."""

from __future__ import annotations

import functools
from typing import Protocol

import torch
from torch import Tensor

from genflow.errors import GenflowError
from genflow.processes.base import GaussianProcess, Model
from genflow.train.state import Batch


class Objective(Protocol):
    """``objective.loss(model, batch, generator) -> (B,)`` per-sample losses; every random draw
    comes from ``generator`` (the run's seeded training-noise stream), so resume is exact."""

    def loss(self, model: Model, batch: Batch, generator: torch.Generator) -> Tensor: ...


class DenoisingObjective:
    """The process's own denoising loss on ``batch["images"]`` (given ``batch["labels"]`` when
    the batch has them, some dropped to the null label): a time from the process's
    training distribution, ``x_t = alpha x0 + sigma eps``, and the squared error of the
    prediction against its target (:meth:`GaussianProcess.training_loss`; Ho et al. 2020,
    eq. 14; Lipman et al. 2023, eq. 9; Liu et al. 2022, eq. 1)."""

    def __init__(self, process: GaussianProcess, label_dropout: float = 0.0, null_label: int | None = None) -> None:
        self.process, self.label_dropout, self.null_label = process, label_dropout, null_label

    def loss(self, model: Model, batch: Batch, generator: torch.Generator) -> Tensor:
        images, labels = batch["images"], batch.get("labels")
        if labels is None:
            return self.process.training_loss(model, images, generator)
        shown = self.drop_labels(labels, generator)
        return self.process.training_loss(functools.partial(model, labels=shown), images, generator, groups=labels)

    def drop_labels(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """``labels`` with each replaced by the null label with probability ``label_dropout``,
        drawn per sample from the run's noise stream, so the model also learns the
        unconditional prediction that classifier-free guidance needs (Ho & Salimans 2022, alg. 1)."""
        if self.null_label is None:
            raise GenflowError("a batch with labels needs a class-conditional model (train with --conditional)")
        dropped = torch.rand(labels.shape, generator=generator, device=labels.device) < self.label_dropout
        return labels.masked_fill(dropped, self.null_label)
