"""Time grids: decreasing float64 tensors from the prior (t = 1) to the data (t = 0).

``steps`` steps give ``steps + 1`` times; ``times[0] = 1`` and ``times[-1] = 0`` always, and
every time before the last is at least the process's ``t_min`` (where its field is finite).
Grids that space times by noise level work in ``s = sigma / alpha`` (the VE-equivalent noise
level of Karras et al. 2022, sec. 4) and map back to process time by bisection, so they work
for every schedule without its inverse.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from genflow.errors import GenflowError
from genflow.lazy import lazy_import
from genflow.processes.base import GaussianProcess
from genflow.registry import Registry
from genflow.values import MAX_SAMPLING_STEPS, check_count

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_import("torch")

NOISE_LEVEL_MAX = 80.0
"""EDM's sigma_max: grids in noise level start their ramp no higher (Karras et al. 2022, table 1)."""
NOISE_LEVEL_MIN = 0.002
"""EDM's sigma_min: the lowest noise level a ramp reaches before the final step to t = 0."""

GridFn = Callable[..., "Tensor"]
GRIDS: Registry[tuple[GridFn, str]] = Registry("time grid")


def noise_level(process: GaussianProcess, t: Tensor) -> Tensor:
    """``s(t) = sigma(t) / alpha(t)``, increasing in t, infinite where alpha = 0."""
    s = process.schedule(t)
    return s.sigma / s.alpha


def time_at_noise_level(process: GaussianProcess, levels: Tensor, iterations: int = 60) -> Tensor:
    """Invert the increasing ``s(t)`` on ``[t_min, 1]`` by bisection (to ~1e-18 in t)."""
    low = torch.full_like(levels, process.t_min)
    high = torch.ones_like(levels)
    for _ in range(iterations):
        mid = (low + high) / 2
        above = noise_level(process, mid) > levels
        high = torch.where(above, mid, high)
        low = torch.where(above, low, mid)
    return (low + high) / 2


def uniform(steps: int, process: GaussianProcess) -> Tensor:
    """Equal steps in t: ``linspace(1, 0, steps + 1)``; its last time before 0, ``1 / steps``,
    must not fall below ``t_min`` (so ddpm, for one, allows at most its T = 1000 steps)."""
    if steps * process.t_min > 1 + 1e-9:
        raise GenflowError(f"process {process.name!r} allows at most {math.floor(1 / process.t_min + 1e-9)} uniform steps, not {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def _ramp(steps: int, process: GaussianProcess, warp: Callable[[Tensor], Tensor], unwarp: Callable[[Tensor], Tensor]) -> Tensor:
    """Noise levels equally spaced in ``warp(s)`` from the top level to the bottom one, as
    times, with ``times[0]`` set to 1. The bottom is the noise level at ``t_min`` (at least
    EDM's 0.002) followed by a final step to t = 0, or, where the data end itself has a
    positive noise level (VE), t = 0 itself."""
    level = lambda t: float(noise_level(process, torch.tensor(t, dtype=torch.float64)))
    top = min(level(1.0), NOISE_LEVEL_MAX)
    bottom = max(level(process.t_min), NOISE_LEVEL_MIN)
    ends_at_data = process.t_min == 0 and level(0.0) >= bottom
    fraction = torch.linspace(0.0, 1.0, steps + 1 if ends_at_data else steps, dtype=torch.float64)
    warped_top, warped_bottom = warp(torch.tensor(top, dtype=torch.float64)), warp(torch.tensor(bottom, dtype=torch.float64))
    times = time_at_noise_level(process, unwarp(warped_top + fraction * (warped_bottom - warped_top)))
    times[0] = 1.0
    if ends_at_data:
        times[-1] = 0.0
        return times
    return torch.cat([times, times.new_zeros(1)])


def karras(steps: int, process: GaussianProcess, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. 5: noise levels equally spaced in ``s^(1/rho)``, rho = 7."""
    return _ramp(steps, process, lambda s: s ** (1 / rho), lambda w: w**rho)


def logsnr(steps: int, process: GaussianProcess) -> Tensor:
    """Equal steps in ``lambda = log(alpha / sigma)`` (Lu et al. 2022, DPM-Solver, sec. 3.3)."""
    return _ramp(steps, process, torch.log, torch.exp)


GRIDS.add("uniform", (uniform, "equal steps in t (diffusers' 'trailing' spacing for ddpm)"))
GRIDS.add("karras", (karras, "EDM's rho=7 ramp in noise level sigma/alpha (Karras et al. 2022)"))
GRIDS.add("logsnr", (logsnr, "equal steps in log(alpha/sigma) (Lu et al. 2022)"))


def make_grid(name: str, steps: int, process: GaussianProcess) -> Tensor:
    """The named grid with ``steps`` steps for ``process``."""
    fn, _ = GRIDS.get(name)
    return fn(check_count("steps", steps, MAX_SAMPLING_STEPS), process)


def check_grid(times: Tensor) -> Tensor:
    """Validate a user-given grid: 1-D, strictly decreasing, within [0, 1]; returned as float64."""
    times = torch.as_tensor(times, dtype=torch.float64).cpu()
    if times.ndim != 1 or len(times) < 2:
        raise GenflowError("a time grid must be a 1-D tensor of at least two times")
    if not bool((times[1:] < times[:-1]).all()) or times[0] > 1 or times[-1] < 0:
        raise GenflowError("a time grid must decrease strictly from at most 1 to at least 0")
    return times
