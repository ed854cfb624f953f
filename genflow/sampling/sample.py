"""``genflow.sample``: draw samples from any model with any solver on any time grid."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from genflow.errors import GenflowError
from genflow.processes import GaussianProcess, make_process
from genflow.processes.base import Model
from genflow.sampling.grids import check_grid, make_grid
from genflow.solvers import SOLVERS, BoundModel, NoiseSource, SolverSpec
from genflow.solvers.guidance import FULL_INTERVAL, conditioning
from genflow.values import check_seed

DEFAULT_STEPS = 20


@dataclass
class SamplingStats:
    """Filled in by :func:`sample`: what the samples cost and how they were made."""

    solver: str = ""
    grid: str = ""
    steps: int = 0
    nfe: float = 0.0
    """Backbone evaluations per sample (for adaptive solvers, the mean over batches)."""
    seconds: float = 0.0


def sample(
    model: Model,
    process: GaussianProcess | str,
    *,
    shape: tuple[int, ...],
    solver: str | None = None,
    steps: int | None = None,
    grid: str | Tensor | None = None,
    seed: int | Sequence[int] = 0,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    stats: SamplingStats | None = None,
    labels: int | Sequence[int] | Tensor | None = None,
    guidance: float = 1.0,
    guidance_interval: Sequence[float] = FULL_INTERVAL,
    **solver_options: float | str,
) -> Tensor:
    """Draw ``shape[0]`` samples by integrating ``model`` from the prior to the data.

    Args:
        model: ``model(x, t) -> prediction`` in ``process``'s parameterization, ``t`` of shape ``(B,)``.
        process: a process or its registered name.
        shape: ``(n, *sample_shape)``.
        solver: a registered solver name; the process's default when omitted.
        steps: solver steps (NFE depends on the solver); 20 by default, 1 for adaptive solvers
            (whose grid times are only points they must pass through).
        grid: a registered grid name (the process's default when omitted) or a decreasing tensor
            of times from 1 to 0.
        seed: sample ``i`` draws all its noise from its own generator seeded ``seed + i``, so
            the same seed gives the same samples at any ``batch_size`` (EDM's convention); or
            one seed per sample (a sequence of ``n``), e.g. the same seeds for every class.
        batch_size: samples per model call; all at once when omitted.
        device, dtype: where and in what precision to sample (the model's device by default).
        stats: a :class:`SamplingStats` to fill with solver, grid, steps, NFE and seconds.
        labels: for a class-conditional ``model(x, t, labels)``: one class for every sample or
            one per sample; ``None`` samples the unconditional model (its null label).
        guidance: classifier-free guidance ``uncond + guidance * (cond - uncond)`` (Ho &
            Salimans 2022; diffusers' convention): 1 the conditional model, 0 the
            unconditional one. A guided step costs two backbone evaluations, counted in NFE.
        guidance_interval: ``(lo, hi)``: guide only for ``lo <= t <= hi``, the conditional
            model elsewhere (Kynkaanniemi et al. 2024).
        solver_options: the solver's options, e.g. ``eta=0.5`` for ``ddim``; unknown or
            inapplicable ones are errors.

    Returns:
        The samples, a tensor of ``shape`` on ``device``.
    """
    process = make_process(process) if isinstance(process, str) else process
    spec = SOLVERS.get(solver or process.default_solver)
    options = spec.resolve_options(solver_options)
    spec.check_process(process, options)
    times, grid_name = _time_grid(process, spec, grid, steps)
    n = _check_shape(shape)
    seeds = per_sample_seeds(seed, n)
    conditioned = conditioning(model, labels, n, guidance, guidance_interval)
    batch_size = n if batch_size is None else batch_size
    if batch_size < 1:
        raise GenflowError(f"batch_size must be >= 1, not {batch_size}")
    device = torch.device(device) if device is not None else _model_device(model)

    started, nfe, chunks = time.perf_counter(), 0, []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            bound = BoundModel(conditioned(start, start + batch_size), process)
            noise = NoiseSource(seeds[start : start + batch_size], device, dtype)
            chunks.append(_sample_batch(bound, spec, times, noise, shape[1:], options))
            nfe += bound.nfe
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously; time them to completion
    if stats is not None:
        stats.solver, stats.grid, stats.steps = spec.name, grid_name, len(times) - 1
        stats.nfe = nfe / len(chunks)
        stats.seconds = time.perf_counter() - started
    return torch.cat(chunks)


def per_sample_seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """One seed per sample: ``seed + i``, or the ``n`` seeds given; each one a generator takes."""
    if isinstance(seed, int):
        return list(range(check_seed(seed, n), seed + n))
    seeds = [check_seed(int(s)) for s in seed]
    if len(seeds) != n:
        raise GenflowError(f"give one seed, or one per sample ({n}), not {len(seeds)}")
    return seeds


def _sample_batch(bound: BoundModel, spec: SolverSpec, times: Tensor, noise: NoiseSource, sample_shape, options) -> Tensor:
    prior = bound.process.prior_std * noise(sample_shape)
    return spec.fn(bound, prior, times, noise.like, **options)


def _time_grid(process: GaussianProcess, spec: SolverSpec, grid: str | Tensor | None, steps: int | None) -> tuple[Tensor, str]:
    if isinstance(grid, Tensor):
        if steps is not None:
            raise GenflowError("give either steps or an explicit time grid, not both")
        return check_grid(grid), "custom"
    name = grid or process.default_grid
    if steps is None:
        steps = 1 if spec.adaptive else DEFAULT_STEPS
    return make_grid(name, steps, process), name


def _check_shape(shape: tuple[int, ...]) -> int:
    if len(shape) < 2 or any(not isinstance(d, int) or d < 1 for d in shape):
        raise GenflowError(f"shape must be (n, *sample_shape) with positive sizes, not {shape!r}")
    return shape[0]


def _model_device(model: Model) -> torch.device:
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        for parameter in parameters():
            return parameter.device
    return torch.device("cpu")
