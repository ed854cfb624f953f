"""Time grids: shape of every grid, the Karras and log-SNR spacings, user grids."""

from __future__ import annotations

import math

import pytest
import torch

import genflow
from genflow import GRIDS, GenflowError, make_grid, make_process
from genflow.sampling.grids import noise_level, time_at_noise_level


@pytest.mark.parametrize("grid", GRIDS.names())
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_grids_run_from_prior_to_data(process, grid, steps):
    times = make_grid(grid, steps, process)
    assert times.dtype == torch.float64 and len(times) == steps + 1
    assert float(times[0]) == 1.0 and float(times[-1]) == 0.0
    assert bool((times.diff() < 0).all())
    assert float(times[:-1].min()) >= process.t_min - 1e-12


def test_karras_grid_follows_eq_5_on_a_ve_path():
    """On VE, alpha = 1 so the noise level is sigma itself and the grid is EDM's eq. 5."""
    process = make_process("sde", sde="ve", sigma_min=0.02, sigma_max=40.0)
    times = make_grid("karras", 8, process)
    rho, i = 7.0, torch.arange(9, dtype=torch.float64)
    expected = (40.0 ** (1 / rho) + i / 8 * (0.02 ** (1 / rho) - 40.0 ** (1 / rho))) ** rho
    torch.testing.assert_close(process.schedule(times).sigma, expected)


def test_logsnr_grid_takes_equal_log_snr_steps():
    process = make_process("sde", sde="vp")
    times = make_grid("logsnr", 10, process)
    s = process.schedule(times[1:-1])
    half_log_snr = torch.log(s.alpha / s.sigma)
    torch.testing.assert_close(half_log_snr.diff(), torch.full((8,), float(half_log_snr.diff()[0]), dtype=torch.float64))
    assert float(noise_level(process, times[1:2])) == pytest.approx(80.0 * math.exp(-float(half_log_snr.diff()[0])), rel=1e-9)


def test_noise_level_inverts_for_every_process(process):
    t = torch.linspace(max(process.t_min, 0.01), 0.99, 25, dtype=torch.float64)
    torch.testing.assert_close(time_at_noise_level(process, noise_level(process, t)), t)


def test_user_grids_are_validated():
    process = make_process("rectified-flow")
    model = lambda x, t: torch.ones_like(x)
    x = genflow.sample(model, process, grid=torch.tensor([1.0, 0.3, 0.0]), shape=(3, 2), solver="euler", seed=5)
    torch.testing.assert_close(x, genflow.NoiseSource(range(5, 8))((2,)) - 1)
    for bad in ([1.0, 1.0, 0.0], [0.5], [[1.0, 0.0]], [1.5, 0.0]):
        with pytest.raises(GenflowError, match="time grid"):
            genflow.sample(model, process, grid=torch.tensor(bad), shape=(3, 2), solver="euler")
    with pytest.raises(GenflowError, match="either steps or an explicit time grid"):
        genflow.sample(model, process, grid=torch.tensor([1.0, 0.0]), steps=4, shape=(3, 2))
