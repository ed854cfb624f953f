"""What maps a process-time query ``(x, t)`` to the backbone's inputs, and back.

:class:`Preconditioner` is ``model(x, t) -> prediction`` with ``t`` of shape ``(B,)`` in
``[0, 1]``. It scales the input by ``c_in = 1 / sqrt(alpha^2 + sigma^2)``, the input part of
EDM's preconditioning (Karras et al. 2022, table 1, with sigma_data = 1), which keeps a VE
input of standard deviation 50 in the range the network sees for VP; and it maps ``t`` to
the embedding's timestep. For a process of ``T`` discrete steps (DDPM: step ``i = 1..T`` at
``t = i / T``) that is the integer index ``i - 1 = T t - 1`` which diffusers feeds its UNet at
that step, so a diffusers model and a genflow run are the same function (between the nodes
the index is fractional); in continuous time it is ``999 t`` (DDPM's range, Ho et al. 2020).
The preconditioner is built from a schedule function, any callable returning ``alpha`` and
``sigma`` at ``t``, and the number of discrete steps, so neither it nor the backbone knows
which process it serves. A class-conditional backbone
takes ``labels`` (long, shape ``(B,)``); ``None`` or the null label means no class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from genflow.errors import GenflowError
from genflow.nn.backbones import BackboneConfig

TIMESTEP_SCALE = 999.0
NODE_TOLERANCE = 1e-3
"""A discrete step index within this of an integer is that integer: float32 times ``i / T``
land within ~1e-4 of the node, and the embedding of step ``k`` must be that of ``k`` itself."""


class Scales(Protocol):
    """``alpha`` and ``sigma`` of a Gaussian path ``x_t = alpha x0 + sigma eps`` at some times."""

    alpha: Tensor
    sigma: Tensor


Schedule = Callable[[Tensor], Scales]


LEGACY_PREFIX, PREFIX = "unet.", "backbone."
"""Checkpoints written before the DiT backbone name the backbone's weights ``unet.*``."""


class Preconditioner(nn.Module):
    """``Preconditioner(config, schedule)(x, t, labels=None) -> prediction``; the backbone (a
    UNet or a DiT, :mod:`genflow.nn.backbones`) is ``.backbone``, its state dict keys
    ``backbone.*``."""

    def __init__(self, config: BackboneConfig, schedule: Schedule, discrete_steps: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.schedule = schedule
        self.discrete_steps = discrete_steps
        self.backbone = config.build()

    @staticmethod
    def current_keys(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """A preconditioner's saved state dict with the keys of older checkpoints renamed."""
        return {PREFIX + k.removeprefix(LEGACY_PREFIX) if k.startswith(LEGACY_PREFIX) else k: v for k, v in tensors.items()}

    def input_scale(self, t: Tensor, like: Tensor) -> Tensor:
        """``c_in(t)`` shaped to broadcast against ``like`` and in its dtype. Where the backbone gets
        diffusers' step index (:attr:`feeds_steps`) it is computed in float64, where it rounds to
        exactly 1 on DDPM's variance-preserving path, so the backbone sees what diffusers feeds
        it; elsewhere in float32, as genflow always has (older runs train the same numbers)."""
        s = self.schedule(t.to(self.schedule_dtype(t)))
        shape = (-1,) + (1,) * (like.ndim - 1)
        alpha, sigma = s.alpha.reshape(shape), s.sigma.reshape(shape)
        if not self.feeds_steps:
            alpha, sigma = alpha.to(like.dtype), sigma.to(like.dtype)
        return torch.rsqrt(alpha**2 + sigma**2).to(like.dtype)

    @property
    def feeds_steps(self) -> bool:
        """Whether the backbone gets diffusers' step index (a discrete process, not a ``999t`` run)."""
        return self.discrete_steps is not None and self.config.time_embedding == "step"

    def schedule_dtype(self, t: Tensor) -> torch.dtype:
        """float64 where the backbone gets step indices (and the device has it), else float32."""
        return torch.float64 if self.feeds_steps and t.device.type != "mps" else torch.float32

    def timestep(self, t: Tensor) -> Tensor:
        """The embedding's input at process times ``t``: the step index ``T t - 1`` of a
        discrete process (exactly an integer at the nodes), else ``999 t``."""
        if not self.feeds_steps:
            return t * TIMESTEP_SCALE
        index = t.to(self.schedule_dtype(t)) * self.discrete_steps - 1
        nearest = index.round()
        return torch.where((index - nearest).abs() < NODE_TOLERANCE, nearest, index)

    @property
    def null_label(self) -> int | None:
        """The label meaning "no class" for a conditional backbone; ``None`` for an unconditional one."""
        return self.config.null_label

    def class_labels(self, labels: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
        """The labels the backbone's class embedding takes: ``labels``, or the null label when
        none are given; ``None`` for an unconditional backbone, which refuses labels."""
        null = self.null_label
        if null is None:
            if labels is not None:
                raise GenflowError("this model is unconditional: it takes no class labels (train it with --conditional)")
            return None
        if labels is None:
            return torch.full((batch,), null, dtype=torch.long, device=device)
        return labels.to(device=device, dtype=torch.long)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        classes = self.class_labels(labels, x.shape[0], x.device)
        return self.config.run(self.backbone, x * self.input_scale(t, x), self.timestep(t), classes).to(x.dtype)
