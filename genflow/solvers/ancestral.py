"""The DDIM / ancestral family (Song, Meng & Ermon 2021, eq. 12 and 16)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from genflow.processes.base import Schedule
from genflow.solvers.base import BoundModel, Noise, SolverSpec, register, steps, unit_interval

if TYPE_CHECKING:
    from torch import Tensor


def ancestral_std(ct: Schedule, cs: Schedule) -> float:
    """Noise std of a step from t to s < t at eta = 1:
    ``(sigma_s / sigma_t) sqrt(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2)``, the DDPM
    posterior std of ``x_s`` given ``x_t`` (Ho et al. 2020, eq. 7, with beta_tilde)."""
    gap = ct.sigma**2 - (ct.alpha / cs.alpha) ** 2 * cs.sigma**2
    return cs.sigma / ct.sigma * math.sqrt(max(gap, 0.0))


def ddim(model: BoundModel, x: Tensor, times: Tensor, noise: Noise, eta: float = 0.0) -> Tensor:
    """``x_s = alpha_s x0_hat + sqrt(sigma_s^2 - sigma_up^2) eps_hat + sigma_up z`` with
    ``sigma_up = eta * ancestral_std``: eta = 0 is DDIM (Euler for rectified flow), eta = 1
    DDPM's ancestral sampler. One NFE per step."""
    for _, t, s in steps(times):
        ct, cs = model.coefficients(t), model.coefficients(s)
        x0, eps = model.denoise(x, t)
        sigma_up = eta * ancestral_std(ct, cs)
        x = cs.alpha * x0 + math.sqrt(max(cs.sigma**2 - sigma_up**2, 0.0)) * eps
        if sigma_up > 0:
            x = x + sigma_up * noise(x)
    return x


def ancestral(model: BoundModel, x: Tensor, times: Tensor, noise: Noise, eta: float = 1.0) -> Tensor:
    """DDPM's ancestral sampler (Ho et al. 2020, Algorithm 2) for ddpm, Euler-ancestral for
    continuous processes: the DDIM step at eta = 1."""
    return ddim(model, x, times, noise, eta)


ETA = "0 = deterministic DDIM, 1 = DDPM ancestral; above 1 a step's noise could exceed the variance it must reach"
register(SolverSpec("ddim", ddim, "DDIM step, deterministic at eta=0 (the default); 1 NFE/step", {"eta": unit_interval(ETA, 0.0)}))
register(
    SolverSpec(
        "ancestral",
        ancestral,
        "ancestral sampling, DDIM with eta=1: DDPM's sampler, Euler-ancestral for flows; 1 NFE/step",
        {"eta": unit_interval(ETA, 1.0)},
    )
)
