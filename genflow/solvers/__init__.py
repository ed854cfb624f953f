"""Solvers by name. Each module registers its solvers; adding one is a file and an import."""

from genflow.solvers import (  # noqa: F401
    ancestral,
    dopri5,
    dpm_solver,
    dpmpp_3m,
    euler,
    euler_maruyama,
    heun,
    predictor_corrector,
    unipc,
)
from genflow.solvers.base import SOLVERS, BoundModel, NoiseSource, Option, SolverSpec

__all__ = ["SOLVERS", "BoundModel", "NoiseSource", "Option", "SolverSpec"]
