"""Gaussian-mixture data with its exact denoiser: a model for any process, no training.

For data ``x0 ~ sum_k w_k N(mu_k, s^2 I)`` and ``x_t = alpha x0 + sigma eps``, each component
gives ``x_t | k ~ N(alpha mu_k, (alpha^2 s^2 + sigma^2) I)`` and
``E[x0 | x_t, k] = mu_k + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu_k)``; the
posterior mean ``x0_hat`` mixes them with the component responsibilities. Every solver run
on this model samples the true marginals, which is what the tests check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from genflow.processes.base import GaussianProcess, Model, from_x0_eps


class GaussianMixture:
    """An isotropic Gaussian mixture in ``dim`` dimensions (float64 internally)."""

    def __init__(self, means: Tensor | Sequence[Sequence[float]], std: float, weights: Tensor | None = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.std = float(std)
        k = self.means.shape[0]
        self.weights = torch.full((k,), 1 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        components = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[components] + self.std * noise

    @property
    def null_label(self) -> int:
        """The label meaning "any component": components are classes ``0..K-1``, ``K`` is none."""
        return len(self.means)

    def posterior(self, x: Tensor, alpha: Tensor, sigma: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(E[x0 | x_t = x], E[eps | x_t = x])`` for per-sample ``alpha``, ``sigma`` of shape
        ``(B, 1)``; with ``labels``, given also the component (each one a class; the null
        label: any). The noise is ``sigma sum_k r_k (x - alpha mu_k) / v`` with
        ``v = alpha^2 s^2 + sigma^2``, which stays finite where sigma = 0."""
        variance = alpha**2 * self.std**2 + sigma**2  # (B, 1)
        offsets = x[:, None, :] - alpha[:, :, None] * self.means[None]  # (B, K, D)
        log_resp = torch.log(self.weights)[None] - 0.5 * (offsets**2).sum(-1) / variance
        if labels is not None:  # the class's own component only; the null label keeps them all
            classes = torch.arange(len(self.means), device=labels.device)
            allowed = (labels[:, None] == classes[None]) | (labels[:, None] == self.null_label)
            log_resp = log_resp.masked_fill(~allowed.to(log_resp.device), -math.inf)
        resp = torch.softmax(log_resp, dim=1)[:, :, None]  # (B, K, 1)
        scaled = (resp * offsets).sum(1) / variance  # sum_k r_k (x - alpha mu_k) / v
        x0 = (resp * self.means[None]).sum(1) + alpha * self.std**2 * scaled
        return x0, sigma * scaled

    def log_prob(self, x: Tensor, alpha: float = 1.0, sigma: float = 0.0) -> Tensor:
        """Log density of ``x_t`` (of the data at the default ``alpha = 1, sigma = 0``)."""
        x = x.to(torch.float64)
        variance = alpha**2 * self.std**2 + sigma**2
        sq = ((x[:, None, :] - alpha * self.means[None]) ** 2).sum(-1)
        log_norm = -0.5 * self.dim * math.log(2 * math.pi * variance)
        return torch.logsumexp(torch.log(self.weights)[None] + log_norm - 0.5 * sq / variance, dim=1)

    def sample_class(self, label: int, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws of component ``label`` alone."""
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[label] + self.std * noise

    def exact_model(self, process: GaussianProcess) -> Model:
        """``model(x, t, labels=None)`` returning the exact prediction in ``process``'s
        parameterization: of the whole mixture, or given each sample's component (its class;
        ``model.null_label`` for none), so it is also an exact class-conditional model."""

        def model(x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
            s = process.schedule(t.to(torch.float64)).broadcast_to(x.to(torch.float64))
            xd = x.to(torch.float64)
            x0, eps = self.posterior(xd, s.alpha, s.sigma, labels)
            return from_x0_eps(process.prediction, x0, eps, s).to(x.dtype)

        model.null_label = self.null_label
        return model
