"""Adaptive Dormand-Prince 5(4) on the probability-flow ODE, through torchdiffeq.

Dormand & Prince 1980; the probability-flow sampler of Song et al. 2021 (sec. 4.3) with
``rtol = atol = 1e-5``. torchdiffeq (Chen et al. 2018) is the well-tested implementation; its
step-size control uses an RMS norm over the whole batch, so unlike the fixed-step solvers
the result depends on the batch up to the tolerance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genflow.lazy import lazy_import
from genflow.solvers.ancestral import ddim
from genflow.solvers.base import BoundModel, Noise, SolverSpec, positive, register

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_import("torch")


def dopri5(model: BoundModel, x: Tensor, times: Tensor, noise: Noise, rtol: float = 1e-5, atol: float = 1e-5) -> Tensor:
    """Integrate through every grid time. Where the grid ends below the process's ``t_min``
    (the field is singular at sigma = 0 for VP paths), stop at ``t_min`` and finish with one
    deterministic DDIM step to the data (one more NFE)."""
    t_min = model.process.t_min
    ode_times = times[times >= t_min]
    if ode_times[-1] > t_min and times[-1] < t_min:
        ode_times = torch.cat([ode_times, ode_times.new_tensor([t_min])])
    if len(ode_times) > 1:
        x = _integrate(model, x, ode_times, rtol, atol)
    if times[-1] < ode_times[-1]:
        x = ddim(model, x, times.new_tensor([float(ode_times[-1]), float(times[-1])]), noise)
    return x


def _integrate(model: BoundModel, x: Tensor, times: Tensor, rtol: float, atol: float) -> Tensor:
    """One odeint call per grid interval, each landing on its end (``step_t``), so the field is
    evaluated only inside ``[t_min, 1]``: given several ``step_t`` times, torchdiffeq skips the
    later ones once a step ends exactly on one, stepping past the last time and interpolating
    back. Its choice of the first step probes the field at ``t0 + h0`` (for VP at t = -6.5); that
    probe, which only sizes the step, is taken at the time clamped into the interval."""
    from torchdiffeq import odeint

    time_dtype = torch.float32 if x.device.type == "mps" else torch.float64
    times = times.to(device=x.device, dtype=time_dtype)
    for start, end in zip(times[:-1].tolist(), times[1:].tolist(), strict=True):

        def field(t: Tensor, y: Tensor, low: float = end, high: float = start) -> Tensor:
            return model.velocity(y, min(max(float(t), low), high))

        interval = times.new_tensor([start, end])
        x = odeint(field, x, interval, rtol=rtol, atol=atol, method="dopri5", options={"step_t": interval[1:]})[-1]
    return x


register(
    SolverSpec(
        "dopri5",
        dopri5,
        "adaptive Dormand-Prince 5(4) on the probability-flow ODE (torchdiffeq); NFE varies",
        {"rtol": positive("relative tolerance", 1e-5), "atol": positive("absolute tolerance", 1e-5)},
        adaptive=True,
    )
)
