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
from genflow.runtime.rows import Batch


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


class PairedObjective(DenoisingObjective):
    """Reflow (Liu, Gong & Liu 2022, sec. 2.2): the process's loss on fixed pairs, the noise of
    each sample being ``batch["noise"]``, the noise its teacher's ODE started from, rather than
    fresh noise. On rectified flow's straight path the target is ``noise - sample``, so the new
    flow's paths are straighter than the teacher's (their theorem 3.6)."""

    def draw(self, batch: Batch, generator: torch.Generator) -> Batch:
        """``batch`` (which carries its paired ``noise``) with ``times`` from the process's training distribution."""
        images, labels = batch["images"], batch.get("labels")
        drawn = dict(batch)
        if labels is not None:
            drawn["labels"] = self.drop_labels(labels, generator)
        drawn["times"] = self.training_times(images.shape[0], generator, images.device)
        return drawn

    def training_times(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        return self.process.sample_training_times(n, generator, device)


class DistillationObjective(PairedObjective):
    """A ``steps_out``-step student (Liu et al. 2022, sec. 2.3, distillation): the paired loss at
    times on the ``steps_out``-step uniform Euler grid only, ``t = k / K`` for ``k = 1..K``.
    On the straight line between a pair, an Euler step with the target velocity from one grid
    time lands on the line at the next, so a student that fits these times takes the pair's
    noise to its teacher sample in K Euler steps; for K = 1 the loss is the L2 distance of the
    one-step sample ``noise - v(noise, 1)`` from the teacher's sample."""

    def __init__(self, process: GaussianProcess, steps_out: int, label_dropout: float = 0.0, null_label: int | None = None) -> None:
        super().__init__(process, label_dropout, null_label)
        self.steps_out = steps_out

    def training_times(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        k = torch.randint(1, self.steps_out + 1, (n,), generator=generator, device=device)
        return k.float() / self.steps_out


def make_objective(name: str, process: GaussianProcess, steps_out: int = 1, label_dropout: float = 0.0, null_label: int | None = None) -> Objective:
    """The objective a run's config names: ``denoising`` (fresh noise), ``reflow`` (paired
    noise) or ``distill`` (paired noise at the ``steps_out`` Euler grid's times)."""
    if name == "distill":
        return DistillationObjective(process, steps_out, label_dropout, null_label)
    if name == "reflow":
        return PairedObjective(process, label_dropout, null_label)
    return DenoisingObjective(process, label_dropout, null_label)
