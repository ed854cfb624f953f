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
    """A training objective in two parts. ``objective.draw(batch, generator)`` adds a global
    batch's random draws (times, noise, dropped labels) from ``generator``, the run's seeded
    training-noise stream, so resume is exact and every process of a distributed run draws
    the same; ``objective.loss(model, batch) -> (B,)`` is then a deterministic per-sample loss
    of any slice of that batch."""

    def draw(self, batch: Batch, generator: torch.Generator) -> Batch: ...

    def loss(self, model: Model, batch: Batch) -> Tensor: ...


class DenoisingObjective:
    """The process's own denoising loss on ``batch["images"]`` (given ``batch["labels"]`` when
    the batch has them, some dropped to the null label): a time from the process's
    training distribution, ``x_t = alpha x0 + sigma eps``, and the squared error of the
    prediction against its target (:meth:`GaussianProcess.loss_at`; Ho et al. 2020,
    eq. 14; Lipman et al. 2023, eq. 9; Liu et al. 2022, eq. 1)."""

    def __init__(self, process: GaussianProcess, label_dropout: float = 0.0, null_label: int | None = None) -> None:
        self.process, self.label_dropout, self.null_label = process, label_dropout, null_label

    def draw(self, batch: Batch, generator: torch.Generator) -> Batch:
        """``batch`` with ``times`` and ``noise`` added and its ``labels`` (if any) partly dropped."""
        images, labels = batch["images"], batch.get("labels")
        drawn = dict(batch)
        if labels is not None:
            drawn["labels"] = self.drop_labels(labels, generator)
        drawn["times"], drawn["noise"] = self.process.training_draws(images, generator, groups=labels)
        return drawn

    def loss(self, model: Model, batch: Batch) -> Tensor:
        labels = batch.get("labels")
        conditioned = model if labels is None else functools.partial(model, labels=labels)
        return self.process.loss_at(conditioned, batch["images"], batch["times"], batch["noise"])

    def drop_labels(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """``labels`` with each replaced by the null label with probability ``label_dropout``,
        drawn per sample from the run's noise stream, so the model also learns the
        unconditional prediction that classifier-free guidance needs (Ho & Salimans 2022, alg. 1)."""
        if self.null_label is None:
            raise GenflowError("a batch with labels needs a class-conditional model (train with --conditional)")
        dropped = torch.rand(labels.shape, generator=generator, device=labels.device) < self.label_dropout
        return labels.masked_fill(dropped, self.null_label)
