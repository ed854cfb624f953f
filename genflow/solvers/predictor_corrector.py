"""Predictor-corrector sampling (Song et al. 2021, Algorithms 2 and 3)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from genflow.solvers.base import BoundModel, Noise, SolverSpec, at_least_one, positive, register, reverse_sde_options, steps
from genflow.solvers.euler_maruyama import reverse_sde_step

if TYPE_CHECKING:
    from torch import Tensor


def langevin_correction(model: BoundModel, x: Tensor, t: float, snr: float, noise: Noise) -> Tensor:
    """One Langevin MCMC step ``x + step * score + sqrt(2 step) z`` at ``t``.

    Song et al. set ``step = 2 (snr ||z|| / ||score||)^2`` with norms averaged over the
    batch. Per sample that ratio explodes wherever the score vanishes (at a mode), and
    batch means tie a sample to its batch, so we use its value for a noise-dominated score,
    ``||score|| ~ ||z|| / sigma``: ``step = 2 (snr sigma_t)^2``, the same for every sample.
    """
    sigma = model.coefficients(t).sigma
    step = 2 * (snr * sigma) ** 2
    return x + step * model.score(x, t) + math.sqrt(2 * step) * noise(x)


def predictor_corrector(
    model: BoundModel,
    x: Tensor,
    times: Tensor,
    noise: Noise,
    snr: float = 0.16,
    corrector_steps: int = 1,
    diffusion: str = "auto",
    diffusion_scale: float = 1.0,
) -> Tensor:
    """At each grid time: ``corrector_steps`` Langevin corrections, then one Euler-Maruyama
    predictor step with diffusion ``diffusion_scale * g(t)`` (the corrector needs only the
    score). ``1 + corrector_steps`` NFE per step."""
    g = model.diffusion(diffusion, diffusion_scale)
    last = len(times) - 2
    for i, t, s in steps(times):
        for _ in range(corrector_steps):
            x = langevin_correction(model, x, t, snr, noise)
        x = reverse_sde_step(model, x, t, s, noise, add_noise=i != last, diffusion=g)
    return x


register(
    SolverSpec(
        "pc",
        predictor_corrector,
        "predictor-corrector: Euler-Maruyama predictor, Langevin corrector; 2 NFE/step",
        {
            "snr": positive("Langevin signal-to-noise ratio (Song et al. 2021: 0.16)", 0.16),
            "corrector_steps": at_least_one("Langevin steps per grid time", 1),
            **reverse_sde_options(),
        },
        needs_reverse_sde=True,
        stochastic=True,
    )
)
