"""Score SDEs (Song et al. 2021): variance preserving, variance exploding and sub-VP.

All three are Gaussian paths, so the same network output gives the reverse SDE (eq. 6) and
the probability-flow ODE (eq. 13) through the schedule alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from genflow.lazy import lazy_import
from genflow.processes.base import GaussianProcess, Schedule, check_choice, check_positive, option

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_import("torch")

SDE_KINDS = ("vp", "ve", "subvp")
VP_OPTIONS = ("beta_min", "beta_max")
VE_OPTIONS = ("sigma_min", "sigma_max")


@dataclass(frozen=True)
class ScoreSDE(GaussianProcess):
    """VP: ``alpha = exp(-1/2 int_0^t beta)``, ``sigma = sqrt(1 - alpha^2)`` (eq. 11, 29);
    sub-VP: same alpha, ``sigma = 1 - alpha^2`` (eq. 35); VE: ``alpha = 1``,
    ``sigma = sigma_min (sigma_max / sigma_min)^t`` (eq. 31)."""

    name = "sde"
    summary = "score SDE (vp, ve, subvp); reverse SDE or probability-flow ODE (Song et al. 2021)"
    default_solver = "dpm++2m"  # best FD on the digits (VP) at 10 and 20 NFE (benchmarks/results/digits-defaults.md)
    default_grid = "logsnr"

    sde: str = option("vp", "sde variant: vp, ve or subvp")
    beta_min: float = option(0.1, "vp/subvp beta at t = 0")
    beta_max: float = option(20.0, "vp/subvp beta at t = 1")
    sigma_min: float = option(0.01, "ve sigma at t = 0")
    sigma_max: float = option(50.0, "ve sigma at t = 1")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("sde", self.sde, SDE_KINDS)
        for name in VP_OPTIONS + VE_OPTIONS:
            check_positive(name, getattr(self, name))

    @classmethod
    def inapplicable_options(cls, options: dict[str, object]) -> list[str]:
        unused = VP_OPTIONS if options.get("sde") == "ve" else VE_OPTIONS
        return [name for name in unused if name in options]

    @property
    def t_min(self) -> float:
        """Song et al. 2021 stop VP and sub-VP sampling at 1e-3, where sigma is about 0.01."""
        return 0.0 if self.sde == "ve" else 1e-3

    def schedule(self, t: Tensor) -> Schedule:
        if self.sde == "ve":
            return self._ve(t)
        beta = self.beta_min + t * (self.beta_max - self.beta_min)
        alpha = torch.exp(-0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2))
        d_alpha = -0.5 * beta * alpha
        if self.sde == "subvp":
            return Schedule(alpha, -torch.expm1(2 * torch.log(alpha)), d_alpha, -2 * alpha * d_alpha)
        sigma = torch.sqrt(-torch.expm1(2 * torch.log(alpha)))
        return Schedule(alpha, sigma, d_alpha, -alpha * d_alpha / sigma)

    def _ve(self, t: Tensor) -> Schedule:
        log_ratio = math.log(self.sigma_max / self.sigma_min)
        sigma = self.sigma_min * torch.exp(t * log_ratio)
        return Schedule(torch.ones_like(t), sigma, torch.zeros_like(t), sigma * log_ratio)
