"""Heun's second-order method as in EDM (Karras et al. 2022, Algorithm 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from genflow.solvers.base import BoundModel, Noise, SolverSpec, register, steps

if TYPE_CHECKING:
    from torch import Tensor


def heun(model: BoundModel, x: Tensor, times: Tensor, noise: Noise) -> Tensor:
    """Euler predictor then trapezoidal corrector; the last step, which ends where the field
    may be singular, is plain Euler (Algorithm 1, line 9). ``2N - 1`` NFE for N steps."""
    last = len(times) - 2
    for i, t, s in steps(times):
        d = model.velocity(x, t)
        x_euler = x + (s - t) * d
        if i == last:
            return x_euler
        x = x + (s - t) * 0.5 * (d + model.velocity(x_euler, s))
    return x


register(SolverSpec("heun", heun, "second-order Heun (EDM), Euler on the last step; 2 NFE/step"))
