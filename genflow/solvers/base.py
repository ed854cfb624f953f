"""What every solver shares: the model bound to a process, per-sample noise, the registry.

A solver is a plain function ``solver(model, x, times, noise, **options) -> x`` that
integrates from ``times[0]`` (prior) to ``times[-1]`` (data). It sees the network only
through :class:`BoundModel`, which turns any prediction into a denoised estimate, a
probability-flow velocity or reverse-SDE terms, so no solver branches on the process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from genflow.errors import GenflowError, IncompatibleError
from genflow.lazy import lazy_import
from genflow.processes.base import GaussianProcess, Model, Schedule, check_choice, diffusion_squared, to_x0_eps
from genflow.registry import Registry, unknown

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_import("torch")


class BoundModel:
    """A ``model(x, t) -> prediction`` bound to its process; counts evaluations (NFE)."""

    def __init__(self, model: Model, process: GaussianProcess) -> None:
        self.model = model
        self.process = process
        self.nfe = 0

    def coefficients(self, t: float) -> Schedule:
        return self.process.coefficients(t)

    def predict(self, x: Tensor, t: float) -> Tensor:
        """One model call at the time ``t`` for the whole batch; NFE counts the backbone
        evaluations it costs per sample (two for a guided model, which runs both halves). A
        model whose work depends on the time (a guided one) decides it from ``t`` itself, not
        from ``t`` rounded to the samples' dtype (``call_at``)."""
        evaluations = getattr(self.model, "backbone_evaluations", None)
        self.nfe += evaluations(t) if evaluations is not None else 1
        times = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
        call_at = getattr(self.model, "call_at", None)
        return call_at(x, times, t) if call_at is not None else self.model(x, times)

    def denoise(self, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        """``(x0_hat, eps_hat)``: the posterior means of data and noise given ``x`` at ``t``."""
        return to_x0_eps(self.process.prediction, self.predict(x, t), x, self.coefficients(t))

    def velocity(self, x: Tensor, t: float) -> Tensor:
        """Probability-flow ODE field ``dx/dt = alpha' x0_hat + sigma' eps_hat``."""
        if self.process.prediction == "velocity":
            return self.predict(x, t)
        s = self.coefficients(t)
        x0, eps = self.denoise(x, t)
        return s.d_alpha * x0 + s.d_sigma * eps

    def score(self, x: Tensor, t: float) -> Tensor:
        """``grad log p_t(x) = -eps_hat / sigma``."""
        return -self.denoise(x, t)[1] / self.coefficients(t).sigma

    def diffusion(self, form: str = "auto", scale: float = 1.0) -> Diffusion:
        """The reverse SDE's diffusion ``form`` (see :data:`DIFFUSIONS`) times ``scale``;
        ``auto`` is ``natural`` where the process keeps it finite, ``sigma`` otherwise."""
        if form == "auto":
            form = "natural" if self.process.supports_reverse_sde else "sigma"
        return Diffusion(form, scale)

    def reverse_sde_drift(self, x: Tensor, t: float, diffusion: Diffusion | None = None) -> tuple[Tensor, float]:
        """Drift ``v + 1/2 g^2 eps_hat / sigma`` of the reverse SDE and ``g^2`` at ``t``
        (``v - 1/2 g^2 score``: Song et al. 2021, eq. 6, written around the probability-flow
        velocity). Every ``g`` gives the same marginals; the natural one when not given."""
        s = self.coefficients(t)
        x0, eps = self.denoise(x, t)
        g2 = (diffusion or Diffusion("natural")).squared(s)
        return s.d_alpha * x0 + s.d_sigma * eps + 0.5 * g2 * eps / s.sigma, g2


DIFFUSIONS = ("auto", "natural", "sigma")
"""The reverse SDE's diffusion ``g(t)``: ``natural`` is the forward SDE's own (infinite at t=1
where alpha(1) = 0), ``sigma`` is ``g = sigma(t)`` (bounded), ``auto`` the first where finite."""


@dataclass(frozen=True)
class Diffusion:
    """A diffusion ``g(t) >= 0`` for the reverse SDE ``dx = [v + 1/2 g^2 eps_hat / sigma] dt
    + g dW`` (``dt < 0``), which has the path's marginals for every ``g``: in its Fokker-Planck
    equation the two ``g`` terms cancel, as ``p grad log p = grad p`` (Song et al. 2021, eq. 6
    and app. D.1; Karras et al. 2022, eq. 6).

    ``natural``: ``g^2 = 2 sigma^2 (sigma'/sigma - alpha'/alpha)``, the forward SDE's own
    diffusion (``beta(t)`` for VP, ``d sigma^2/dt`` for VE). ``sigma``: ``g = sigma(t)``,
    finite where the path reaches pure noise, zero at clean data. SiT (Ma et al. 2024) tunes
    the diffusion coefficient ``w_t`` of flows apart from training (its Tab. 2); the released
    sampler's default, ``--diffusion-form sigma``, takes ``w_t = sigma_t`` with drift
    ``v + w_t score`` and noise ``sqrt(2 w_t) dW``, i.e. ``g^2 = 2 sigma(t)`` in these terms.
    ``sigma`` here is instead ``g = sigma(t)``, ``g^2 = sigma(t)^2``: as bounded, and vanishing
    as fast as the noise it scales. ``scale`` multiplies ``g`` (``scale = 0``: the ODE).
    """

    form: str
    scale: float = 1.0

    def __post_init__(self) -> None:
        check_choice("diffusion", self.form, DIFFUSIONS[1:])

    def squared(self, s: Schedule) -> float:
        """``g(t)^2`` at one time, from the schedule there."""
        g2 = diffusion_squared(s) if self.form == "natural" else s.sigma**2
        return self.scale**2 * g2


class NoiseSource:
    """Gaussian noise drawn per sample: sample ``i`` has its own generator seeded ``seeds[i]``,
    so its noise never depends on the batch it is drawn in (EDM's per-image seeds, Karras et
    al. 2022). Noise is drawn on the CPU, which also makes it the same on every device, a
    block of draws per generator at a time so that the per-sample loop and the copy to the
    device are paid once per block rather than once per step."""

    AHEAD_PER_SAMPLE = 1 << 16
    """Numbers drawn ahead per sample (256 KB in float32), at most 32 draws. The depth of a
    block depends only on the sample shape, never on the batch, so streams match across
    batch sizes."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self._block: Tensor | None = None
        self._next = 0

    def __call__(self, shape: Sequence[int]) -> Tensor:
        """A ``(len(seeds), *shape)`` standard normal tensor."""
        shape = tuple(shape)
        if self._block is None or self._block.shape[2:] != shape or self._next == len(self._block):
            self._refill(shape)
        z = self._block[self._next]
        self._next += 1
        return z

    def _refill(self, shape: tuple[int, ...]) -> None:
        depth = max(1, min(32, self.AHEAD_PER_SAMPLE // max(1, math.prod(shape))))
        draws = [torch.randn((depth, *shape), generator=g, dtype=torch.float32) for g in self.generators]
        self._block = torch.stack(draws, dim=1).to(device=self.device, dtype=self.dtype)
        self._next = 0

    def like(self, x: Tensor) -> Tensor:
        return self(x.shape[1:])


Noise = Callable[["Tensor"], "Tensor"]
"""``noise(x) -> z``: standard normal noise shaped like ``x`` (``NoiseSource.like``)."""


@dataclass(frozen=True)
class Option:
    """A solver option: its default (a number, or a name for a :func:`choice`), a check on
    its value and what the check requires. The command line's flag takes the default's type."""

    default: float | str
    check: Callable[[float | str], bool]
    requirement: str
    help: str

    def parse(self, solver: str, name: str, value: object) -> float | str:
        """``value`` as this option's type (a number, or one of a choice's names), checked."""
        choice = isinstance(self.default, str)
        parsed = value if choice else _as_number(solver, name, value)
        if not self.check(parsed):
            raise GenflowError(f"solver {solver!r}: {name} must be {self.requirement}, not {value!r}")
        return parsed if choice else type(self.default)(parsed)


def non_negative(help: str, default: float) -> Option:
    return Option(default, lambda v: v >= 0, ">= 0", help)


def unit_interval(help: str, default: float) -> Option:
    return Option(default, lambda v: 0 <= v <= 1, "in [0, 1]", help)


def positive(help: str, default: float) -> Option:
    return Option(default, lambda v: v > 0, "> 0", help)


def at_least_one(help: str, default: int) -> Option:
    return Option(default, lambda v: v >= 1 and float(v).is_integer(), "a whole number >= 1", help)


def choice(help: str, default: str, choices: Sequence[str]) -> Option:
    """An option whose value is one of ``choices`` (names, the first line of errors lists them)."""
    allowed = tuple(choices)
    return Option(default, lambda v: isinstance(v, str) and v in allowed, f"one of {', '.join(allowed)}", help)


def reverse_sde_options() -> dict[str, Option]:
    """The options of every reverse-SDE solver: which diffusion ``g(t)``, and a scale on it."""
    return {
        "diffusion": choice(
            "reverse-SDE noise g(t): natural (the forward SDE's), sigma (g = sigma(t), finite at pure noise) "
            "or auto (natural where finite, else sigma)",
            "auto",
            DIFFUSIONS,
        ),
        "diffusion_scale": non_negative(
            "multiplies g; at 0 the Euler-Maruyama step is an Euler step of the probability-flow ODE", 1.0
        ),
    }


@dataclass(frozen=True)
class SolverSpec:
    """A registered solver: its function, one line of summary and its options.

    ``needs_reverse_sde``: it integrates the reverse SDE (and takes :func:`reverse_sde_options`);
    ``stochastic``: it adds fresh noise whatever its options; ``adaptive``: it picks its steps.
    """

    name: str
    fn: Callable[..., Tensor]
    summary: str
    options: Mapping[str, Option] = field(default_factory=dict)
    needs_reverse_sde: bool = False
    stochastic: bool = False
    adaptive: bool = False

    def resolve_options(self, given: Mapping[str, object]) -> dict[str, float | str]:
        """Defaults overridden by ``given``; unknown or invalid options are errors."""
        resolved: dict[str, float | str] = {name: option.default for name, option in self.options.items()}
        for name, value in given.items():
            if name not in self.options:
                if not self.options:
                    raise GenflowError(f"solver {self.name!r} takes no options, but {name!r} was given")
                raise unknown(f"option for solver {self.name!r}:", name, self.options)
            resolved[name] = self.options[name].parse(self.name, name, value)
        return resolved

    def fixed_steps(self, steps: int | None) -> int | None:
        """``steps`` for a fixed-step solver; ``None`` for an adaptive one, which picks its own
        (a count would only add times it must pass through: more evaluations, not fewer)."""
        return None if self.adaptive else steps

    def describe_steps(self, steps: int, grid: str) -> str:
        """``20 steps (uniform)``, or ``adaptive steps``."""
        return "adaptive steps" if self.adaptive else f"{steps} steps ({grid})"

    def injects_noise(self, options: Mapping[str, float | str]) -> bool:
        """Whether, with these options, sampling adds fresh noise (eta > 0 for the DDIM family)."""
        return self.stochastic or options.get("eta", 0.0) > 0

    def check_process(self, process: GaussianProcess, options: Mapping[str, float | str]) -> None:
        """Fail before sampling when the process lacks a capability this solver needs."""
        if self.injects_noise(options) and not process.has_gaussian_conditionals:
            raise IncompatibleError(
                f"solver {self.name!r} adds noise assuming x_t | x0 ~ N(alpha x0, sigma^2 I), which minibatch-OT "
                f"coupling breaks; sample process {process.name!r} with a deterministic solver "
                "(euler, heun, dpm++2m, dpm++3m, unipc, dopri5, ddim with eta=0)"
            )
        if options.get("diffusion") == "natural" and not process.supports_reverse_sde:
            raise IncompatibleError(
                f"solver {self.name!r}: the natural diffusion g^2 = 2 sigma^2 (sigma'/sigma - alpha'/alpha) blows up "
                f"at t=1 for process {process.name!r} (alpha(1) = {process.coefficients(1.0).alpha:.2g}); "
                "use --diffusion sigma (or auto, the default)"
            )


def _as_number(solver: str, name: str, value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise GenflowError(f"solver {solver!r}: {name} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise GenflowError(f"solver {solver!r}: {name} must be finite, not {value!r}")
    return number


def steps(times: Tensor) -> Iterator[tuple[int, float, float]]:
    """``(i, t_i, t_{i+1})`` for each step of a decreasing time grid."""
    values = times.tolist()
    for i in range(len(values) - 1):
        yield i, values[i], values[i + 1]


SOLVERS: Registry[SolverSpec] = Registry("solver")


def register(spec: SolverSpec) -> SolverSpec:
    return SOLVERS.add(spec.name, spec)
