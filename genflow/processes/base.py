"""Gaussian paths: the schedule, prediction conversions and the training loss.

Every genflow process is a Gaussian path ``x_t = alpha(t) x0 + sigma(t) eps`` with
``eps ~ N(0, I)``, ``t`` in ``[0, 1]``, ``t = 0`` data and ``t = 1`` the prior. What a
process adds is its schedule, the prediction its network makes, how it draws training times
and pairs noise with data, and its defaults for sampling. Solvers never branch on the
process: they convert any prediction to ``(x0_hat, eps_hat)`` with :func:`to_x0_eps` and
build the field they integrate from the schedule (see ``docs/design.md``).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from genflow.errors import GenflowError
from genflow.lazy import lazy_import

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_import("torch")

PREDICTIONS = ("eps", "x0", "v", "velocity")

Model = Callable[["Tensor", "Tensor"], "Tensor"]
"""``model(x, t) -> prediction`` with ``t`` a float tensor of shape ``(batch,)``."""


@dataclass(frozen=True)
class Schedule:
    """``alpha(t)``, ``sigma(t)`` and their time derivatives (tensors or floats)."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor

    def broadcast_to(self, x: Tensor) -> Schedule:
        """Reshape per-sample ``(B,)`` coefficients so they broadcast against ``x``."""
        shape = (-1,) + (1,) * (x.ndim - 1)
        return Schedule(*(c.reshape(shape).to(x.dtype) for c in self.values()))

    def item(self) -> Schedule:
        """The schedule at a single time as Python floats (what solvers use per step)."""
        return Schedule(*(float(c) for c in self.values()))

    def values(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(alpha, sigma, d_alpha, d_sigma)``, as they are (``dataclasses.astuple`` would
        deep-copy every tensor, on every step)."""
        return self.alpha, self.sigma, self.d_alpha, self.d_sigma


def to_x0_eps(prediction: str, output: Tensor, x: Tensor, s: Schedule) -> tuple[Tensor, Tensor]:
    """Recover ``(x0_hat, eps_hat)`` from a network output and ``x = alpha x0 + sigma eps``.

    ``v = alpha eps - sigma x0`` (Salimans & Ho 2022, eq. 9, general alpha, sigma) and
    ``velocity = d_alpha x0 + d_sigma eps`` (Lipman et al. 2023, eq. 21 for Gaussian paths)
    are each solved together with the path equation as a 2x2 linear system.
    """
    if prediction == "eps":
        return (x - s.sigma * output) / s.alpha, output
    if prediction == "x0":
        return output, (x - s.alpha * output) / s.sigma
    if prediction == "v":
        norm = s.alpha**2 + s.sigma**2
        return (s.alpha * x - s.sigma * output) / norm, (s.sigma * x + s.alpha * output) / norm
    if prediction == "velocity":
        det = s.alpha * s.d_sigma - s.sigma * s.d_alpha
        return (s.d_sigma * x - s.sigma * output) / det, (s.alpha * output - s.d_alpha * x) / det
    raise GenflowError(f"unknown prediction {prediction!r}; choose from {', '.join(PREDICTIONS)}")


def from_x0_eps(prediction: str, x0: Tensor, eps: Tensor, s: Schedule) -> Tensor:
    """The network target for ``prediction`` given clean data and the noise that corrupted it."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return s.alpha * eps - s.sigma * x0
    if prediction == "velocity":
        return s.d_alpha * x0 + s.d_sigma * eps
    raise GenflowError(f"unknown prediction {prediction!r}; choose from {', '.join(PREDICTIONS)}")


def diffusion_squared(s: Schedule) -> Tensor:
    """``g(t)^2 = 2 sigma^2 (sigma'/sigma - alpha'/alpha)``: the diffusion whose forward SDE
    has this path's marginals (Song et al. 2021, eq. 5; ``beta(t)`` for VP, ``d sigma^2/dt``
    for VE; Kingma et al. 2021, eq. 2 in log-SNR form)."""
    return 2 * s.sigma * s.d_sigma - 2 * s.sigma**2 * s.d_alpha / s.alpha


def half_log_snr(s: Schedule) -> float:
    """``lambda = log(alpha / sigma)`` at one time, ``-inf`` where alpha = 0, ``+inf`` where sigma = 0."""
    if s.alpha == 0:
        return -math.inf
    if s.sigma == 0:
        return math.inf
    return math.log(s.alpha) - math.log(s.sigma)


def option(default: object, help: str) -> object:
    """A process option: a dataclass field with its default and one line of help, which the
    command line turns into a flag."""
    return dataclasses.field(default=default, metadata={"help": help})


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    """Refuse an option value outside ``choices`` with a one-line message."""
    if value not in choices:
        raise GenflowError(f"{option} must be one of {', '.join(choices)}, not {value!r}")


def check_positive(option: str, value: float) -> None:
    if not value > 0:
        raise GenflowError(f"{option} must be positive, not {value!r}")


@dataclass(frozen=True)
class GaussianProcess(ABC):
    """Base of every process; subclasses are frozen dataclasses whose fields are its options."""

    name: ClassVar[str]
    summary: ClassVar[str]
    default_solver: ClassVar[str]
    default_grid: ClassVar[str] = "uniform"
    prediction: str = option("eps", "network output: eps, x0, v or velocity")

    def __post_init__(self) -> None:
        check_choice("prediction", self.prediction, PREDICTIONS)

    # --- the path ---------------------------------------------------------------------
    @abstractmethod
    def schedule(self, t: Tensor) -> Schedule:
        """``alpha``, ``sigma``, ``d_alpha``, ``d_sigma`` at times ``t`` (any shape)."""

    @property
    def t_min(self) -> float:
        """Smallest time at which the sampling field is finite; grids stay at or above it
        until their final point ``t = 0``."""
        return 0.0

    @property
    def discrete_steps(self) -> int | None:
        """``T`` for a process of discrete steps ``i = 1..T`` at ``t = i / T`` (DDPM), whose
        backbone takes the step's integer index as diffusers does; ``None`` for continuous time."""
        return None

    def coefficients(self, t: float) -> Schedule:
        """The schedule at one time, as floats, computed in float64."""
        return self.schedule(torch.tensor(t, dtype=torch.float64)).item()

    def noise_level(self, t: float) -> float:
        """EDM's noise level ``sigma(t) / alpha(t)`` at ``t`` (Karras et al. 2022, eq. 4: the path
        rescaled to ``x0 + level * eps``), the same for every process at the same signal-to-noise
        ratio; infinite where ``alpha(t) = 0``."""
        s = self.coefficients(t)
        return s.sigma / s.alpha if s.alpha > 0 else math.inf

    def time_of_noise_level(self, level: float) -> float:
        """The time whose :meth:`noise_level` is ``level`` (it grows with ``t`` on every path), by
        bisection in float64; 0 or 1 where ``level`` lies below or above the path's range."""
        low, high = 0.0, 1.0
        if level <= self.noise_level(low):
            return low
        if level >= self.noise_level(high):
            return high
        for _ in range(100):
            middle = (low + high) / 2
            low, high = (middle, high) if self.noise_level(middle) < level else (low, middle)
        return (low + high) / 2

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior ``N(0, sigma(1)^2 I)`` that sampling starts from."""
        return self.coefficients(1.0).sigma

    @property
    def supports_reverse_sde(self) -> bool:
        """Whether the reverse SDE has a usable diffusion at t = 1: ``g^2`` has ``alpha'/alpha``
        in it, which diverges where the path reaches pure noise (alpha(1) = 0)."""
        return self.coefficients(1.0).alpha > 1e-3

    @property
    def has_gaussian_conditionals(self) -> bool:
        """Whether ``x_t | x0 ~ N(alpha x0, sigma^2 I)`` holds for the trained model, which
        stochastic samplers (ancestral, reverse SDE, Langevin) rely on. Pairing noise with
        data other than independently (minibatch OT) keeps the velocity's ODE but not this."""
        return True

    # --- training ---------------------------------------------------------------------
    def sample_training_times(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Training times, uniform on ``[t_min, 1]`` unless a process says otherwise."""
        u = torch.rand(n, generator=generator, device=device)
        return self.t_min + (1 - self.t_min) * u

    def couple(self, x0: Tensor, eps: Tensor, groups: Tensor | None = None) -> Tensor:
        """Pair noise with data inside a minibatch (within each of ``groups``, e.g. the classes
        of a conditional run, when given); independent pairing by default."""
        return eps

    def corrupt(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """``x_t = alpha(t) x0 + sigma(t) eps``."""
        s = self.schedule(t).broadcast_to(x0)
        return s.alpha * x0 + s.sigma * eps

    def training_draws(
        self, x0: Tensor, generator: torch.Generator | None = None, groups: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The random part of a training step for the batch ``x0``: times from the training
        distribution and noise ``eps`` (coupled to ``x0`` where the process couples; ``groups``,
        the classes of a conditional batch, keep any coupling within a group). Drawn for the
        global batch, so that every process of a distributed run slices the same draws."""
        t = self.sample_training_times(x0.shape[0], generator, x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return t, self.couple(x0, eps, groups)

    def loss_at(self, model: Model, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Per-sample mean squared error of the prediction at ``x_t = alpha_t x0 + sigma_t eps``
        against its target, shape ``(B,)`` (Ho et al. 2020, eq. 14; Lipman et al. 2023, eq. 9)."""
        s = self.schedule(t).broadcast_to(x0)
        x_t = s.alpha * x0 + s.sigma * eps
        target = from_x0_eps(self.prediction, x0, eps, s)
        error = (model(x_t, t.to(x0.dtype)) - target) ** 2
        return error.flatten(1).mean(dim=1)

    def training_loss(
        self, model: Model, x0: Tensor, generator: torch.Generator | None = None, groups: Tensor | None = None
    ) -> Tensor:
        """Per-sample training loss of the batch ``x0``, shape ``(B,)``: :meth:`loss_at` at
        fresh :meth:`training_draws`."""
        return self.loss_at(model, x0, *self.training_draws(x0, generator, groups))

    # --- description ------------------------------------------------------------------
    def options(self) -> dict[str, object]:
        """The options that rebuild this process with :func:`genflow.make_process` (those that
        have an effect given the others)."""
        options = dataclasses.asdict(self)
        for name in self.inapplicable_options(options):
            del options[name]
        return options

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def option_fields(cls) -> list[dataclasses.Field]:
        """The options as dataclass fields: ``name``, ``type`` (its name), ``default`` and
        ``metadata["help"]``."""
        return list(dataclasses.fields(cls))

    @classmethod
    def inapplicable_options(cls, options: dict[str, object]) -> list[str]:
        """Options that are valid names but do nothing with the other options given."""
        return []
