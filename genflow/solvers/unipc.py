"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling
of Diffusion Models"): the B(h) = e^{h} - 1 variant ("bh2") in data prediction, as in
diffusers' ``UniPCMultistepScheduler`` with its defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from genflow.lazy import lazy_import
from genflow.processes.base import Schedule, half_log_snr
from genflow.solvers.base import BoundModel, Noise, Option, SolverSpec, register
from genflow.solvers.multistep import Prediction, highest_order_left, step_order, step_schedules

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_import("torch")


def unipc(model: BoundModel, x: Tensor, times: Tensor, noise: Noise, order: int = 2) -> Tensor:
    """UniP-p predictor and UniC corrector; one NFE per step.

    At each grid time the model is evaluated once at the predicted ``x``; that evaluation
    first corrects the step just taken (UniC, which raises its order by one, Zhao et al.
    2023, Theorem 3.3) and then feeds the next predictor step, so the corrector costs no
    evaluation. The last step is not corrected (that would cost one more evaluation).
    """
    history: list[Prediction] = []
    taken: Step | None = None
    total = len(times) - 1
    for i, t, ct, cs in step_schedules(model, times):
        now = Prediction(half_log_snr(ct), model.denoise(x, t)[0])
        if taken is not None:
            x = taken.corrected(now, ct)
        history = [*history[-(order - 1) :], now] if order > 1 else [now]
        h = half_log_snr(cs) - now.lam
        taken = Step(x, ct, history, step_order(history, h, highest_order_left(order, i, total)))
        x = taken.predicted(cs)
    return x


@dataclass(frozen=True)
class Step:
    """A predictor step from ``x`` at the time of ``history[-1]`` with order ``order``."""

    x: Tensor
    start: Schedule
    history: list[Prediction]
    order: int

    def predicted(self, end: Schedule) -> Tensor:
        """UniP-p (Zhao et al. 2023, Algorithm 2 with B(h) = e^h - 1): the order-1 step plus
        the divided differences of the ``p - 1`` earlier predictions, weighted by ``rho_p``
        (1/2 for ``p = 2``, as in the reference code; else ``R_{p-1} rho = b``)."""
        lam = half_log_snr(end)
        earlier = self.earlier(lam)
        if self.order == 1:
            weights: list[float] = []
        elif self.order == 2:
            weights = [0.5]
        else:
            weights = solve_vandermonde([r for r, _ in earlier], phi_weights(lam - self.m0.lam, self.order)[:-1])
        return self.update(end, lam, [d for _, d in earlier], weights)

    def corrected(self, new: Prediction, end: Schedule) -> Tensor:
        """UniC-p: the same step again, now with the model's prediction at its end ``new``
        as one more point (ratio 1), weighted by ``R_p rho = b`` (1/2 for ``p = 1``)."""
        earlier = self.earlier(new.lam)
        ratios = [r for r, _ in earlier] + [1.0]
        differences = [d for _, d in earlier] + [new.x0 - self.m0.x0]
        weights = [0.5] if self.order == 1 else solve_vandermonde(ratios, phi_weights(new.lam - self.m0.lam, self.order))
        return self.update(end, new.lam, differences, weights)

    @property
    def m0(self) -> Prediction:
        return self.history[-1]

    def earlier(self, lam_end: float) -> list[tuple[float, Tensor]]:
        """``(r_k, D_k)`` for the ``p - 1`` earlier predictions: ``r_k = (lambda_k - lambda_0) / h``
        and ``D_k = (x0_k - x0_0) / r_k``."""
        h = lam_end - self.m0.lam
        pairs = []
        for before in reversed(self.history[-self.order : -1]):
            ratio = (before.lam - self.m0.lam) / h
            pairs.append((ratio, (before.x0 - self.m0.x0) / ratio))
        return pairs

    def update(self, end: Schedule, lam_end: float, differences: list[Tensor], weights: list[float]) -> Tensor:
        """``x_s = (sigma_s / sigma_t) x_t - alpha_s B(h) (x0_0 + sum_k rho_k D_k)`` with
        ``B(h) = e^{-h} - 1`` (data prediction uses ``-h``)."""
        b_h = math.expm1(-(lam_end - self.m0.lam))
        direction = self.m0.x0
        for weight, difference in zip(weights, differences, strict=True):
            direction = direction + weight * difference
        return (end.sigma / self.start.sigma) * self.x - end.alpha * b_h * direction


def phi_weights(h: float, count: int) -> list[float]:
    """``b_k = k! z phi_{k+1}(z) / B(h)`` for ``k = 1..count`` with ``z = -h`` (data
    prediction) and ``phi_k`` the exponential-integrator functions, ``z phi_2(z) = (e^z - 1)/z - 1``,
    by the recursion ``z phi_{k+2}(z) = z phi_{k+1}(z) / z - 1/(k+1)!`` (Zhao et al. 2023,
    Algorithm 2; the order conditions ``R_p rho = b``)."""
    hh = -h
    h_phi_k = math.expm1(hh) / hh - 1
    b_h = math.expm1(hh)
    factorial, weights = 1, []
    for k in range(1, count + 1):
        weights.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return weights


def solve_vandermonde(ratios: list[float], b: list[float]) -> list[float]:
    """``rho`` with ``sum_k r_k^(i-1) rho_k = b_i`` for every ``i`` (the matrix ``R_p``)."""
    matrix = torch.tensor([[r**i for r in ratios] for i in range(len(ratios))], dtype=torch.float64)
    return torch.linalg.solve(matrix, torch.tensor(b, dtype=torch.float64)).tolist()


register(
    SolverSpec(
        "unipc",
        unipc,
        "UniPC (bh2) multistep predictor-corrector, corrector free; 1 NFE/step",
        {"order": Option(2, lambda v: v in (1, 2, 3), "1, 2 or 3", "UniPC predictor order (the corrector adds one)")},
    )
)
