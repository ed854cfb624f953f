"""Log-likelihood through the probability-flow ODE (Song et al. 2021, sec. D.2; Chen et al. 2018).

``log p_0(x) = log N(x_1; 0, sigma(1)^2 I) + integral_0^1 div v(x_t, t) dt`` along the ODE
``dx/dt = v`` from the data to the prior. The divergence is exact (one vector-Jacobian
product per dimension) for small samples, or Hutchinson's estimator ``E[z^T (dv/dx) z]``
with Rademacher ``z`` (Grathwohl et al. 2019, FFJORD) otherwise. Integration is adaptive
(dopri5) or fixed-step Heun. Data live at ``t_min`` (the process's smallest usable time).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchdiffeq import odeint

from genflow.errors import GenflowError
from genflow.processes import GaussianProcess, make_process
from genflow.processes.base import Model
from genflow.solvers import BoundModel
from genflow.solvers.guidance import conditioning

EXACT_DIVERGENCE_MAX_DIMS = 64


def divergence_exact(field: Tensor, x: Tensor) -> Tensor:
    """``sum_i d field_i / d x_i`` per sample, by one backward pass per dimension."""
    flat = field.flatten(1)
    total = torch.zeros(x.shape[0], dtype=field.dtype, device=field.device)
    for i in range(flat.shape[1]):
        grad = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)[0]
        total = total + grad.flatten(1)[:, i]
    return total


def divergence_hutchinson(field: Tensor, x: Tensor, probe: Tensor) -> Tensor:
    """Unbiased estimate ``z^T (d field / d x) z`` with a fixed Rademacher probe ``z``."""
    grad = torch.autograd.grad((field * probe).sum(), x)[0]
    return (grad * probe).flatten(1).sum(1)


def log_likelihood(
    model: Model,
    process: GaussianProcess | str,
    x: Tensor,
    *,
    method: str = "dopri5",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    divergence: str = "auto",
    seed: int = 0,
    labels: Tensor | Sequence[int] | int | None = None,
) -> Tensor:
    """``log p(x)`` in nats per sample, shape ``(B,)``, under the probability-flow ODE.

    Args:
        model: ``model(x, t) -> prediction``, the same contract as :func:`genflow.sample`.
        process: the process (or its name) the model was trained under.
        x: data, shape ``(B, ...)``, in the model's data space (continuous; dequantize first).
        method: ``dopri5`` (adaptive, ``rtol``/``atol``) or ``heun`` (``steps`` fixed steps).
        divergence: ``exact``, ``hutchinson`` or ``auto`` (exact up to 64 dimensions).
        seed: for Hutchinson's probe.
        labels: for a class-conditional ``model(x, t, labels)``: one class for every sample or
            one per sample, giving ``log p(x | class)`` under the conditional model (guidance
            1); ``None`` gives the unconditional model's ``log p(x)``, as in :func:`genflow.sample`.
    """
    process = make_process(process) if isinstance(process, str) else process
    bound = BoundModel(conditioning(model, labels, x.shape[0])(0, x.shape[0]), process)
    dims = math.prod(x.shape[1:])
    if divergence == "auto":
        divergence = "exact" if dims <= EXACT_DIVERGENCE_MAX_DIMS else "hutchinson"
    if divergence not in ("exact", "hutchinson"):
        raise GenflowError(f"divergence must be exact, hutchinson or auto, not {divergence!r}")
    probe = None
    if divergence == "hutchinson":
        generator = torch.Generator().manual_seed(seed)
        probe = (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1).to(x.device, x.dtype)

    def augmented(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            y = state[0].detach().requires_grad_(True)
            v = bound.velocity(y, float(t))
            div = divergence_exact(v, y) if probe is None else divergence_hutchinson(v, y, probe)
        return v.detach(), div.detach()

    t0 = process.t_min
    x1, integral = integrate(augmented, (x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)), t0, method, steps, rtol, atol)
    prior_std = process.prior_std
    log_prior = -0.5 * (x1.flatten(1) ** 2).sum(1) / prior_std**2 - dims * (math.log(prior_std) + 0.5 * math.log(2 * math.pi))
    return log_prior + integral


def integrate(field: Callable, state: tuple[Tensor, Tensor], t0: float, method: str, steps: int, rtol: float, atol: float):
    """From ``t0`` up to 1, adaptively or by ``steps`` Heun steps."""
    if method == "dopri5":
        times = torch.tensor([t0, 1.0], dtype=torch.float64, device=state[0].device)
        path = odeint(field, state, times, rtol=rtol, atol=atol, method="dopri5", options={"step_t": times})
        return path[0][-1], path[1][-1]
    if method != "heun":
        raise GenflowError(f"method must be dopri5 or heun, not {method!r}")
    times = torch.linspace(t0, 1.0, steps + 1, dtype=torch.float64).tolist()
    y, acc = state
    for t, s in itertools.pairwise(times):
        dy, da = field(torch.tensor(t), (y, acc))
        ey, ea = field(torch.tensor(s), (y + (s - t) * dy, acc + (s - t) * da))
        y, acc = y + (s - t) * 0.5 * (dy + ey), acc + (s - t) * 0.5 * (da + ea)
    return y, acc


def bits_per_dim(log_px: Tensor, dims: int, bin_width: float) -> Tensor:
    """Bits per dimension of discrete data whose bins are ``bin_width`` wide in model space:
    ``-(log p(x) + D log(bin_width)) / (D log 2)``, the uniform-dequantization bound
    (Theis et al. 2016; Ho et al. 2019)."""
    return -(log_px + dims * math.log(bin_width)) / (dims * math.log(2))


def dequantize(x: Tensor, levels: int, generator: torch.Generator | None = None) -> tuple[Tensor, float]:
    """Uniform dequantization of data in [-1, 1] with ``levels`` evenly spaced values (17 for
    the digits, 256 for 8-bit images): each value spreads over its bin of width 2/(levels-1),
    centred on it. Returns the dequantized data and the bin width."""
    width = 2 / (levels - 1)
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype) - 0.5
    return x + width * noise.to(x.device), width
