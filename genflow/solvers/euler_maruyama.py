"""Euler-Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6; Anderson 1982)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from genflow.solvers.base import BoundModel, Noise, SolverSpec, register, steps

if TYPE_CHECKING:
    from torch import Tensor


def reverse_sde_step(model: BoundModel, x: Tensor, t: float, s: float, noise: Noise, add_noise: bool) -> Tensor:
    """``x_s = x_t + (s - t) [v + 1/2 g^2 eps_hat / sigma] + g sqrt(t - s) z``; without the
    noise term on the final step, which returns its mean (Song et al.'s ``denoise``)."""
    drift, g2 = model.reverse_sde_drift(x, t)
    x = x + (s - t) * drift
    if add_noise:
        x = x + math.sqrt(g2 * (t - s)) * noise(x)
    return x


def euler_maruyama(model: BoundModel, x: Tensor, times: Tensor, noise: Noise) -> Tensor:
    """Reverse SDE with the diffusion ``g^2 = 2 sigma^2 (sigma'/sigma - alpha'/alpha)``. One NFE per step."""
    last = len(times) - 2
    for i, t, s in steps(times):
        x = reverse_sde_step(model, x, t, s, noise, add_noise=i != last)
    return x


register(SolverSpec("euler-maruyama", euler_maruyama, "Euler-Maruyama on the reverse SDE; 1 NFE/step", needs_reverse_sde=True, stochastic=True))
