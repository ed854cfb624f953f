"""Continuous normalizing flow trained by flow matching (Lipman et al. 2023; Tong et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from genflow.errors import GenflowError
from genflow.lazy import lazy_import
from genflow.processes.base import GaussianProcess, Schedule, check_choice, option

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_import("torch")

COUPLINGS = ("independent", "ot")


def optimal_transport_pairing(x0: Tensor, eps: Tensor) -> Tensor:
    """Reorder ``eps`` so that pairs ``(x0[i], eps[i])`` solve the exact OT problem with squared
    Euclidean cost inside the minibatch (Tong et al. 2023, OT-CFM). With uniform weights and
    equal sizes exact OT is an assignment problem, solved by the Hungarian method."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x0.flatten(1).double(), eps.flatten(1).double()) ** 2
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    order = torch.from_numpy(np.asarray(cols)[np.argsort(rows)]).to(eps.device)
    return eps[order]


@dataclass(frozen=True)
class CNF(GaussianProcess):
    """The conditional OT path of Lipman et al. 2023 (eq. 20), written with t = 0 at the data:
    ``alpha = 1 - t``, ``sigma = sigma_min + (1 - sigma_min) t``; velocity prediction."""

    name = "cnf"
    summary = "flow matching with the sigma_min OT path, independent or minibatch-OT coupling (Lipman et al. 2023)"
    default_solver = "dpm++2m"  # best FD on the digits (OT coupling) at 10 and 20 NFE (benchmarks/results/digits-defaults.md)
    default_grid = "logsnr"

    prediction: str = option("velocity", "network output: eps, x0, v or velocity")
    sigma_min: float = option(1e-4, "width of the path at the data (Lipman et al. 2023)")
    coupling: str = option("independent", "noise-data pairing: independent or ot (minibatch optimal transport, Tong et al. 2023)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("coupling", self.coupling, COUPLINGS)
        if not 0 <= self.sigma_min < 1:
            raise GenflowError(f"sigma_min must be in [0, 1), not {self.sigma_min!r}")

    def schedule(self, t: Tensor) -> Schedule:
        slope = 1 - self.sigma_min
        return Schedule(1 - t, self.sigma_min + slope * t, -torch.ones_like(t), torch.full_like(t, slope))

    @property
    def has_gaussian_conditionals(self) -> bool:
        return self.coupling == "independent"

    def couple(self, x0: Tensor, eps: Tensor, groups: Tensor | None = None) -> Tensor:
        """Minibatch OT pairing, within each class when ``groups`` are given, so that every
        class's conditional flow is an OT-CFM flow of its own (Tong et al. 2023, sec. 4)."""
        if self.coupling != "ot":
            return eps
        if groups is None:
            return optimal_transport_pairing(x0, eps)
        paired = eps.clone()
        for group in groups.unique():
            members = (groups == group).nonzero().squeeze(1)
            paired[members] = optimal_transport_pairing(x0[members], eps[members])
        return paired
