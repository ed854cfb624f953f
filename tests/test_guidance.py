"""Class labels and classifier-free guidance against closed forms, with no training.

Each component of a Gaussian mixture is a class and the null label is the whole mixture, so
``GaussianMixture.exact_model`` is an exact class-conditional model. For two Gaussians of one
width ``s`` the guided prediction ``uncond + S (cond - uncond)`` is exactly the prediction of
``N((1 - S) mu_u + S mu_a, s^2 I)``: the posterior mean ``mu + alpha s^2 / v (x - alpha mu)``
(``v = alpha^2 s^2 + sigma^2``) is affine in ``mu`` and every prediction type is affine in it
at fixed ``(x, t)`` (Ho & Salimans 2022, eq. 6).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import energy_distance, four_blobs

import genflow
from genflow import SOLVERS, GenflowError, IncompatibleError, make_process
from genflow.likelihood import log_likelihood
from genflow.processes.cnf import CNF, optimal_transport_pairing
from genflow.solvers.guidance import GuidedModel
from genflow.timesteps import make_grid
from genflow.toy import GaussianMixture
from genflow.train.objective import DenoisingObjective

N_SAMPLES = 1000
STEPS = 100
"""Per class (250 samples) the floor is 4x test_solvers', which absorbs the 3.5% spread that
first-order solvers on VE lose at 100 steps; test_solvers checks discretization itself."""
BLOB_LABELS = torch.arange(N_SAMPLES) % 4


def refused(process, solver: str) -> bool:
    """Whether ``solver`` cannot serve ``process``: the reverse SDE diverges at t = 1 for
    processes with alpha(1) = 0 (the fixture's cnf has independent coupling)."""
    return SOLVERS.get(solver).needs_reverse_sde and not process.supports_reverse_sde


def expect_refusal(model, process, solver: str, **conditioning) -> None:
    with pytest.raises(IncompatibleError, match="use 'ancestral'"):
        genflow.sample(model, process, solver=solver, steps=STEPS, shape=(N_SAMPLES, 2), **conditioning)


# --- guidance 1 samples each class's component, guidance 0 the whole mixture -------------


def component_draws(mixture: GaussianMixture, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """One draw of component ``labels[i]`` per row."""
    noise = torch.randn(len(labels), mixture.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return mixture.means[labels] + mixture.std * noise


def mixture_draws(mixture: GaussianMixture, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """One draw of the whole mixture per row (the row's label is ignored)."""
    return mixture.sample(len(labels), torch.Generator().manual_seed(seed))


def classwise_distance(samples: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes k of the energy distance between the rows labelled k of each."""
    return float(np.mean([energy_distance(samples[labels == k], reference[labels == k]) for k in labels.unique()]))


@pytest.fixture(scope="module")
def floors() -> dict[str, float]:
    """Mean classwise distance between independent draws of each reference: the floors."""
    blobs, seeds = four_blobs(), [(2 * s, 2 * s + 1) for s in range(5)]
    floor = lambda draws: float(np.mean([classwise_distance(draws(blobs, BLOB_LABELS, a), draws(blobs, BLOB_LABELS, b), BLOB_LABELS) for a, b in seeds]))
    return {"own": floor(component_draws), "whole": floor(mixture_draws)}


@pytest.mark.parametrize("solver", SOLVERS.names())
def test_guidance_one_samples_each_class_and_zero_the_mixture(process, solver, floors):
    blobs = four_blobs()
    model = blobs.exact_model(process)
    if refused(process, solver):
        return expect_refusal(model, process, solver, labels=BLOB_LABELS, guidance=0.0)
    draw = lambda guidance: genflow.sample(
        model, process, solver=solver, steps=STEPS, shape=(N_SAMPLES, 2), seed=0, labels=BLOB_LABELS, guidance=guidance
    )
    conditional, unconditional = draw(1.0), draw(0.0)
    own, whole = component_draws(blobs, BLOB_LABELS, 100), mixture_draws(blobs, BLOB_LABELS, 101)
    assert classwise_distance(conditional, own, BLOB_LABELS) < 3 * floors["own"]
    assert classwise_distance(unconditional, whole, BLOB_LABELS) < 3 * floors["whole"]
    # controls: class k against the next class's component, and guidance 0 against the classes
    neighbour = component_draws(blobs, (BLOB_LABELS + 1) % 4, 100)
    assert classwise_distance(conditional, neighbour, BLOB_LABELS) > 100 * floors["own"]
    assert classwise_distance(unconditional, own, BLOB_LABELS) > 100 * floors["whole"]


# --- guidance S moves a Gaussian class to (1 - S) mu_u + S mu_a ----------------------------

MEAN_CLASS, MEAN_NULL, STD = (1.0, 0.5), (0.5, 0.0), 0.5
GUIDED_SAMPLES = 2000


class TwoGaussians:
    """Exact class-conditional model: class 0 is N(mu_a, s^2 I); the null label 1 is N(mu_u, s^2 I)."""

    null_label = 1

    def __init__(self, process) -> None:
        self.cond = GaussianMixture([MEAN_CLASS], STD).exact_model(process)
        self.uncond = GaussianMixture([MEAN_NULL], STD).exact_model(process)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        is_class = (labels == 0).reshape(-1, *(1,) * (x.ndim - 1))
        return torch.where(is_class, self.cond(x, t), self.uncond(x, t))


def guided_mean(scale: float) -> torch.Tensor:
    return (1 - scale) * torch.tensor(MEAN_NULL, dtype=torch.float64) + scale * torch.tensor(MEAN_CLASS, dtype=torch.float64)


@pytest.mark.parametrize("scale", [3.0, 0.5])
@pytest.mark.parametrize("solver", SOLVERS.names())
def test_guidance_moves_a_gaussian_class_as_the_closed_form_says(process, solver, scale):
    model = TwoGaussians(process)
    if refused(process, solver):
        return expect_refusal(model, process, solver, labels=0, guidance=scale)
    draw = lambda m, **labels: genflow.sample(
        m, process, solver=solver, steps=STEPS, shape=(GUIDED_SAMPLES, 2), seed=0, dtype=torch.float64, **labels
    )
    guided = draw(model, labels=0, guidance=scale)
    # step by step the guided model is the exact model of N(mean_S, s^2 I): the same samples
    closed_form = draw(GaussianMixture([guided_mean(scale).tolist()], STD).exact_model(process))
    torch.testing.assert_close(guided, closed_form, rtol=1e-9, atol=1e-9)
    # and they have its moments: 4 standard errors s / sqrt(n) and 1 / sqrt(2n) (relative)
    # plus the 3.5% spread first-order solvers lose on VE at 100 steps
    assert (guided.mean(0) - guided_mean(scale)).abs().max() < 4 * STD / math.sqrt(GUIDED_SAMPLES)
    assert (guided.std(0) / STD - 1).abs().max() < 4 / math.sqrt(2 * GUIDED_SAMPLES) + 0.035
    assert (guided.mean(0) - torch.tensor(MEAN_CLASS)).abs().max() > 0.2  # control: not the class itself


# --- each sample depends only on its label and its seed -----------------------------------


def guided_draws(labels, seed, batch_size=None, solver="euler-maruyama") -> torch.Tensor:
    process = make_process("sde")
    model = four_blobs().exact_model(process)
    return genflow.sample(
        model, process, solver=solver, steps=12, shape=(len(labels), 2), labels=labels, seed=seed, guidance=2.0, batch_size=batch_size
    )


@pytest.mark.parametrize("solver", ["euler-maruyama", "ancestral", "heun"])
def test_a_sample_depends_only_on_its_label_and_seed(solver):
    labels = [3, 0, 1, 1, 2, 0, 3, 2, 1, 0, 2]
    whole = guided_draws(labels, 5, solver=solver)
    for batch_size in (1, 7):
        assert torch.equal(guided_draws(labels, 5, batch_size, solver), whole)
    order = [7, 2, 10, 0, 5, 9, 1, 3, 8, 6, 4]
    permuted = guided_draws([labels[i] for i in order], [5 + i for i in order], solver=solver)
    assert torch.equal(permuted, whole[order])
    others = labels[:4] + [(c + 1) % 4 for c in labels[4:]]  # the same first four among other classes
    assert torch.equal(guided_draws(others, 5, solver=solver)[:4], whole[:4])
    assert not torch.allclose(guided_draws(others, 5, solver=solver)[4:], whole[4:])  # control: labels matter


# --- NFE counts backbone evaluations: one batched call of twice the rows when guided ------


class CallRecorder:
    """A conditional model that records the rows and time of every backbone call."""

    def __init__(self, model) -> None:
        self.model, self.null_label, self.calls = model, model.null_label, []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((x.shape[0], float(t[0])))
        return self.model(x, t, labels)


def recorded_sampling(solver: str, batch: int = 3, **conditioning) -> tuple[float, CallRecorder]:
    """NFE and calls for 2 batches of ``batch`` samples on VP (which every solver serves)."""
    process = make_process("sde")
    recorder, stats = CallRecorder(four_blobs().exact_model(process)), genflow.SamplingStats()
    genflow.sample(recorder, process, solver=solver, steps=10, shape=(2 * batch, 2), batch_size=batch, stats=stats, **conditioning)
    return stats.nfe, recorder


@pytest.mark.parametrize("solver", SOLVERS.names())
def test_nfe_counts_both_halves_of_a_guided_step(solver):
    """NFE per sample is the rows the backbone saw per sample; guidance doubles the rows of
    each call (one call per step, never two), and only guidance in (0, 1) and beyond costs."""
    unguided, plain = recorded_sampling(solver)
    assert unguided == len(plain.calls) / 2 and {rows for rows, _ in plain.calls} == {3}
    for scale, rows in ((1.0, 3), (0.0, 3), (2.0, 6)):
        nfe, recorder = recorded_sampling(solver, labels=[0, 1, 2, 3, 0, 1], guidance=scale)
        assert {r for r, _ in recorder.calls} == {rows}
        assert nfe == sum(r for r, _ in recorder.calls) / 6
        if not SOLVERS.get(solver).adaptive:  # adaptive step choice depends on the field
            assert len(recorder.calls) == len(plain.calls) and nfe == unguided * rows / 3


@pytest.mark.parametrize("solver", ["euler", "heun", "dpm++2m", "pc"])
def test_a_guidance_interval_doubles_only_the_steps_inside_it(solver):
    lo, hi = 0.25, 0.65
    unguided, _ = recorded_sampling(solver)
    nfe, recorder = recorded_sampling(solver, labels=[0, 1, 2, 3, 0, 1], guidance=2.0, guidance_interval=(lo, hi))
    assert all((rows == 6) == (lo <= t <= hi) for rows, t in recorder.calls)
    inside = sum(lo <= t <= hi for _, t in recorder.calls) / 2
    assert 0 < inside < len(recorder.calls) / 2 and nfe == unguided + inside


def test_euler_interval_nfe_follows_the_grid():
    """Euler evaluates once at every grid time but the last: 1 + [lo <= t_i <= hi] each."""
    lo, hi = 0.25, 0.65
    times = make_grid("uniform", 10, make_process("sde"))[:-1].tolist()
    nfe, _ = recorded_sampling("euler", labels=0, guidance=3.0, guidance_interval=(lo, hi))
    assert nfe == sum(1 + (lo <= t <= hi) for t in times) == 14


# --- label dropout ----------------------------------------------------------------------

NUM_CLASSES = 10


def dropped(rate: float, seed: int, n: int = 100_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels 0..9 and the same labels after dropout with the null label 10 = num_classes."""
    from genflow.nn.unet import UNetConfig

    null = UNetConfig(num_classes=NUM_CLASSES).null_label  # what training passes
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=torch.Generator().manual_seed(99))
    objective = DenoisingObjective(make_process("rectified-flow"), label_dropout=rate, null_label=null)
    return labels, objective.drop_labels(labels, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_label_dropout_replaces_labels_by_the_null_label_at_its_rate(rate):
    labels, shown = dropped(rate, seed=0)
    was_dropped = shown != labels
    binomial_sd = math.sqrt(rate * (1 - rate) / len(labels))
    assert abs(float(was_dropped.float().mean()) - rate) < 5 * binomial_sd
    assert bool((shown[was_dropped] == NUM_CLASSES).all()) and int(labels.max()) == NUM_CLASSES - 1
    assert torch.equal(dropped(rate, seed=0)[1], shown)  # the generator fixes which are dropped
    assert not torch.equal(dropped(rate, seed=1)[1], shown)


def test_the_loss_shows_the_model_dropped_labels_and_couples_by_true_ones(monkeypatch):
    """The model sees the dropped labels; minibatch OT pairs within the true classes."""
    seen, couple = {}, CNF.couple

    def recording_couple(self, x0, eps, groups=None):
        seen["groups"] = groups
        return couple(self, x0, eps, groups)

    monkeypatch.setattr(CNF, "couple", recording_couple)

    def model(x, t, labels):
        seen["labels"] = labels
        return torch.zeros_like(x)

    objective = DenoisingObjective(make_process("cnf", coupling="ot"), label_dropout=0.5, null_label=3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    objective.loss(model, {"images": torch.randn(8, 1, 2, 2), "labels": labels}, torch.Generator().manual_seed(0))
    expected = objective.drop_labels(labels, torch.Generator().manual_seed(0))  # dropout draws first
    assert torch.equal(seen["labels"], expected) and (expected == 3).any() and (expected != 3).any()
    assert torch.equal(seen["groups"], labels)


# --- minibatch OT within classes --------------------------------------------------------


def test_ot_coupling_pairs_noise_and_data_only_within_a_class():
    generator = torch.Generator().manual_seed(0)
    groups = torch.tensor([2, 0, 1, 0, 2, 2, 1, 0, 0, 2, 1, 0])
    x0 = torch.randn(12, 3, generator=generator) + 3 * groups[:, None]
    eps = torch.randn(12, 3, generator=generator)
    paired = CNF(coupling="ot").couple(x0, eps, groups)
    for k in groups.unique():
        members = groups == k
        rows = lambda t: sorted(map(tuple, t.tolist()))
        assert rows(paired[members]) == rows(eps[members])  # a permutation of the class's own noise
        torch.testing.assert_close(paired[members], optimal_transport_pairing(x0[members], eps[members]))
    assert not torch.equal(CNF(coupling="ot").couple(x0, eps), paired)  # control: pooled OT crosses classes
    assert torch.equal(CNF(coupling="independent").couple(x0, eps, groups), eps)


def test_pairing_within_a_class_is_optimal():
    """Against every permutation of a five-point class: the paired cost is the least."""
    import itertools

    generator = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(5, 2, generator=generator), torch.randn(5, 2, generator=generator)
    cost = lambda e: float(((x0 - e) ** 2).sum())
    best = min(cost(eps[list(p)]) for p in itertools.permutations(range(5)))
    assert cost(CNF(coupling="ot").couple(x0, eps, torch.zeros(5, dtype=torch.long))) == pytest.approx(best)


# --- guidance arguments are checked before the model runs --------------------------------


class NeverCalled:
    """A conditional model with classes 0..3 that fails the test if sampling reaches it."""

    null_label = 4

    def __call__(self, *args, **kwargs):
        raise AssertionError("sampling started despite a bad argument")


def never_called_unconditional(x, t):
    raise AssertionError("sampling started despite a bad argument")


@pytest.mark.parametrize(
    "model, arguments, message",
    [
        (NeverCalled(), {"labels": 0, "guidance": -1.0}, "guidance must be a finite number >= 0"),
        (NeverCalled(), {"labels": 0, "guidance": math.inf}, "guidance must be a finite number >= 0"),
        (NeverCalled(), {"labels": 0, "guidance": math.nan}, "guidance must be a finite number >= 0"),
        (NeverCalled(), {"labels": 0, "guidance_interval": (0.5, 0.5)}, "0 <= LO < HI <= 1"),
        (NeverCalled(), {"labels": 0, "guidance_interval": (0.8, 0.2)}, "0 <= LO < HI <= 1"),
        (NeverCalled(), {"labels": 0, "guidance_interval": (-0.1, 0.5)}, "0 <= LO < HI <= 1"),
        (NeverCalled(), {"labels": 0, "guidance_interval": (0.2, 1.5)}, "0 <= LO < HI <= 1"),
        (NeverCalled(), {"labels": 0, "guidance_interval": (0.1, 0.2, 0.3)}, "two times LO,HI"),
        (NeverCalled(), {"labels": 4}, r"class 4 is out of range: this model has classes 0\.\.3"),
        (NeverCalled(), {"labels": [0, -1]}, r"class -1 is out of range"),
        (NeverCalled(), {"labels": [0, 1, 2]}, r"one whole number or 2 of them"),
        (NeverCalled(), {"labels": [0.0, 1.0]}, r"one whole number or 2 of them"),
        (NeverCalled(), {"guidance": 2.0}, "guidance needs labels"),
        (never_called_unconditional, {"labels": 0}, "labels need a class-conditional model"),
    ],
    ids=lambda value: None if isinstance(value, dict) else "",
)
def test_bad_guidance_arguments_fail_before_sampling(model, arguments, message):
    with pytest.raises(GenflowError, match=message):
        genflow.sample(model, "rectified-flow", shape=(2, 2), **arguments)


def test_guidance_without_a_null_label_is_refused():
    with pytest.raises(GenflowError, match="needs a model trained with label dropout"):
        GuidedModel(never_called_unconditional, torch.zeros(2, dtype=torch.long), None, scale=2.0)


# --- log-likelihood given a class --------------------------------------------------------


@pytest.mark.parametrize("name", ["rectified-flow", "sde"])
def test_likelihood_given_a_class_is_its_component_density(name):
    """log p(x | k) is component k's Gaussian density at t_min; without labels, the mixture's."""
    process = make_process(name)
    mixture = GaussianMixture([[1.0, -1.0], [-1.0, 0.5]], std=0.4)
    x = mixture.sample(32, torch.Generator().manual_seed(0))
    c = process.coefficients(process.t_min)
    density = lambda means, points: GaussianMixture(means, mixture.std).log_prob(points, c.alpha, c.sigma)
    model = mixture.exact_model(process)
    per_sample = torch.arange(32) % 2
    expected = {
        0: density([[1.0, -1.0]], x),
        1: density([[-1.0, 0.5]], x),
        None: mixture.log_prob(x, c.alpha, c.sigma),
    }
    for labels in (0, 1, None):
        ours = log_likelihood(model, process, x, labels=labels)
        assert float((ours - expected[labels]).abs().max()) < 0.01, labels
    mixed = log_likelihood(model, process, x, labels=per_sample)
    assert float((mixed - torch.where(per_sample == 0, expected[0], expected[1])).abs().max()) < 0.01
    assert float((expected[0] - expected[1]).abs().mean()) > 1  # control: the classes differ


def test_likelihood_checks_labels_like_sampling():
    x = torch.zeros(2, 2)
    with pytest.raises(GenflowError, match="class 2 is out of range"):
        log_likelihood(GaussianMixture([[0.0, 0.0], [1.0, 1.0]], 0.5).exact_model(make_process("rectified-flow")), "rectified-flow", x, labels=2)
    with pytest.raises(GenflowError, match="labels need a class-conditional model"):
        log_likelihood(never_called_unconditional, "rectified-flow", x, labels=0)
