"""What the multistep exponential integrators share (DPM-Solver++ and UniPC).

They work in the half log-SNR ``lambda = log(alpha / sigma)`` and keep the data predictions
``x0_hat`` of the last few evaluations. A step may use as many of those as its order asks,
but only while their ``lambda`` is finite: the prior end of a process whose ``alpha(1) = 0``
(rectified flow, cnf, cosine ddpm) has ``lambda = -inf``, and a step into ``sigma = 0`` has
an infinite step size ``h``, where only the first-order step (the limit ``x_s = alpha_s x0_hat``
or ``x_s = sigma_s x_t + alpha_s x0_hat``) is defined.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from genflow.processes.base import Schedule
from genflow.solvers.base import BoundModel, steps

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class Prediction:
    """One evaluation: its half log-SNR ``lam`` and the data prediction ``x0`` there."""

    lam: float
    x0: Tensor


def step_order(history: list[Prediction], h: float, most: int) -> int:
    """The order a step of size ``h`` from ``history[-1]`` may take: at most ``most``, one
    more per earlier prediction at a finite ``lambda``, and 1 where ``h`` is infinite."""
    if not math.isfinite(h):
        return 1
    order = 1
    for earlier in reversed(history[:-1]):
        if order >= most or not math.isfinite(earlier.lam):
            break
        order += 1
    return min(order, most)


def highest_order_left(order: int, step: int, steps: int) -> int:
    """``order``, lowered on the last steps so that none looks past the end of the grid (the
    ``lower_order_final`` of Lu et al. 2022 and Zhao et al. 2023: at most the steps left)."""
    return max(1, min(order, steps - step))


def step_schedules(model: BoundModel, times: Tensor) -> Iterator[tuple[int, float, Schedule, Schedule]]:
    """``(i, t_i, schedule at t_i, schedule at t_{i+1})`` for each step, each time's schedule
    computed once (the end of one step is the start of the next)."""
    start = None
    for i, t, s in steps(times):
        start = model.coefficients(t) if start is None else start
        end = model.coefficients(s)
        yield i, t, start, end
        start = end
