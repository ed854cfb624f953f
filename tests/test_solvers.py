"""Every solver with every process it can serve, against closed-form answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import BLOB_SAMPLES, energy_distance, four_blobs

import genflow
from genflow import SOLVERS, GenflowError, IncompatibleError, UnknownNameError, make_process
from genflow.sampling.grids import make_grid
from genflow.solvers import BoundModel
from genflow.toy import GaussianMixture

N_SAMPLES = BLOB_SAMPLES  # the size of the blobs_floor fixture's data


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("solver", SOLVERS.names())
def test_every_solver_recovers_the_mixture_with_every_process(process, solver, blobs_floor):
    data, floor = blobs_floor
    model = four_blobs().exact_model(process)
    # Reverse-SDE solvers too: with their default diffusion (auto) they take g = sigma(t) where
    # the natural g diverges at t = 1 (rectified flow, cnf, cosine ddpm); tests/test_reverse_sde.py.
    # 200 steps: first-order solvers on VE (sigma from 50 to 0.01) still shrink the spread by
    # 3.5% at 100 uniform steps, a real discretization error this test would rightly flag. An
    # adaptive solver (dopri5) picks its own steps: a count would only add points to pass through.
    steps = SOLVERS.get(solver).fixed_steps(200)
    samples = genflow.sample(model, process, solver=solver, steps=steps, shape=(N_SAMPLES, 2), seed=0)
    distance = energy_distance(samples, data)
    assert distance < 3 * floor, f"{process.name}/{solver}: {distance:.4f} vs floor {floor:.4f}"
    # A wrong model (blobs moved by 0.5) is far above the floor, at a quarter of the steps too:
    # the check can fail, and the solver does not pull samples back onto the data.
    shifted = GaussianMixture(four_blobs().means + 0.5, std=0.3).exact_model(process)
    wrong = genflow.sample(shifted, process, solver=solver, steps=SOLVERS.get(solver).fixed_steps(50), shape=(N_SAMPLES, 2), seed=0)
    assert energy_distance(wrong, data) > 10 * floor


def single_gaussian_endpoint(process, x1: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """Exact probability-flow ODE solution at t = 0 for N(mean, std^2 I) data: the flow keeps
    each point's standardized offset, ``x_t = alpha_t mean + sqrt(V_t / V_1) (x_1 - alpha_1 mean)``
    with ``V_t = alpha_t^2 std^2 + sigma_t^2``."""
    c1, c0 = process.coefficients(1.0), process.coefficients(0.0)
    variance = lambda c: c.alpha**2 * std**2 + c.sigma**2
    return c0.alpha * mean + math.sqrt(variance(c0) / variance(c1)) * (x1 - c1.alpha * mean)


def observed_order(process, solver: str, grid: str, steps=(16, 32, 64, 128)) -> float:
    mean, std = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5
    data = GaussianMixture([mean.tolist()], std=std)
    x1 = process.prior_std * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = single_gaussian_endpoint(process, x1, mean, std)
    errors = []
    for n in steps:
        model = BoundModel(data.exact_model(process), process)
        x0 = SOLVERS.get(solver).fn(model, x1.clone(), make_grid(grid, n, process), noise=None)
        errors.append(float((x0 - exact).abs().max()))
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    return -float(slope)


@pytest.mark.parametrize(
    "solver, grid, low, high",
    [
        ("euler", "uniform", 0.8, 1.2),
        ("ddim", "logsnr", 0.9, 1.2),
        ("heun", "uniform", 1.75, 2.4),
        ("dpm++2m", "logsnr", 1.75, 3.0),
    ],
)
def test_error_shrinks_at_the_solver_order(process, solver, grid, low, high):
    if solver == "heun" and process.name == "ddpm" and process.beta_schedule == "cosine":
        low, high = 0.8, 1.3  # cosine's clipped last beta (0.999) puts a near-kink in the first step: Heun is first order there (1.09)
    assert low <= observed_order(process, solver, grid) <= high


def test_dopri5_meets_its_tolerance():
    process = make_process("sde", sde="vp")
    mean, std = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5
    data = GaussianMixture([mean.tolist()], std=std)
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors, nfes = [], []
    for tol in (1e-3, 1e-6):
        model = BoundModel(data.exact_model(process), process)
        grid = torch.tensor([1.0, process.t_min], dtype=torch.float64)
        x = SOLVERS.get("dopri5").fn(model, x1.clone(), grid, noise=None, rtol=tol, atol=tol)
        c = process.coefficients(process.t_min)
        exact = c.alpha * mean + math.sqrt(
            (c.alpha**2 * std**2 + c.sigma**2) / (process.prior_std**2 + process.coefficients(1.0).alpha ** 2 * std**2)
        ) * (x1 - process.coefficients(1.0).alpha * mean)
        errors.append(float((x - exact).abs().max()))
        nfes.append(model.nfe)
    assert errors[1] < 1e-4 and errors[1] < errors[0] / 10
    assert nfes[1] > nfes[0]


def fixed_eps_network(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """A deterministic, nonlinear stand-in for a trained eps network (diffusers' timestep k)."""
    k = timestep.reshape(-1, 1, 1, 1).to(x.dtype)
    return torch.tanh(0.7 * x.flip(-1) + 0.3 * torch.sin(x) + 0.001 * k - 0.2)


def our_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return fixed_eps_network(x, t * 1000 - 1)  # our step i = T t is diffusers' timestep i - 1


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_ddim_matches_diffusers_ddim_scheduler(spacing):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(beta_schedule="linear", clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing)
    scheduler.set_timesteps(10)
    x_init = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = x_init.clone()
    for k in scheduler.timesteps:
        expected = scheduler.step(fixed_eps_network(expected, k.expand(4)), k, expected, eta=0.0).prev_sample

    process = make_process("ddim")
    grid = torch.cat([(scheduler.timesteps.double() + 1) / 1000, torch.zeros(1, dtype=torch.float64)])
    if spacing == "trailing":  # diffusers' trailing spacing is our uniform grid
        torch.testing.assert_close(grid, make_grid("uniform", 10, process))
    ours = SOLVERS.get("ddim").fn(BoundModel(our_model, process), x_init.clone(), grid, noise=None)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)  # diffusers keeps alphas_cumprod in float32


def test_ancestral_on_ddpm_matches_diffusers_ddpm_scheduler(monkeypatch):
    from diffusers import DDPMScheduler
    from diffusers.schedulers import scheduling_ddpm

    drawn = []

    def recording_randn(*args, **kwargs):
        z = real_randn(*args, **kwargs)
        drawn.append(z)
        return z

    real_randn = scheduling_ddpm.randn_tensor
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", recording_randn)
    scheduler = DDPMScheduler(beta_schedule="linear", clip_sample=False, variance_type="fixed_small", timestep_spacing="trailing")
    scheduler.set_timesteps(25)
    x_init = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = x_init.clone()
    generator = torch.Generator().manual_seed(1)
    for k in scheduler.timesteps:
        expected = scheduler.step(fixed_eps_network(expected, k.expand(4)), k, expected, generator=generator).prev_sample

    replay = iter(drawn)
    process = make_process("ddpm")
    ours = SOLVERS.get("ancestral").fn(
        BoundModel(our_model, process), x_init.clone(), make_grid("uniform", 25, process), noise=lambda x: next(replay)
    )
    assert len(drawn) == 25  # diffusers also draws on the last step, scaled by its variance clamp 1e-10; we draw none
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)  # diffusers keeps alphas_cumprod in float32


@pytest.mark.parametrize("solver", ["ancestral", "euler-maruyama", "pc", "heun"])
def test_same_seed_gives_the_same_samples_at_any_batch_size(solver):
    process = make_process("sde")
    model = four_blobs().exact_model(process)
    whole = genflow.sample(model, process, solver=solver, steps=12, shape=(7, 2), seed=3)
    batched = genflow.sample(model, process, solver=solver, steps=12, shape=(7, 2), seed=3, batch_size=3)
    shifted = genflow.sample(model, process, solver=solver, steps=12, shape=(4, 2), seed=6)
    torch.testing.assert_close(batched, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shifted, whole[3:], rtol=1e-5, atol=1e-6)  # sample i uses seed + i
    assert not torch.allclose(genflow.sample(model, process, solver=solver, steps=12, shape=(7, 2), seed=4), whole)


@pytest.mark.parametrize(
    "solver, steps, nfe", [("euler", 10, 10), ("heun", 10, 19), ("dpm++2m", 10, 10), ("pc", 10, 20), ("ddim", 7, 7)]
)
def test_stats_report_nfe_and_time(solver, steps, nfe):
    process = make_process("sde")
    calls = []
    exact = four_blobs().exact_model(process)

    def counting_model(x, t):
        calls.append(1)
        return exact(x, t)

    stats = genflow.SamplingStats()
    genflow.sample(counting_model, process, solver=solver, steps=steps, grid="uniform", shape=(8, 2), batch_size=4, stats=stats)
    assert stats.nfe == nfe == len(calls) / 2
    assert (stats.solver, stats.grid, stats.steps) == (solver, "uniform", steps)
    assert stats.seconds > 0


def test_dopri5_reports_its_adaptive_nfe():
    process = make_process("rectified-flow")
    stats = genflow.SamplingStats()
    genflow.sample(four_blobs().exact_model(process), process, solver="dopri5", shape=(16, 2), stats=stats)
    assert stats.steps == 1 and stats.nfe > 6 and stats.nfe % 1 == 0


def test_solver_options_are_checked_before_sampling():
    process = make_process("ddpm")

    def never_called(x, t):
        raise AssertionError("sampling started despite a bad option")

    sample = lambda **kw: genflow.sample(never_called, process, shape=(2, 2), **kw)
    with pytest.raises(UnknownNameError, match="did you mean 'eta'"):
        sample(solver="ddim", etta=0.5)
    with pytest.raises(GenflowError, match="'heun' takes no options, but 'eta' was given"):
        sample(solver="heun", eta=0.5)
    with pytest.raises(GenflowError, match=r"eta must be in \[0, 1\], not -1"):
        sample(solver="ancestral", eta=-1)
    with pytest.raises(GenflowError, match=r"eta must be in \[0, 1\], not 1.5"):
        sample(solver="ddim", eta=1.5)
    with pytest.raises(GenflowError, match="corrector_steps must be a whole number"):
        sample(solver="pc", corrector_steps=1.5)
    with pytest.raises(UnknownNameError, match="did you mean 'heun'"):
        sample(solver="huen")
    with pytest.raises(UnknownNameError, match="did you mean 'karras'"):
        sample(solver="euler", grid="karas")
    with pytest.raises(GenflowError, match="steps must be a whole number from 1 to 100000"):
        sample(solver="euler", steps=0)
    with pytest.raises(GenflowError, match="at most 1000 uniform steps"):
        sample(solver="euler", steps=1001, grid="uniform")
    with pytest.raises(GenflowError, match="shape must be"):
        genflow.sample(never_called, process, shape=(0, 2))
    with pytest.raises(IncompatibleError, match="'rectified-flow'.*--diffusion sigma"):
        genflow.sample(never_called, make_process("rectified-flow"), shape=(2, 2), solver="euler-maruyama", diffusion="natural")
    with pytest.raises(GenflowError, match="diffusion must be one of auto, natural, sigma, not 'sigm'"):
        sample(solver="pc", diffusion="sigm")


def test_ot_coupled_flow_refuses_samplers_that_add_noise():
    """Minibatch-OT pairing changes the path's conditionals, so only its ODE may be solved."""
    process = make_process("cnf", coupling="ot")
    model = four_blobs().exact_model(process)
    for solver, options in (("ancestral", {}), ("ddim", {"eta": 0.3}), ("euler-maruyama", {}), ("pc", {"diffusion": "sigma"})):
        with pytest.raises(IncompatibleError, match="deterministic solver"):
            genflow.sample(model, process, solver=solver, shape=(4, 2), **options)
    for solver in ("euler", "heun", "dpm++2m", "ddim"):
        assert genflow.sample(model, process, solver=solver, steps=4, shape=(4, 2)).isfinite().all()


def test_eta_spans_ddim_to_ddpm():
    """From the same prior, eta = 0 ignores the noise source; eta > 0 ('ancestral') uses it;
    ddim with eta = 1 is ancestral."""
    process = make_process("ddpm")
    model = BoundModel(four_blobs().exact_model(process), process)
    prior = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    grid = make_grid("uniform", 10, process)

    def run(solver, seed, **options):
        return SOLVERS.get(solver).fn(model, prior, grid, genflow.NoiseSource(range(seed, seed + 5)).like, **options)

    torch.testing.assert_close(run("ddim", 0), run("ddim", 1))
    assert not torch.allclose(run("ancestral", 0), run("ancestral", 1))
    assert not torch.allclose(run("ddim", 0, eta=0.5), run("ddim", 1, eta=0.5))
    torch.testing.assert_close(run("ddim", 0, eta=1.0), run("ancestral", 0))
