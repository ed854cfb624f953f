"""Schedules, prediction conversions, corruption and training losses of every process."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from genflow import GenflowError, UnknownNameError, make_process
from genflow.processes import PREDICTIONS, from_x0_eps, to_x0_eps
from genflow.processes.cnf import optimal_transport_pairing
from genflow.toy import GaussianMixture


def time_derivative(coefficient: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if not coefficient.requires_grad:  # a constant coefficient (VE's alpha = 1)
        return torch.zeros_like(t)
    return torch.autograd.grad(coefficient.sum(), t, retain_graph=True)[0]


def test_derivatives_match_autograd(process):
    t = torch.linspace(0.013, 0.987, 57, dtype=torch.float64, requires_grad=True)
    s = process.schedule(t)
    d_alpha, d_sigma = (time_derivative(c, t) for c in (s.alpha, s.sigma))
    torch.testing.assert_close(s.d_alpha, d_alpha, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(s.d_sigma, d_sigma, rtol=1e-6, atol=1e-9)


def test_schedule_runs_from_data_to_noise(process):
    data_end, noise_end = process.coefficients(0.0), process.coefficients(1.0)
    assert data_end.alpha == pytest.approx(1.0)
    assert data_end.sigma < 0.011
    assert noise_end.alpha * 40 < noise_end.sigma  # the prior carries (almost) no trace of the data
    t = torch.linspace(0, 1, 201, dtype=torch.float64)
    level = process.schedule(t)
    assert bool(((level.sigma / level.alpha).diff() > 0).all()), "noise level must increase with t"


@pytest.mark.parametrize("beta_schedule, diffusers_name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_ddpm_nodes_match_diffusers_alphas_cumprod(beta_schedule, diffusers_name):
    process = make_process("ddpm", beta_schedule=beta_schedule)
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name).alphas_cumprod.double()
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000  # diffusers' timestep k is our step i = k + 1
    torch.testing.assert_close(process.schedule(t).alpha ** 2, reference, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_prediction_conversions_round_trip(process, prediction):
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 16, 3, generator=generator, dtype=torch.float64)
    t = torch.rand(16, generator=generator, dtype=torch.float64) * 0.9 + 0.05
    s = process.schedule(t).broadcast_to(x0)
    x = s.alpha * x0 + s.sigma * eps
    x0_back, eps_back = to_x0_eps(prediction, from_x0_eps(prediction, x0, eps, s), x, s)
    torch.testing.assert_close(x0_back, x0)
    torch.testing.assert_close(eps_back, eps)


def test_corruption_has_path_mean_and_variance(process):
    generator = torch.Generator().manual_seed(1)
    x0 = torch.full((200_000, 1), 0.7, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    t = torch.full((x0.shape[0],), 0.3, dtype=torch.float64)
    x_t = process.corrupt(x0, eps, t)
    s = process.coefficients(0.3)
    assert float(x_t.mean()) == pytest.approx(0.7 * s.alpha, abs=4 * s.sigma / 200_000**0.5)
    assert float(x_t.std()) == pytest.approx(s.sigma, rel=0.01)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_training_loss_vanishes_exactly_for_the_exact_model(prediction):
    """With point-mass data the posterior mean is the data itself, so the exact model's
    loss is zero whatever the target; any other model pays for its error."""
    for name, options in [("ddpm", {}), ("sde", {"sde": "ve"}), ("rectified-flow", {}), ("cnf", {})]:
        process = make_process(name, prediction=prediction, **options)
        data = GaussianMixture([[0.5, -1.0]], std=0.0)
        x0 = data.sample(64, torch.Generator().manual_seed(2)).float()
        exact = process.training_loss(data.exact_model(process), x0, torch.Generator().manual_seed(3))
        wrong = process.training_loss(lambda x, t: torch.zeros_like(x), x0, torch.Generator().manual_seed(3))
        assert exact.shape == (64,)
        assert float(exact.max()) < 1e-6, (name, prediction)
        assert float(wrong.mean()) > 0.1, (name, prediction)


def test_ddpm_trains_on_its_discrete_steps():
    process = make_process("ddpm")
    t = process.sample_training_times(10_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    steps = t * 1000
    torch.testing.assert_close(steps, steps.round())
    assert int(steps.min()) >= 1 and int(steps.max()) <= 1000


def test_logit_normal_times_have_the_asked_logit_moments():
    process = make_process("rectified-flow", time_sampling="logit-normal", logit_mean=0.5, logit_std=0.8)
    t = process.sample_training_times(50_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    logit = torch.log(t / (1 - t))
    assert float(logit.mean()) == pytest.approx(0.5, abs=0.02)
    assert float(logit.std()) == pytest.approx(0.8, abs=0.02)


def test_ot_coupling_lowers_the_mean_pairing_cost():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(128, 1, 4, 4, generator=generator) + 2.0
    eps = torch.randn(128, 1, 4, 4, generator=generator)
    paired = optimal_transport_pairing(x0, eps)
    independent_cost = ((x0 - eps) ** 2).flatten(1).sum(1).mean()
    ot_cost = ((x0 - paired) ** 2).flatten(1).sum(1).mean()
    assert float(ot_cost) < 0.9 * float(independent_cost)
    assert sorted(paired.flatten(1).sum(1).tolist()) == pytest.approx(sorted(eps.flatten(1).sum(1).tolist()))
    process = make_process("cnf", coupling="ot")
    assert torch.equal(process.couple(x0, eps), paired)


def test_process_errors_name_the_fix():
    with pytest.raises(UnknownNameError, match="did you mean 'rectified-flow'"):
        make_process("rectified_flow")
    with pytest.raises(UnknownNameError, match="did you mean 'coupling'"):
        make_process("cnf", couplng="ot")
    with pytest.raises(GenflowError, match="sigma_max.*no effect"):
        make_process("sde", sde="vp", sigma_max=10.0)
    with pytest.raises(GenflowError, match="coupling must be one of independent, ot"):
        make_process("cnf", coupling="sinkhorn")
    with pytest.raises(GenflowError, match="prediction must be one of"):
        make_process("ddpm", prediction="score")


def test_options_rebuild_the_same_process(process):
    assert make_process(process.name, **process.options()) == process
