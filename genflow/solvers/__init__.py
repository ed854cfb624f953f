"""Solvers by name. Each module registers its solvers; adding one is a file and an import."""

from genflow.solvers import ancestral, dopri5, dpm_solver, euler, euler_maruyama, heun, predictor_corrector  # noqa: F401
from genflow.solvers.base import SOLVERS, BoundModel, NoiseSource, Option, SolverSpec

__all__ = ["SOLVERS", "BoundModel", "NoiseSource", "Option", "SolverSpec"]
