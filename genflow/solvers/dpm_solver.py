"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from genflow.processes.base import half_log_snr
from genflow.solvers.base import BoundModel, Noise, SolverSpec, register, steps

if TYPE_CHECKING:
    from torch import Tensor


def dpmpp_2m(model: BoundModel, x: Tensor, times: Tensor, noise: Noise) -> Tensor:
    """Multistep second-order exponential integrator in data prediction.

    With ``lambda = log(alpha / sigma)`` and ``h = lambda_s - lambda_t``:
    ``x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D`` where ``D`` is ``x0_hat`` on
    the first step, the last step and after an infinite step, and otherwise the linear
    extrapolation ``(1 + 1/2r) x0_hat_t - 1/2r x0_hat_prev`` with ``r = h_prev / h``.
    One NFE per step.
    """
    previous_x0, previous_h = None, math.inf
    for _, t, s in steps(times):
        ct, cs = model.coefficients(t), model.coefficients(s)
        x0, _ = model.denoise(x, t)
        h = half_log_snr(cs) - half_log_snr(ct)
        direction = x0
        if previous_x0 is not None and math.isfinite(h) and math.isfinite(previous_h):
            half_inverse_ratio = h / (2 * previous_h)
            direction = (1 + half_inverse_ratio) * x0 - half_inverse_ratio * previous_x0
        x = (cs.sigma / ct.sigma) * x - cs.alpha * math.expm1(-h) * direction
        previous_x0, previous_h = x0, h
    return x


register(SolverSpec("dpm++2m", dpmpp_2m, "DPM-Solver++(2M) multistep exponential integrator; 1 NFE/step"))
