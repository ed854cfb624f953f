"""DPM-Solver++(3M) (Lu et al. 2022, "DPM-Solver++", sec. 4 and appendix: the third-order
multistep data-prediction solver; diffusers' ``solver_order=3``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from genflow.processes.base import half_log_snr
from genflow.solvers.base import BoundModel, Noise, SolverSpec, register
from genflow.solvers.multistep import Prediction, highest_order_left, step_order, step_schedules

if TYPE_CHECKING:
    from torch import Tensor


def dpmpp_3m(model: BoundModel, x: Tensor, times: Tensor, noise: Noise) -> Tensor:
    """Third-order multistep exponential integrator in data prediction. One NFE per step.

    From ``t`` to ``s`` with ``h = lambda_s - lambda_t``:
    ``x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D0 + alpha_s correction``, with
    ``D0 = x0_hat_t`` and the correction built from divided differences of the last three
    data predictions (:func:`multistep_correction`). The first steps, the last two and steps
    that meet an infinite ``lambda`` take a lower order (:mod:`genflow.solvers.multistep`).
    """
    history: list[Prediction] = []
    total = len(times) - 1
    for i, t, ct, cs in step_schedules(model, times):
        lam_t = half_log_snr(ct)
        h = half_log_snr(cs) - lam_t
        history = [*history[-2:], Prediction(lam_t, model.denoise(x, t)[0])]
        order = step_order(history, h, highest_order_left(3, i, total))
        x = (cs.sigma / ct.sigma) * x - cs.alpha * math.expm1(-h) * history[-1].x0
        if order > 1:
            x = x + cs.alpha * multistep_correction(history, h, order)
    return x


REFERENCE_CURVATURE_WEIGHT = 1.0
"""The weight of the ``D2`` term as Lu et al.'s code, diffusers and k-diffusion have it. ``D2``
estimates ``h^2 x0''/2``, while the Taylor term it stands for is ``h^3 phi_3(-h) x0''``: the
weight that makes the step third order is 2. With 1 the method converges at order 2 (with a
smaller constant than 2M); we keep the reference weight so that ``dpm++3m`` is the sampler
users know, equal to diffusers' to rounding, and test both orders."""


def multistep_correction(
    history: list[Prediction], h: float, order: int, curvature_weight: float = REFERENCE_CURVATURE_WEIGHT
) -> Tensor:
    """The higher-order terms of a DPM-Solver++ multistep step of size ``h`` (divided by
    ``alpha_s``). With ``r_k = h_k / h`` the ratios of the previous step sizes,
    ``D1_0 = (x0_0 - x0_1) / r0``: order 2 adds ``-1/2 (e^{-h} - 1) D1_0`` (the "2M" step);
    order 3 adds ``phi_2 D1 - phi_3 D2`` with ``D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1)``,
    ``D2 = (D1_0 - D1_1) / (r0 + r1)``, ``phi_2 = (e^{-h} - 1) / h + 1``,
    ``phi_3 = (e^{-h} - 1 + h) / h^2 - 1/2`` (Lu et al. 2022's multistep third-order update;
    ``curvature_weight``: see :data:`REFERENCE_CURVATURE_WEIGHT`)."""
    now, before = history[-1], history[-2]
    r0 = (now.lam - before.lam) / h
    d1_0 = (now.x0 - before.x0) / r0
    if order == 2:
        return -0.5 * math.expm1(-h) * d1_0
    earliest = history[-3]
    r1 = (before.lam - earliest.lam) / h
    d1_1 = (before.x0 - earliest.x0) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_2 = math.expm1(-h) / h + 1
    phi_3 = (math.expm1(-h) + h) / h**2 - 0.5
    return phi_2 * d1 - curvature_weight * phi_3 * d2


register(SolverSpec("dpm++3m", dpmpp_3m, "DPM-Solver++(3M) third-order multistep exponential integrator; 1 NFE/step"))
