"""Euler-Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6; Anderson 1982)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from genflow.solvers.base import BoundModel, Diffusion, Noise, SolverSpec, register, reverse_sde_options, steps

if TYPE_CHECKING:
    from torch import Tensor


def reverse_sde_step(
    model: BoundModel, x: Tensor, t: float, s: float, noise: Noise, add_noise: bool, diffusion: Diffusion | None = None
) -> Tensor:
    """``x_s = x_t + (s - t) [v + 1/2 g^2 eps_hat / sigma] + g sqrt(t - s) z``; without the
    noise term on the final step, which returns its mean (Song et al.'s ``denoise``)."""
    drift, g2 = model.reverse_sde_drift(x, t, diffusion)
    x = x + (s - t) * drift
    if add_noise:
        x = x + math.sqrt(g2 * (t - s)) * noise(x)
    return x


def euler_maruyama(
    model: BoundModel, x: Tensor, times: Tensor, noise: Noise, diffusion: str = "auto", diffusion_scale: float = 1.0
) -> Tensor:
    """The reverse SDE with diffusion ``diffusion_scale * g(t)`` (:class:`Diffusion`: the
    natural ``g^2 = 2 sigma^2 (sigma'/sigma - alpha'/alpha)`` or ``g = sigma``). One NFE per step."""
    g = model.diffusion(diffusion, diffusion_scale)
    last = len(times) - 2
    for i, t, s in steps(times):
        x = reverse_sde_step(model, x, t, s, noise, add_noise=i != last, diffusion=g)
    return x


register(
    SolverSpec(
        "euler-maruyama",
        euler_maruyama,
        "Euler-Maruyama on the reverse SDE; 1 NFE/step",
        reverse_sde_options(),
        needs_reverse_sde=True,
        stochastic=True,
    )
)
