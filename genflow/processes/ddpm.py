"""DDPM and DDIM: the discrete T-step diffusion, read as a continuous Gaussian path.

Discrete step ``i = 1..T`` lives at ``t = i / T``, with ``alpha_bar_i = prod_{j<=i}(1 -
beta_j)`` (Ho et al. 2020, eq. 4) and ``alpha_bar_0 = 1``. Between the nodes, ``log
alpha_bar`` is interpolated by a monotone cubic (Fritsch & Carlson 1980), so continuous-time
solvers get a schedule with a continuous derivative that agrees exactly with the discrete
one at every node, in the spirit of k-diffusion's discrete-schedule wrappers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from genflow.errors import GenflowError
from genflow.lazy import lazy_import
from genflow.processes.base import GaussianProcess, Schedule, check_choice, check_positive, option

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_import("torch")

BETA_SCHEDULES = ("linear", "scaled-linear", "cosine")


def linear_betas(timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """Ho et al. 2020, sec. 4: betas linear from 1e-4 to 0.02 for T = 1000."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def scaled_linear_betas(timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """Betas whose square roots are linear (Rombach et al. 2022, latent diffusion; diffusers'
    ``scaled_linear``)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2


def cosine_betas(timesteps: int, offset: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021, eq. 17: ``alpha_bar(t) = cos^2((t + s)/(1 + s) * pi/2)``,
    betas clipped at 0.999 (diffusers' ``squaredcos_cap_v2``)."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + offset) / (1 + offset) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), max_beta) for i in range(timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


def monotone_slopes(y: Tensor) -> Tensor:
    """Fritsch-Carlson node slopes (unit spacing): harmonic mean of neighbouring secants."""
    secant = y[1:] - y[:-1]
    inner = torch.where(
        secant[:-1] * secant[1:] > 0, 2 * secant[:-1] * secant[1:] / (secant[:-1] + secant[1:]), torch.zeros_like(secant[1:])
    )
    return torch.cat([secant[:1], inner, secant[-1:]])


def hermite(y: Tensor, slopes: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Cubic Hermite interpolation of node values ``y`` at positions ``u`` in ``[0, len(y) - 1]``;
    returns the value and its derivative in ``u``."""
    k = u.detach().floor().clamp(0, len(y) - 2).long()
    s = u - k
    y0, y1, m0, m1 = y[k], y[k + 1], slopes[k], slopes[k + 1]
    value = (2 * s**3 - 3 * s**2 + 1) * y0 + (s**3 - 2 * s**2 + s) * m0 + (-2 * s**3 + 3 * s**2) * y1 + (s**3 - s**2) * m1
    deriv = (6 * s**2 - 6 * s) * (y0 - y1) + (3 * s**2 - 4 * s + 1) * m0 + (3 * s**2 - 2 * s) * m1
    return value, deriv


@dataclass(frozen=True)
class DDPM(GaussianProcess):
    """Denoising diffusion probabilistic model (Ho et al. 2020), eps prediction by default."""

    name = "ddpm"
    summary = "discrete T=1000 diffusion, linear, scaled-linear or cosine betas (Ho et al. 2020); sampled with DPM-Solver++(2M)"
    default_solver = "dpm++2m"  # best FD on the digits at 10 and 20 NFE (benchmarks/results/digits-defaults.md)
    default_grid = "logsnr"

    beta_schedule: str = option("linear", "beta schedule: linear, scaled-linear or cosine")
    timesteps: int = option(1000, "discrete steps T")
    beta_start: float = option(1e-4, "first beta of the (scaled-)linear schedule")
    beta_end: float = option(0.02, "last beta of the (scaled-)linear schedule")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        check_positive("timesteps", self.timesteps)
        if not 0 < self.beta_start < self.beta_end < 1:
            raise GenflowError("beta_start and beta_end need 0 < beta_start < beta_end < 1")

    @classmethod
    def inapplicable_options(cls, options: dict[str, object]) -> list[str]:
        if options.get("beta_schedule") == "cosine":
            return [name for name in ("beta_start", "beta_end") if name in options]
        return []

    @cached_property
    def betas(self) -> Tensor:
        if self.beta_schedule == "cosine":
            return cosine_betas(self.timesteps)
        if self.beta_schedule == "scaled-linear":
            return scaled_linear_betas(self.timesteps, self.beta_start, self.beta_end)
        return linear_betas(self.timesteps, self.beta_start, self.beta_end)

    @cached_property
    def log_alpha_bar(self) -> Tensor:
        """``log alpha_bar_i`` for ``i = 0..T`` (float64)."""
        return torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-self.betas), 0)])

    @cached_property
    def _slopes(self) -> Tensor:
        return monotone_slopes(self.log_alpha_bar)

    @property
    def t_min(self) -> float:
        return 1 / self.timesteps

    @property
    def discrete_steps(self) -> int:
        return self.timesteps

    @cached_property
    def _nodes_by_device(self) -> dict[torch.device, tuple[Tensor, Tensor]]:
        return {}

    def _nodes(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """``log alpha_bar`` and its slopes on ``device`` (float64, float32 where unsupported)."""
        if device not in self._nodes_by_device:
            dtype = torch.float32 if device.type == "mps" else torch.float64
            self._nodes_by_device[device] = (self.log_alpha_bar.to(device, dtype), self._slopes.to(device, dtype))
        return self._nodes_by_device[device]

    def schedule(self, t: Tensor) -> Schedule:
        log_alpha_bar, slopes = self._nodes(t.device)
        log_ab, d_log_ab = hermite(log_alpha_bar, slopes, t.to(log_alpha_bar.dtype) * self.timesteps)
        d_log_ab = d_log_ab * self.timesteps
        alpha_bar = torch.exp(log_ab)
        alpha = torch.sqrt(alpha_bar)
        sigma = torch.sqrt(-torch.expm1(log_ab))
        dtype = t.dtype if t.is_floating_point() else torch.float64
        return Schedule(
            alpha=alpha.to(dtype),
            sigma=sigma.to(dtype),
            d_alpha=(0.5 * alpha * d_log_ab).to(dtype),
            d_sigma=(-alpha_bar * d_log_ab / (2 * sigma)).to(dtype),
        )

    def sample_training_times(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Discrete steps ``i`` uniform on ``1..T`` (Ho et al. 2020, Algorithm 1), at ``t = i / T``."""
        steps = torch.randint(1, self.timesteps + 1, (n,), generator=generator, device=device)
        return steps.float() / self.timesteps


@dataclass(frozen=True)
class DDIM(DDPM):
    """DDIM (Song, Meng & Ermon 2021): DDPM's process and objective, sampled with eta = 0."""

    name = "ddim"
    summary = "DDPM's process and checkpoint, deterministic DDIM sampling (Song, Meng & Ermon 2021)"
    default_solver = "ddim"  # the process that names its sampler keeps it
    default_grid = "uniform"
