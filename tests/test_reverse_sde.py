"""Reverse-SDE solvers (euler-maruyama, pc) with every process: the diffusion g(t) is a choice
(natural, sigma, auto), every choice keeps the path's marginals, and processes that reach pure
noise sample with a bounded g instead of being refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import BLOB_SAMPLES, energy_distance, expect_usage_error, four_blobs, invoke

import genflow
from genflow import SOLVERS, GenflowError, IncompatibleError, make_process
from genflow.sampling.grids import make_grid
from genflow.solvers import BoundModel
from genflow.solvers.base import Diffusion
from genflow.solvers.euler_maruyama import reverse_sde_step
from genflow.toy import GaussianMixture

REVERSE_SDE_SOLVERS = ["euler-maruyama", "pc"]
N_SAMPLES = BLOB_SAMPLES  # the size of the blobs_floor fixture's data
N_CONTROL = 500
"""Samples of the wrong model: it lands at 80x the floor or more, so a quarter of the budget shows it."""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("solver", REVERSE_SDE_SOLVERS)
def test_a_bounded_diffusion_recovers_the_mixture_with_every_process(process, solver, blobs_floor):
    """g = sigma(t) with every process, at 100 steps (200 on VE, whose first-order solvers lose
    a few percent of the spread at 100, as test_solvers notes). The default, auto, samples every
    process in test_solvers.py (test_every_solver_recovers_the_mixture_with_every_process); it
    is sigma where the natural g diverges (test_auto_is_natural_where_finite_else_sigma)."""
    if process.name == "ddim":  # ddim's path is ddpm's (only its defaults differ): the same samples
        draws = [genflow.sample(four_blobs().exact_model(p), p, solver=solver, steps=8, grid="uniform", shape=(6, 2), seed=0,
                                diffusion="sigma")
                 for p in (process, make_process("ddpm"))]  # fmt: skip
        assert torch.equal(*draws)
        return
    data, floor = blobs_floor
    steps = 200 if getattr(process, "sde", None) == "ve" else 100
    draw = lambda mixture, n: genflow.sample(
        mixture.exact_model(process), process, solver=solver, steps=steps, shape=(n, 2), seed=0, diffusion="sigma"
    )
    distance = energy_distance(draw(four_blobs(), N_SAMPLES), data)
    assert distance < 3 * floor, f"{process}/{solver}: {distance:.4f} vs floor {floor:.4f}"
    shifted = GaussianMixture(four_blobs().means + 0.5, std=0.3)  # the blobs moved by 0.5
    assert energy_distance(draw(shifted, N_CONTROL), data) > 10 * floor


@pytest.mark.parametrize("solver", REVERSE_SDE_SOLVERS)
def test_auto_is_natural_where_finite_else_sigma(process, solver):
    natural = "natural" if process.supports_reverse_sde else "sigma"
    model = four_blobs().exact_model(process)
    draw = lambda **options: genflow.sample(model, process, solver=solver, steps=8, shape=(6, 2), seed=2, **options)
    assert torch.equal(draw(), draw(diffusion=natural))
    assert torch.equal(draw(), draw(diffusion="auto", diffusion_scale=1.0))
    if process.supports_reverse_sde:
        assert not torch.allclose(draw(), draw(diffusion="sigma"))


@pytest.mark.parametrize("form", ["natural", "sigma"])
def test_one_step_keeps_the_marginal_to_second_order_for_every_g(process, form):
    """For Gaussian data N(m, s^2) the marginal at t is N(alpha m, alpha^2 s^2 + sigma^2) and an
    Euler-Maruyama step is affine, ``x_s = A x_t + B + g sqrt(t - s) z``: from the exact marginal
    at t it must reach the one at s up to O(h^2) for every g and scale. Noise too large or too
    small for its drift (g for g^2, a lost 1/2) leaves an O(h) error instead."""
    if form == "natural" and not process.supports_reverse_sde:  # g diverges at t=1: refused, not stepped
        with pytest.raises(IncompatibleError, match="use --diffusion sigma"):
            genflow.sample(four_blobs().exact_model(process), process, solver="euler-maruyama", shape=(4, 2), diffusion=form)
        return
    m, std = 1.5, 0.4
    model = BoundModel(GaussianMixture([[m]], std=std).exact_model(process), process)

    def marginal(t: float) -> tuple[float, float]:
        c = process.coefficients(t)
        return c.alpha * m, c.alpha**2 * std**2 + c.sigma**2

    def step_error(t: float, h: float, scale: float, noise_scale: float | None = None) -> float:
        """|mean error| + |variance error| of one step from the exact marginal at t."""
        mean, variance = marginal(t)
        x = torch.tensor([[mean], [mean + 1.0]], dtype=torch.float64)
        moved = reverse_sde_step(model, x, t, t - h, noise=None, add_noise=False, diffusion=Diffusion(form, scale))
        slope, new_mean = float(moved[1] - moved[0]), float(moved[0])
        g2 = Diffusion(form, scale if noise_scale is None else noise_scale).squared(process.coefficients(t))
        exact_mean, exact_variance = marginal(t - h)
        return abs(new_mean - exact_mean) + abs(slope**2 * variance + g2 * h - exact_variance)

    for t in (0.3, 0.7):
        for scale in (0.5, 1.0, 2.0):
            coarse, fine = step_error(t, 1e-2, scale), step_error(t, 1e-3, scale)
            assert fine < coarse / 50, f"t={t}, scale={scale}: {coarse:.2e} -> {fine:.2e}, not second order"
        # the check has teeth: noise of 1.5 g with the drift of g is off at first order
        coarse, fine = step_error(t, 1e-2, 1.0, noise_scale=1.5), step_error(t, 1e-3, 1.0, noise_scale=1.5)
        assert fine > coarse / 20


def test_no_diffusion_is_the_euler_step_of_the_probability_flow_ode(process):
    """diffusion_scale = 0: the noise term vanishes and the drift is the ODE's velocity."""
    model = BoundModel(four_blobs().exact_model(process), process)
    x1 = process.prior_std * torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = make_grid("uniform", 10, process)
    noise = genflow.NoiseSource(range(16), dtype=torch.float64).like
    still = SOLVERS.get("euler-maruyama").fn(model, x1.clone(), grid, noise, diffusion="auto", diffusion_scale=0.0)
    euler = SOLVERS.get("euler").fn(model, x1.clone(), grid, None)
    torch.testing.assert_close(still, euler, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("solver", REVERSE_SDE_SOLVERS)
@pytest.mark.parametrize("name, options, alpha", [("rectified-flow", {}, "0"), ("ddpm", {"beta_schedule": "cosine"}, "4.9e-05")])
def test_natural_is_refused_where_it_diverges_with_a_one_line_pointer(solver, name, options, alpha):
    process = make_process(name, **options)
    with pytest.raises(IncompatibleError) as refused:
        genflow.sample(four_blobs().exact_model(process), process, solver=solver, shape=(4, 2), diffusion="natural")
    message = str(refused.value)
    assert len(message.splitlines()) == 1, message
    assert f"process {name!r} (alpha(1) = {alpha}); use --diffusion sigma" in message


@pytest.mark.parametrize("solver", REVERSE_SDE_SOLVERS)
@pytest.mark.parametrize("diffusion", ["auto", "sigma"])
def test_ot_coupled_cnf_stays_refused(solver, diffusion):
    """Minibatch-OT pairing breaks the Gaussian conditionals every noise-injecting sampler needs."""
    process = make_process("cnf", coupling="ot")
    with pytest.raises(IncompatibleError, match="deterministic solver.*dpm\\+\\+3m, unipc"):
        genflow.sample(four_blobs().exact_model(process), process, solver=solver, shape=(4, 2), diffusion=diffusion)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"diffusion": "sigm"}, "diffusion must be one of auto, natural, sigma, not 'sigm'"),
        ({"diffusion": "Sigma"}, "diffusion must be one of auto, natural, sigma, not 'Sigma'"),
        ({"diffusion": 1}, "diffusion must be one of auto, natural, sigma, not 1"),
        ({"diffusion_scale": -0.5}, "diffusion_scale must be >= 0, not -0.5"),
        ({"diffusion_scale": "big"}, "diffusion_scale must be a number, not 'big'"),
    ],
)
def test_bad_diffusion_options_are_refused_in_one_line(options, message):
    def never_called(x, t):
        raise AssertionError("sampling started despite a bad option")

    for solver in REVERSE_SDE_SOLVERS:
        with pytest.raises(GenflowError) as refused:
            genflow.sample(never_called, make_process("sde"), solver=solver, shape=(2, 2), **options)
        assert str(refused.value) == f"solver {solver!r}: {message}"
    with pytest.raises(GenflowError, match="'euler' takes no options"):
        genflow.sample(never_called, make_process("sde"), solver="euler", shape=(2, 2), **options)


def test_a_bad_diffusion_name_is_refused_by_the_solver_function_too():
    with pytest.raises(GenflowError, match="diffusion must be one of natural, sigma, not 'auto '"):
        BoundModel(lambda x, t: x, make_process("sde")).diffusion("auto ")


def test_the_command_line_samples_rectified_flow_with_a_bounded_diffusion(tmp_path):
    """A tiny stored rectified-flow run (tests/fixtures): --diffusion sigma samples, natural is
    refused with one line, and the flags show in --help."""
    run = Path(shutil.copytree(Path(__file__).parent / "fixtures" / "v0.1-rectified-flow", tmp_path / "run"))
    sample = lambda *flags: invoke("sample", run, "--n", "4", "--steps", "3", "--out", tmp_path / "s.npz", "--overwrite", *flags)
    result = sample("--solver", "euler-maruyama", "--diffusion", "sigma", "--diffusion-scale", "0.5")
    assert result.exit_code == 0, result.output
    expect_usage_error(sample("--solver", "euler-maruyama", "--diffusion", "natural"), "--diffusion sigma", "rectified-flow")
    expect_usage_error(sample("--solver", "pc", "--diffusion", "nat"), "one of auto, natural, sigma")
    shown = invoke("sample", "--help").output
    assert "--diffusion " in shown and "--diffusion-scale" in shown
