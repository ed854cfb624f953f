"""Solver accuracy against NFE with the exact Gaussian-mixture denoiser: genflow beside diffusers
and k-diffusion, on the VP SDE and on rectified flow.

What: for every deterministic genflow solver on every time grid, and for diffusers' and
k-diffusion's samplers (optional; a peer that is not installed is skipped with a printed line),
the error of the sample against the exact probability-flow ODE endpoint at NFE 4, 6, 8, 10, 15
and 20. Per sample the error is the RMS over dimensions of ``x - x_ref``; the tables give the
RMS over samples and the median over samples (the mixture's modes are narrow, so the few samples
that change mode dominate the RMS; the median shows the typical sample).

How: the data is an 8-component isotropic Gaussian mixture in 64 = 8x8 dimensions (means with
N(0, 1) entries, std 0.1), whose posterior mean is exact (``GaussianMixture.exact_model``); all
in float64; every method starts from the same prior draws ``x1``. The reference is dpm++2m at
700 and 1400 steps equally spaced in log noise level down to 1e-6 (then the final denoising
step), Richardson-extrapolated (third order), checked against the same from 350 and 700 steps
(printed). On the VP SDE every grid but the uniform one stops at t_min = 1e-3 and ends with a
denoising step; the error that alone costs is printed as a floor. NFE is counted by
``BoundModel.nfe`` for every method; each method takes the most steps whose NFE fits the budget
(Heun-type: 2N - 1 for N steps), and a cell whose NFE falls short of the budget shows it.
diffusers runs its own schedules (``linspace`` spacing, Karras sigmas, Lu's log-SNR lambdas,
flow sigmas, or genflow's grids where a scheduler takes custom sigmas); its VP schedule is
``trained_betas`` with ``alphas_cumprod[k] = alpha(t)^2`` at ``t = (k + 1) / 1000`` and the
exact model is evaluated at the time of the scheduler's own sigma. k-diffusion runs on genflow's
grids in VE coordinates ``x / alpha``, ``sigma / alpha``; it cannot start at the infinite noise
level of rectified flow at t = 1, so there its first step is a DDIM step to the grid's second
time (one NFE, counted: the same first-order step every genflow multistep solver takes from
t = 1).

Run (a few minutes on two busy cores; ``--quick``: a smoke run of about half a minute):

    python benchmarks/bench_solvers.py --out benchmarks/results/solvers-exact-mixture
    python benchmarks/bench_solvers.py --quick

k-diffusion: ``pip install --no-deps k-diffusion && pip install torchsde``; its package
``__init__`` imports its training stack (clip, clean-fid, ...), so only ``k_diffusion.sampling``
is loaded here.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genflow import SOLVERS, make_process
from genflow.processes.base import GaussianProcess
from genflow.sampling.grids import GRIDS, NOISE_LEVEL_MAX, NOISE_LEVEL_MIN, make_grid, noise_level
from genflow.solvers import BoundModel
from genflow.toy import GaussianMixture

BUDGETS = (4, 6, 8, 10, 15, 20)
HEADLINE_NFE = 10
T_TRAIN = 1000
DIM, COMPONENTS, STD = 64, 8, 0.1
REFERENCE_STEPS = 700
REFERENCE_LEVEL_MIN = 1e-6

GRID_NOTES = """Grids: genflow's `uniform`, `karras`, `logsnr` (k-diffusion runs on the same times, in VE
coordinates); diffusers' own `linspace` (timesteps 999 down to 1000/N, so its last step is a
denoising step from t ~ 1/N like genflow's uniform grid on VP), `karras` and `lu-lambdas`
(use_karras_sigmas / use_lu_lambdas, between the noise levels of t = 1/1000 and t = 1), `flow-sigmas`
(use_flow_sigmas, prediction_type flow_prediction: DPMSolverMultistep, DEIS and DPMSolverSinglestep
start at t = 0.999 with the prior draw, UniPC at 1 - 1e-6), FlowMatch schedulers' `default`
(linspace from 1 to 1/1000, then 0), and genflow's grids passed as `sigmas` where a scheduler takes
them (UniPC and FlowMatchEuler with flow sigmas).
"""

Run = Callable[[int], tuple[Tensor, int]]
"""``run(steps) -> (x0, nfe)``."""


@dataclass
class Problem:
    """A process with the mixture's exact model, the shared prior draws and the reference."""

    label: str
    process: GaussianProcess
    mixture: GaussianMixture
    x1: Tensor
    reference: Tensor = field(default=None)  # type: ignore[assignment]
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        """Print a check's result and keep it for the report."""
        print(f"[{self.label}] {text}")
        self.notes.append(text)

    def bound(self) -> BoundModel:
        return BoundModel(self.mixture.exact_model(self.process), self.process)


@dataclass(frozen=True)
class Method:
    family: str  # genflow, diffusers or k-diffusion
    name: str
    grid: str
    run: Run


# --- problem and reference -----------------------------------------------------------------


def make_mixture(seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture(torch.randn(COMPONENTS, DIM, generator=g, dtype=torch.float64), std=STD)


def times_at_levels(process: GaussianProcess, levels: Tensor) -> Tensor:
    """The times whose noise level ``sigma / alpha`` is ``levels``, by bisection on [0, 1]
    (genflow's grids bisect on [t_min, 1]; the reference goes below t_min)."""
    levels = torch.as_tensor(levels, dtype=torch.float64)
    low, high = torch.zeros_like(levels), torch.ones_like(levels)
    for _ in range(64):
        mid = (low + high) / 2
        above = noise_level(process, mid) > levels
        high, low = torch.where(above, mid, high), torch.where(above, low, mid)
    return torch.where(levels > 0, (low + high) / 2, torch.zeros_like(levels))


@lru_cache(maxsize=100_000)
def time_at_level(process: GaussianProcess, level: float) -> float:
    return float(times_at_levels(process, torch.tensor(level, dtype=torch.float64)))


def reference_grid(process: GaussianProcess, steps: int) -> Tensor:
    """t = 1, then noise levels equally spaced in log from min(s(1), 1e4) to 1e-6, then t = 0."""
    top = min(float(noise_level(process, torch.tensor(1.0, dtype=torch.float64))), 1e4)
    levels = torch.logspace(math.log10(top), math.log10(REFERENCE_LEVEL_MIN), steps, dtype=torch.float64)
    inner = times_at_levels(process, levels[1:])
    return torch.cat([inner.new_ones(1), inner, inner.new_zeros(1)])


def solve_dpmpp_2m(problem: Problem, times: Tensor) -> Tensor:
    return SOLVERS.get("dpm++2m").fn(problem.bound(), problem.x1.clone(), times, noise=None)


def richardson(problem: Problem, steps: int, coarse: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(4 x(2N) - x(N)) / 3`` from dpm++2m at N and 2N log-SNR steps (third order), and x(2N)."""
    coarse = solve_dpmpp_2m(problem, reference_grid(problem.process, steps)) if coarse is None else coarse
    fine = solve_dpmpp_2m(problem, reference_grid(problem.process, 2 * steps))
    return (4 * fine - coarse) / 3, fine


def make_problem(label: str, process: GaussianProcess, n: int, reference_steps: int) -> Problem:
    g = torch.Generator().manual_seed(1)
    x1 = process.prior_std * torch.randn(n, DIM, generator=g, dtype=torch.float64)
    problem = Problem(label, process, make_mixture(), x1)
    check, middle = richardson(problem, reference_steps // 2)
    problem.reference, _ = richardson(problem, reference_steps, coarse=middle)
    diff = per_sample_error(check, problem.reference)
    problem.note(
        f"reference: dpm++2m at {reference_steps} and {2 * reference_steps} log-SNR steps, Richardson-extrapolated; "
        f"the same from {reference_steps // 2} and {reference_steps} differs by max {float(diff.max()):.1e}, RMS {rms(diff):.1e} "
        "(third order: the reference's own error is about 8x smaller)"
    )
    return problem


def t_min_floor(problem: Problem, steps: int) -> tuple[float, float] | None:
    """RMS and median error of an accurate solve that stops at ``t_min`` and ends with the
    denoising step, as every grid but VP's uniform one does: no solver can beat it."""
    t_min = problem.process.t_min
    if t_min == 0:
        return None
    top = float(noise_level(problem.process, torch.tensor(1.0, dtype=torch.float64)))
    bottom = float(noise_level(problem.process, torch.tensor(t_min, dtype=torch.float64)))
    levels = torch.logspace(math.log10(top), math.log10(bottom), steps, dtype=torch.float64)
    times = torch.cat(
        [
            torch.ones(1, dtype=torch.float64),
            times_at_levels(problem.process, levels[1:-1]),
            torch.tensor([t_min, 0.0], dtype=torch.float64),
        ]
    )
    errors = per_sample_error(solve_dpmpp_2m(problem, times), problem.reference)
    return rms(errors), float(errors.median())


# --- errors ---------------------------------------------------------------------------------


def per_sample_error(x: Tensor, reference: Tensor) -> Tensor:
    return ((x - reference) ** 2).mean(dim=1).sqrt()


def rms(errors: Tensor) -> float:
    return float((errors**2).mean().sqrt())


def nfe_line(run: Run) -> tuple[int, int]:
    """``(per_step, offset)`` with ``nfe(steps) = per_step * steps + offset``, from 2 and 3 steps."""
    _, at_two = run(2)
    _, at_three = run(3)
    per_step = max(1, at_three - at_two)
    return per_step, at_two - 2 * per_step


def fit_budget(run: Run, budget: int, line: tuple[int, int]) -> tuple[Tensor, int, int] | None:
    """The most steps whose measured NFE is at most ``budget``: ``(x0, nfe, steps)``, or None.
    Starts from the NFE line's guess, then steps down or up until the measured NFE fits."""
    per_step, offset = line
    steps = max(1, (budget - offset) // per_step)
    while True:
        x, nfe = run(steps)
        if nfe <= budget:
            break
        if steps == 1:
            return None
        steps -= 1
    while nfe + per_step <= budget:
        x_more, nfe_more = run(steps + 1)
        if nfe_more > budget:
            break
        steps, x, nfe = steps + 1, x_more, nfe_more
    return x, nfe, steps


# --- genflow -------------------------------------------------------------------------------


def genflow_variants() -> list[tuple[str, dict[str, float]]]:
    """Deterministic fixed-step solvers with their default options, and unipc at order 2 and 3."""
    variants = []
    for name in SOLVERS.names():
        spec = SOLVERS.get(name)
        options = spec.resolve_options({})
        if spec.adaptive or spec.needs_reverse_sde or spec.injects_noise(options):
            continue
        if "order" in spec.options:
            for order in (2, 3):
                if spec.options["order"].check(order):
                    variants.append((f"{name}(order={order})", {"order": order}))
        else:
            variants.append((name, {}))
    return variants


def genflow_run(problem: Problem, solver: str, grid: str, options: dict[str, float]) -> Run:
    fn = SOLVERS.get(solver).fn

    def run(steps: int) -> tuple[Tensor, int]:
        bound = problem.bound()
        x = fn(bound, problem.x1.clone(), make_grid(grid, steps, problem.process), noise=None, **options)
        return x, bound.nfe

    return run


def genflow_methods(problem: Problem) -> list[Method]:
    return [
        Method("genflow", label, grid, genflow_run(problem, label.split("(")[0], grid, options))
        for label, options in genflow_variants()
        for grid in GRIDS.names()
    ]


def dopri5_rows(problem: Problem) -> list[dict]:
    """dopri5 at its own NFE for a few tolerances (grid [1, 0])."""
    rows = []
    for tol in (1e-2, 1e-3, 1e-4):
        bound = problem.bound()
        grid = torch.tensor([1.0, 0.0], dtype=torch.float64)
        x = SOLVERS.get("dopri5").fn(bound, problem.x1.clone(), grid, noise=None, rtol=tol, atol=tol)
        errors = per_sample_error(x, problem.reference)
        rows.append(
            {
                "process": problem.label,
                "family": "genflow",
                "method": f"dopri5(tol={tol:g})",
                "grid": "adaptive",
                "nfe": bound.nfe,
                "rms": rms(errors),
                "median": float(errors.median()),
            }
        )
    return rows


# --- diffusers -----------------------------------------------------------------------------


def vp_trained_betas(process: GaussianProcess) -> list[float]:
    """Betas with ``alphas_cumprod[k] = alpha((k + 1) / 1000)^2``."""
    t = torch.arange(1, T_TRAIN + 1, dtype=torch.float64) / T_TRAIN
    abar = process.schedule(t).alpha ** 2
    previous = torch.cat([abar.new_ones(1), abar[:-1]])
    return (1 - abar / previous).tolist()


def diffusers_times(problem: Problem, sigmas: Tensor, flow: bool) -> list[float]:
    """Process times of a scheduler's sigmas: t itself on a flow schedule, else VE noise levels."""
    sigmas = sigmas.to(torch.float64)
    return (sigmas if flow else times_at_levels(problem.process, sigmas)).tolist()


def diffusers_run(
    problem: Problem, make: Callable[[], object], flow: bool, sigmas: Callable[[int], list[float]] | None = None
) -> Run:
    """Drive a diffusers scheduler with a plain loop; the exact model is evaluated at the time of
    the scheduler's current sigma and returns eps (VP) or the flow velocity (rectified flow)."""

    def run(steps: int) -> tuple[Tensor, int]:
        scheduler = make()
        if sigmas is None:
            scheduler.set_timesteps(steps)
        else:
            scheduler.set_timesteps(sigmas=np.array(sigmas(steps)))
        bound = problem.bound()
        x = problem.x1.clone() * float(getattr(scheduler, "init_noise_sigma", 1.0))
        times = diffusers_times(problem, scheduler.sigmas, flow)
        for t, timestep in zip(times, scheduler.timesteps, strict=False):
            model_input = scheduler.scale_model_input(x, timestep) if hasattr(scheduler, "scale_model_input") else x
            output = bound.velocity(model_input, t) if flow else bound.denoise(model_input, t)[1]
            x = scheduler.step(output, timestep, x).prev_sample
        return x, bound.nfe

    return run


def diffusers_methods(problem: Problem) -> list[Method]:
    try:
        import diffusers
        from diffusers.utils import logging
    except ImportError:
        problem.note("diffusers is not installed: skipping its schedulers")
        return []
    logging.set_verbosity_error()  # its notes on lower_order_final for some step counts
    flow = problem.process.prediction == "velocity"
    return flow_schedulers(problem, diffusers) if flow else vp_schedulers(problem, diffusers)


def multistep_schedulers(d: types.ModuleType) -> list[tuple[str, type, dict]]:
    """diffusers' multistep and singlestep exponential integrators: (name, class, options)."""
    return [
        ("DPMSolverMultistep(order=2)", d.DPMSolverMultistepScheduler, {"solver_order": 2}),
        ("DPMSolverMultistep(order=3)", d.DPMSolverMultistepScheduler, {"solver_order": 3}),
        ("UniPCMultistep(order=2,bh2)", d.UniPCMultistepScheduler, {"solver_order": 2}),
        ("UniPCMultistep(order=3,bh2)", d.UniPCMultistepScheduler, {"solver_order": 3}),
        ("DEISMultistep(order=3)", d.DEISMultistepScheduler, {"solver_order": 3}),
        ("DPMSolverSinglestep(order=2)", d.DPMSolverSinglestepScheduler, {"solver_order": 2}),
    ]


def vp_schedulers(problem: Problem, d: types.ModuleType) -> list[Method]:
    base = {"num_train_timesteps": T_TRAIN, "trained_betas": vp_trained_betas(problem.process)}
    configs = [
        *multistep_schedulers(d),
        ("EulerDiscrete", d.EulerDiscreteScheduler, {}),
        ("HeunDiscrete", d.HeunDiscreteScheduler, {}),
    ]
    spacings = [("linspace", {}), ("karras", {"use_karras_sigmas": True})]
    methods = []
    for name, cls, options in configs:
        for grid, extra in spacings + ([("lu-lambdas", {"use_lu_lambdas": True})] if "DPMSolverMultistep" in name else []):
            make = lambda cls=cls, kw=base | options | extra: cls(**kw)
            methods.append(Method("diffusers", name, grid, diffusers_run(problem, make, flow=False)))
    return methods


def flow_schedulers(problem: Problem, d: types.ModuleType) -> list[Method]:
    flow = {"num_train_timesteps": T_TRAIN, "prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 1.0}
    multistep = multistep_schedulers(d)
    methods = [
        Method("diffusers", name, "flow-sigmas", diffusers_run(problem, lambda c=cls, kw=flow | o: c(**kw), flow=True))
        for name, cls, o in multistep
    ]
    for name, cls in (
        ("FlowMatchEulerDiscrete", d.FlowMatchEulerDiscreteScheduler),
        ("FlowMatchHeunDiscrete", d.FlowMatchHeunDiscreteScheduler),
    ):
        methods.append(
            Method("diffusers", name, "default", diffusers_run(problem, lambda c=cls: c(num_train_timesteps=T_TRAIN), flow=True))
        )
    custom = [
        ("UniPCMultistep(order=2,bh2)", lambda: d.UniPCMultistepScheduler(**flow, solver_order=2)),
        ("UniPCMultistep(order=3,bh2)", lambda: d.UniPCMultistepScheduler(**flow, solver_order=3)),
        ("FlowMatchEulerDiscrete", lambda: d.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T_TRAIN)),
    ]
    for name, make in custom:  # schedulers that take sigmas: genflow's grids, less the final t = 0
        for grid in GRIDS.names():
            grid_sigmas = lambda steps, grid=grid: make_grid(grid, steps, problem.process)[:-1].tolist()
            methods.append(
                Method("diffusers", name, f"{grid} (genflow's)", diffusers_run(problem, make, flow=True, sigmas=grid_sigmas))
            )
    return methods


def check_diffusers_mapping(problem: Problem, steps: int = 10) -> None:
    """diffusers' DPM-Solver++(2M) on its timesteps against genflow's dpm++2m on the same times."""
    try:
        from diffusers import DPMSolverMultistepScheduler
    except ImportError:
        return
    flow = problem.process.prediction == "velocity"
    options = (
        {"prediction_type": "flow_prediction", "use_flow_sigmas": True}
        if flow
        else {"trained_betas": vp_trained_betas(problem.process)}
    )
    make = lambda: DPMSolverMultistepScheduler(num_train_timesteps=T_TRAIN, **options)
    theirs, _ = diffusers_run(problem, make, flow)(steps)
    scheduler = make()
    scheduler.set_timesteps(steps)
    times = torch.tensor(diffusers_times(problem, scheduler.sigmas, flow), dtype=torch.float64)
    ours = SOLVERS.get("dpm++2m").fn(problem.bound(), problem.x1.clone(), times, noise=None)
    gap = per_sample_error(ours, theirs)
    problem.note(
        f"mapping check: diffusers DPMSolverMultistep(order=2) on its {steps} default timesteps against genflow's dpm++2m on the same "
        f"times differ per sample by median {float(gap.median()):.1e}, max {float(gap.max()):.1e} (diffusers keeps its schedule in float32)"
    )


# --- k-diffusion ---------------------------------------------------------------------------


def import_k_sampling() -> types.ModuleType | None:
    """``k_diffusion.sampling`` without the package ``__init__`` (which imports clip, clean-fid...)."""
    try:
        return importlib.import_module("k_diffusion.sampling")
    except ImportError:
        pass
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or spec.submodule_search_locations is None:
        return None
    sys.modules.pop("k_diffusion", None)
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = package
    try:
        return importlib.import_module("k_diffusion.sampling")
    except ImportError as error:
        print(f"k_diffusion.sampling cannot be imported ({error}): skipping k-diffusion")
        return None


def k_denoiser(problem: Problem, bound: BoundModel) -> Callable[[Tensor, Tensor], Tensor]:
    """k-diffusion's ``D(x_ve, sigma_ve)``: ``x0_hat`` at ``x = alpha x_ve`` and the time of ``sigma_ve``."""

    def denoise(x_ve: Tensor, sigma: Tensor) -> Tensor:
        t = time_at_level(problem.process, float(sigma.reshape(-1)[0]))
        return bound.denoise(problem.process.coefficients(t).alpha * x_ve, t)[0]

    return denoise


def k_start(problem: Problem, bound: BoundModel, times: Tensor) -> tuple[Tensor, Tensor]:
    """``(x_ve, sigmas)`` to hand to k-diffusion; where ``s(1)`` is infinite, after a DDIM step
    (one NFE) to ``times[1]``."""
    x = problem.x1.clone()
    if problem.process.coefficients(1.0).alpha == 0:
        x = SOLVERS.get("ddim").fn(bound, x, times[:2], noise=None)
        times = times[1:]
    sigmas = noise_level(problem.process, times)
    return x / problem.process.coefficients(float(times[0])).alpha, sigmas


def k_run(problem: Problem, sampler: Callable, grid: str, options: dict) -> Run:
    def run(steps: int) -> tuple[Tensor, int]:
        bound = problem.bound()
        x_ve, sigmas = k_start(problem, bound, make_grid(grid, steps, problem.process))
        if len(sigmas) == 1:
            return x_ve, bound.nfe
        return sampler(k_denoiser(problem, bound), x_ve, sigmas, disable=True, **options), bound.nfe

    return run


def k_dpm_fast_run(problem: Problem, k: types.ModuleType) -> Run:
    """DPM-Solver-fast from the top noise level of genflow's karras/logsnr grids to their bottom
    one, then the final denoising step; ``steps`` is the NFE here, all of them counted."""
    top = min(float(noise_level(problem.process, torch.tensor(1.0, dtype=torch.float64))), NOISE_LEVEL_MAX)
    bottom = max(float(noise_level(problem.process, torch.tensor(problem.process.t_min, dtype=torch.float64))), NOISE_LEVEL_MIN)
    ends = torch.tensor(
        [1.0, time_at_level(problem.process, top), time_at_level(problem.process, bottom), 0.0], dtype=torch.float64
    )

    def run(nfe: int) -> tuple[Tensor, int]:
        bound = problem.bound()
        x_ve, sigmas = k_start(problem, bound, ends)
        left = nfe - 1 - bound.nfe
        if left < 1:
            return x_ve, nfe + 1  # no evaluation left for the solver: over budget
        denoise = k_denoiser(problem, bound)
        sigma_max, sigma_min = float(sigmas[0]), float(sigmas[-2])
        x_ve = k.sample_dpm_fast(denoise, x_ve, sigma_min, sigma_max, left, disable=True)
        return denoise(x_ve, x_ve.new_tensor([sigma_min])), bound.nfe

    return run


def k_methods(problem: Problem) -> list[Method]:
    k = import_k_sampling()
    if k is None:
        problem.note("k-diffusion is not installed: skipping it (pip install --no-deps k-diffusion && pip install torchsde)")
        return []
    zero_noise = {"eta": 0.0, "noise_sampler": lambda sigma, sigma_next: 0.0}
    samplers = [
        ("sample_euler", k.sample_euler, {}),
        ("sample_heun", k.sample_heun, {}),
        ("sample_dpm_2", k.sample_dpm_2, {}),
        ("sample_lms(order=4)", k.sample_lms, {}),
        ("sample_dpmpp_2m", k.sample_dpmpp_2m, {}),
        ("sample_dpmpp_2s_ancestral(eta=0)", k.sample_dpmpp_2s_ancestral, zero_noise),
        ("sample_dpmpp_3m_sde(eta=0)", k.sample_dpmpp_3m_sde, zero_noise),
    ]
    methods = [
        Method("k-diffusion", name, grid, k_run(problem, fn, grid, options))
        for name, fn, options in samplers
        for grid in GRIDS.names()
    ]
    methods.append(Method("k-diffusion", "sample_dpm_fast", "own log-SNR", k_dpm_fast_run(problem, k)))
    return methods


# --- the sweep and its tables ---------------------------------------------------------------


def measure(problem: Problem, method: Method, budgets: tuple[int, ...]) -> list[dict]:
    rows = []
    try:
        line = nfe_line(method.run)
    except Exception as error:  # noqa: BLE001 - a peer that fails: say so, go on
        print(f"  {method.family} {method.name} [{method.grid}]: {type(error).__name__}: {error}")
        return rows
    for budget in budgets:
        try:
            fitted = fit_budget(method.run, budget, line)
        except Exception as error:  # noqa: BLE001 - a peer that fails at some step count: say so, go on
            print(f"  {method.family} {method.name} [{method.grid}] at NFE {budget}: {type(error).__name__}: {error}")
            continue
        if fitted is None:
            continue
        x, nfe, steps = fitted
        errors = per_sample_error(x, problem.reference)
        finite = bool(torch.isfinite(errors).all())
        rows.append({
            "process": problem.label, "family": method.family, "method": method.name, "grid": method.grid,
            "budget": budget, "nfe": nfe, "steps": steps,
            "rms": rms(errors) if finite else math.inf, "median": float(errors.median()) if finite else math.inf,
        })  # fmt: skip
    return rows


def cell(row: dict | None, key: str) -> str:
    if row is None:
        return "-"
    text = f"{row[key]:.1e}"
    return text if row["nfe"] == row["budget"] else f"{text} ({row['nfe']})"


def results_table(rows: list[dict], budgets: tuple[int, ...], key: str) -> str:
    keys = list(dict.fromkeys((r["family"], r["method"], r["grid"]) for r in rows))
    index = {(r["family"], r["method"], r["grid"], r["budget"]): r for r in rows}
    lines = [
        "| family | method | grid | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
        "|---|---|---|" + "---|" * len(budgets),
    ]
    for family, method, grid in keys:
        cells = [cell(index.get((family, method, grid, b)), key) for b in budgets]
        lines.append(f"| {family} | {method} | {grid} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best(rows: list[dict], budget: int, key: str, genflow: bool) -> dict | None:
    pool = [r for r in rows if r["budget"] == budget and (r["family"] == "genflow") == genflow]
    return min(pool, key=lambda r: r[key], default=None)


def best_table(rows: list[dict], budgets: tuple[int, ...]) -> str:
    lines = [
        "| NFE | error | best genflow | value | best peer | value | peer / genflow |",
        "|---|---|---|---|---|---|---|",
    ]
    for budget in budgets:
        for key in ("rms", "median"):
            ours, theirs = best(rows, budget, key, True), best(rows, budget, key, False)
            if ours is None:
                continue
            name = lambda r: f"{r['family']} {r['method']} [{r['grid']}]" if r else "-"
            ratio = f"{theirs[key] / ours[key]:.2f}" if theirs and ours[key] > 0 else "-"
            lines.append(
                f"| {budget} | {key} | {name(ours)} | {ours[key]:.2e} | {name(theirs)} | {theirs[key] if theirs else math.nan:.2e} | {ratio} |"
            )
    return "\n".join(lines)


def report(problem: Problem, rows: list[dict], extra: list[dict], budgets: tuple[int, ...]) -> str:
    dopri = "\n".join(f"- {r['method']}: NFE {r['nfe']}, RMS {r['rms']:.1e}, median {r['median']:.1e}" for r in extra)
    notes = "".join(f"- {text}\n" for text in problem.notes)
    return (
        f"## {problem.label}\n\n{notes}\n### Best genflow against best peer\n\n{best_table(rows, budgets)}\n\n"
        f"### RMS error over samples\n\n{results_table(rows, budgets, 'rms')}\n\n"
        f"### Median per-sample error\n\n{results_table(rows, budgets, 'median')}\n\n"
        f"### dopri5 at its own NFE\n\n{dopri}\n"
    )


def run_problem(problem: Problem, budgets: tuple[int, ...], floor_steps: int) -> tuple[str, list[dict]]:
    check_diffusers_mapping(problem)
    floor = t_min_floor(problem, floor_steps)
    if floor is not None:
        problem.note(
            f"floor: an accurate solve to t_min = {problem.process.t_min:g} plus the final denoising step, as every grid "
            f"but the uniform one ends, is off by RMS {floor[0]:.1e}, median {floor[1]:.1e}"
        )
    methods = genflow_methods(problem) + diffusers_methods(problem) + k_methods(problem)
    rows = [row for method in methods for row in measure(problem, method, budgets)]
    extra = dopri5_rows(problem)
    text = report(problem, rows, extra, budgets)
    print(text)
    return text, rows + extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few samples, two budgets, coarse reference")
    parser.add_argument("--n", type=int, default=500, help="prior draws (samples) per method")
    parser.add_argument("--out", type=Path, help="write OUT.md and OUT.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    budgets, n, reference_steps = ((4, 10), 32, 100) if args.quick else (BUDGETS, args.n, REFERENCE_STEPS)
    start = time.perf_counter()
    problems = [("VP SDE (sde, vp)", make_process("sde", sde="vp")), ("rectified flow", make_process("rectified-flow"))]
    sections, rows = [], []
    for label, process in problems:
        text, process_rows = run_problem(make_problem(label, process, n, reference_steps), budgets, reference_steps)
        sections.append(text)
        rows += process_rows
    seconds = time.perf_counter() - start
    print(f"total {seconds:.0f} s")
    if args.out:
        head = (
            f"# Solvers against the exact ODE endpoint, Gaussian mixture ({COMPONENTS} components, {DIM} dims, std {STD}), "
            f"{n} samples, float64\n\n`python benchmarks/bench_solvers.py --out {args.out}` ({seconds:.0f} s). "
            "Cells: error (the NFE used where it is below the budget).\n\n" + GRID_NOTES + "\n"
        )
        args.out.with_suffix(".md").write_text(head + "\n".join(sections))
        args.out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
