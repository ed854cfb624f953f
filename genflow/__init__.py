"""genflow: train, sample and compare diffusion and flow models with one backbone.

Glossary (see docs/design.md):

- process: the corruption path, training time distribution, target and loss, and how a
  network output becomes a field to integrate. Every process is a Gaussian path
  ``x_t = alpha(t) x0 + sigma(t) eps`` with ``t = 0`` data and ``t = 1`` the prior.
- schedule: ``alpha(t)``, ``sigma(t)`` and their time derivatives.
- prediction: what the network outputs: ``eps``, ``x0``, ``v`` or ``velocity``.
- time grid: decreasing times from 1 (prior) to 0 (data), both included.
- solver: a function integrating a model bound to a process along a time grid.
- NFE: number of network evaluations, the honest unit of sampling cost.

Usage::

    import genflow
    proc = genflow.make_process("rectified-flow")
    x = genflow.sample(model, proc, solver="heun", steps=20, shape=(16, 1, 8, 8), seed=0)
"""

from genflow.errors import (
    GenflowError,
    IncompatibleError,
    TrainingDiverged,
    TrainingInterrupted,
    TrainingStopped,
    UnknownNameError,
)
from genflow.processes import PROCESSES, GaussianProcess, Schedule, make_process
from genflow.sampling.grids import GRIDS, make_grid
from genflow.solvers import SOLVERS, BoundModel, NoiseSource
from genflow.version import __version__

# Imported on first use (PEP 562): they pull in torch, which the registries above do not.
_LAZY = {
    "sample": "genflow.sampling.sample",
    "SamplingStats": "genflow.sampling.sample",
    "log_likelihood": "genflow.sampling.likelihood",
    "reflow": "genflow.fewstep.reflow",
    "distill": "genflow.fewstep.reflow",
    "straightness": "genflow.fewstep.reflow",
    "export_run": "genflow.interop.export",
    "import_diffusers": "genflow.interop.importer",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'genflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "GRIDS",
    "PROCESSES",
    "SOLVERS",
    "BoundModel",
    "GaussianProcess",
    "GenflowError",
    "IncompatibleError",
    "NoiseSource",
    "SamplingStats",
    "Schedule",
    "TrainingDiverged",
    "TrainingInterrupted",
    "TrainingStopped",
    "UnknownNameError",
    "__version__",
    "distill",
    "export_run",
    "import_diffusers",
    "log_likelihood",
    "make_grid",
    "make_process",
    "reflow",
    "sample",
    "straightness",
]
