"""Euler's method on the probability-flow ODE (first order)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from genflow.solvers.base import BoundModel, Noise, SolverSpec, register, steps

if TYPE_CHECKING:
    from torch import Tensor


def euler(model: BoundModel, x: Tensor, times: Tensor, noise: Noise) -> Tensor:
    """``x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i)``: one NFE per step."""
    for _, t, s in steps(times):
        x = x + (s - t) * model.velocity(x, t)
    return x


register(SolverSpec("euler", euler, "first-order Euler on the probability-flow ODE; 1 NFE/step"))
