"""Generative processes by name: ``make_process("rectified-flow", time_sampling="logit-normal")``."""

from __future__ import annotations

from typing import get_type_hints

from genflow.errors import GenflowError
from genflow.processes.base import PREDICTIONS, GaussianProcess, Schedule, from_x0_eps, to_x0_eps
from genflow.processes.cnf import CNF
from genflow.processes.ddpm import DDIM, DDPM
from genflow.processes.rectified_flow import RectifiedFlow
from genflow.processes.sde import ScoreSDE
from genflow.registry import Registry, unknown
from genflow.values import typed_value

PROCESSES: Registry[type[GaussianProcess]] = Registry("process")
for _cls in (DDPM, DDIM, ScoreSDE, RectifiedFlow, CNF):
    PROCESSES.add(_cls.name, _cls)


def make_process(name: str, **options: object) -> GaussianProcess:
    """Build the process registered as ``name`` with ``options`` (its dataclass fields).

    Unknown names and options raise :class:`~genflow.errors.UnknownNameError` with a "did you
    mean"; options that do nothing with the others given (``sigma_max`` for a VP SDE) and
    invalid values raise :class:`~genflow.errors.GenflowError`.
    """
    cls = PROCESSES.get(name)
    valid = cls.option_names()
    for option in options:
        if option not in valid:
            raise unknown(f"option for process {name!r}:", option, valid)
    inapplicable = cls.inapplicable_options(options)
    if inapplicable:
        raise GenflowError(f"option {inapplicable[0]!r} has no effect on process {name!r} with these options; remove it")
    types = get_type_hints(cls)
    return cls(**{option: typed_value(f"process option {option}", value, types[option]) for option, value in options.items()})


__all__ = [
    "CNF",
    "DDIM",
    "DDPM",
    "PREDICTIONS",
    "PROCESSES",
    "GaussianProcess",
    "RectifiedFlow",
    "Schedule",
    "ScoreSDE",
    "from_x0_eps",
    "make_process",
    "to_x0_eps",
]
