"""Rectified flow (Liu, Gong & Liu 2022): the straight path ``x_t = (1 - t) x0 + t eps``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from genflow.lazy import lazy_import
from genflow.processes.base import GaussianProcess, Schedule, check_choice, check_positive, option

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_import("torch")

TIME_SAMPLINGS = ("uniform", "logit-normal")


@dataclass(frozen=True)
class RectifiedFlow(GaussianProcess):
    """Velocity ``eps - x0`` regressed on the straight path (Liu et al. 2022, eq. 1);
    logit-normal training times as in Esser et al. 2024 (SD3), sec. 3.1."""

    name = "rectified-flow"
    summary = "straight path x_t = (1-t) x0 + t eps, velocity prediction (Liu, Gong & Liu 2022)"
    default_solver = "unipc"  # best FD on the digits at 10 and 20 NFE (benchmarks/results/digits-defaults.md)

    prediction: str = option("velocity", "network output: eps, x0, v or velocity")
    time_sampling: str = option("uniform", "training times: uniform or logit-normal (Esser et al. 2024)")
    logit_mean: float = option(0.0, "mean of the logit-normal training times")
    logit_std: float = option(1.0, "standard deviation of the logit-normal training times")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("time_sampling", self.time_sampling, TIME_SAMPLINGS)
        check_positive("logit_std", self.logit_std)

    @classmethod
    def inapplicable_options(cls, options: dict[str, object]) -> list[str]:
        if options.get("time_sampling", "uniform") == "uniform":
            return [name for name in ("logit_mean", "logit_std") if name in options]
        return []

    def schedule(self, t: Tensor) -> Schedule:
        return Schedule(1 - t, t, -torch.ones_like(t), torch.ones_like(t))

    def sample_training_times(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        if self.time_sampling == "uniform":
            return super().sample_training_times(n, generator, device)
        normal = torch.randn(n, generator=generator, device=device)
        return torch.sigmoid(self.logit_mean + self.logit_std * normal)
