"""Class labels and classifier-free guidance against closed forms, with no training.

Each component of a Gaussian mixture is a class and the null label is the whole mixture, so
``GaussianMixture.exact_model`` is an exact class-conditional model. For a class N(mu_c, s^2 I)
whose null label is N(mu_u, s^2 I) (one width ``s``), the guided prediction
``uncond + S (cond - uncond)`` (Ho & Salimans 2022, eq. 6) is exactly the prediction of
``N((1 - S) mu_u + S mu_c, s^2 I)``: the posterior mean ``mu + alpha s^2 / v (x - alpha mu)``
and noise ``sigma (x - alpha mu) / v`` (``v = alpha^2 s^2 + sigma^2``) are affine in ``mu``, so
every prediction type is too at fixed ``(x, t)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import energy_distance, four_blobs

import genflow
from genflow import SOLVERS, GenflowError, make_process
from genflow.processes.cnf import CNF, optimal_transport_pairing
from genflow.sampling.grids import make_grid
from genflow.sampling.likelihood import log_likelihood
from genflow.solvers.guidance import GuidedModel, class_rows, parse_interval
from genflow.toy import GaussianMixture
from genflow.train.objective import DenoisingObjective

N_SAMPLES = 400
STEPS = 20


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors hold a few thousand numbers: a second intra-op thread only adds wake-ups
    (3x slower on two busy cores), so the module runs single-threaded and then restores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ADAPTIVE_TOLERANCE = 1e-3
"""dopri5's rtol and atol here: far finer than these sample sizes resolve."""


def budget(process, solver: str, steps: int = STEPS) -> dict:
    """Steps and options: ``steps``, except that an adaptive solver picks its own, and Euler on
    VE (sigma 50 -> 0.01) takes 100: it loses 3.5% of the spread even there (discretization,
    which test_solvers bounds)."""
    if SOLVERS.get(solver).adaptive:
        return {"rtol": ADAPTIVE_TOLERANCE, "atol": ADAPTIVE_TOLERANCE}
    return {"steps": 100 if (solver, getattr(process, "sde", None)) == ("euler", "ve") else steps}


# --- guidance 1 samples each class's component, guidance 0 the whole mixture -------------

BLOB_LABELS = torch.arange(N_SAMPLES) % 4


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
    floor = lambda draws: np.mean(
        [classwise_distance(draws(blobs, BLOB_LABELS, a), draws(blobs, BLOB_LABELS, b), BLOB_LABELS) for a, b in seeds]
    )
    return {"own": float(floor(component_draws)), "whole": float(floor(mixture_draws))}


@pytest.mark.parametrize("solver", SOLVERS.names())
def test_guidance_one_samples_each_class_and_zero_the_mixture(process, solver, floors):
    """4x the floor: single draws reach 2x it, and 20 steps add up to about 1x more (subvp
    with euler-maruyama); the controls sit over 30x above it."""
    blobs = four_blobs()
    model = blobs.exact_model(process)
    draw = lambda guidance: genflow.sample(
        model, process, solver=solver, shape=(N_SAMPLES, 2), labels=BLOB_LABELS, guidance=guidance, **budget(process, solver)
    )
    conditional, unconditional = draw(1.0), draw(0.0)
    own, whole = component_draws(blobs, BLOB_LABELS, 100), mixture_draws(blobs, BLOB_LABELS, 101)
    assert classwise_distance(conditional, own, BLOB_LABELS) < 4 * floors["own"]
    assert classwise_distance(unconditional, whole, BLOB_LABELS) < 4 * floors["whole"]
    # controls: class k against the next class's component, and guidance 0 against the classes
    neighbour = component_draws(blobs, (BLOB_LABELS + 1) % 4, 100)
    assert classwise_distance(conditional, neighbour, BLOB_LABELS) > 100 * floors["own"]
    assert classwise_distance(unconditional, own, BLOB_LABELS) > 30 * floors["whole"]


# --- guidance S moves a Gaussian class to (1 - S) mu_u + S mu_c ----------------------------

CLASS_MEANS, NULL_MEAN, STD = ((1.0, 0.5), (0.25, -0.25)), (0.5, 0.0), 0.5
SCALE = 3.0
PER_CLASS = 400
FIRST_ORDER = ("euler", "ddim", "ancestral")
"""At 25 steps these miss the spread by up to 11% (ancestral on linear ddpm; Euler on VE far
more): discretization, which test_solvers bounds at 200 steps."""


def gaussian_classes(process):
    """Exact class-conditional model: class c is N(mu_c, s^2 I), the null label 2 is
    N(mu_u, s^2 I) (the components of a mixture, each picked by its label)."""
    model = GaussianMixture([*CLASS_MEANS, NULL_MEAN], STD).exact_model(process)
    conditional = lambda x, t, labels: model(x, t, labels)
    conditional.null_label = len(CLASS_MEANS)
    return conditional


def guided_mean(label: int, scale: float) -> torch.Tensor:
    """``(1 - S) mu_u + S mu_c``."""
    mean = lambda m: torch.tensor(m, dtype=torch.float64)
    return (1 - scale) * mean(NULL_MEAN) + scale * mean(CLASS_MEANS[label])


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 3.0, 7.5])
def test_a_guided_gaussian_class_is_the_gaussian_at_the_guided_mean(process, scale):
    """The identity itself, at every time, in each process's parameterization."""
    x = 3 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    guided = GuidedModel(gaussian_classes(process), torch.ones(64, dtype=torch.long), len(CLASS_MEANS), scale)
    closed_form = GaussianMixture([guided_mean(1, scale).tolist()], STD).exact_model(process)
    for t in np.linspace(process.t_min, 1, 9):
        time = torch.full((64,), float(t), dtype=torch.float64)
        torch.testing.assert_close(guided(x, time), closed_form(x, time), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("solver", SOLVERS.names())
def test_guidance_moves_a_gaussian_class_as_the_closed_form_says(process, solver):
    """At guidance S = 3 class c has mean (1 - S) mu_u + S mu_c and std s (within 4 standard
    errors, s / sqrt(n) and s / sqrt(2n)). Sample i of class 1 shares its seed with sample i of
    class 0, and is that sample moved by S (mu_1 - mu_0), to within the discretization (3% at
    25 steps): a check of S that no sampling noise blurs."""
    model = gaussian_classes(process)
    labels, seeds = class_rows(range(len(CLASS_MEANS)), PER_CLASS)
    options = {"labels": labels, "seed": seeds, "guidance": SCALE, "dtype": torch.float64, **budget(process, solver, 25)}
    samples = genflow.sample(model, process, solver=solver, shape=(len(labels), 2), **options)
    classes = samples.reshape(len(CLASS_MEANS), PER_CLASS, 2)
    for label, rows in enumerate(classes):
        assert (rows.mean(0) - guided_mean(label, SCALE)).abs().max() < 4 * STD / math.sqrt(PER_CLASS), label
        if solver not in FIRST_ORDER:
            assert (rows.std(0) / STD - 1).abs().max() < 4 / math.sqrt(2 * PER_CLASS), label
    shift = classes[1] - classes[0]
    torch.testing.assert_close(shift.mean(0), guided_mean(1, SCALE) - guided_mean(0, SCALE), rtol=0.04, atol=0)
    same_spread = 10 * ADAPTIVE_TOLERANCE if SOLVERS.get(solver).adaptive else 1e-9  # its steps follow the field
    assert shift.std(0).max() < same_spread


# --- each sample depends only on its label and its seed -----------------------------------


def guided_draws(labels, seed, batch_size=None, solver="euler-maruyama") -> torch.Tensor:
    """Blob samples of ``labels`` at guidance 2 (both halves in every call) on VP."""
    process = make_process("sde")
    model, options = four_blobs().exact_model(process), {"labels": labels, "seed": seed, "batch_size": batch_size}
    return genflow.sample(model, process, solver=solver, steps=12, shape=(len(labels), 2), guidance=2.0, **options)


@pytest.mark.parametrize("solver", ["euler-maruyama", "ancestral", "heun"])
def test_a_sample_depends_only_on_its_label_and_seed(solver):
    """Sample i draws all its noise from seed i (EDM's per-image seeds), so neither the batch
    size, nor its place in the batch, nor the classes of the others change it."""
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
    options = {"batch_size": batch, "stats": stats, **budget(process, solver, 10), **conditioning}
    genflow.sample(recorder, process, solver=solver, shape=(2 * batch, 2), **options)
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


def test_dopri5_evaluates_the_model_only_inside_its_grid():
    """A guided model guides only inside [0, 1]; torchdiffeq's dopri5 probed the field outside
    (VP: at t = -6.5 for its first step size, and below t_min at 10 steps, skipping step times
    after one it landed on exactly), where guidance silently stopped; genflow integrates each grid
    interval on its own, starting with a step as long as the interval."""
    for steps in (None, 10):
        process = make_process("sde")
        recorder = CallRecorder(four_blobs().exact_model(process))
        genflow.sample(recorder, process, solver="dopri5", steps=steps, shape=(3, 2))
        assert all(process.t_min <= t <= 1 for _, t in recorder.calls), sorted(t for _, t in recorder.calls)[:3]


def test_the_full_interval_guides_wherever_a_solver_asks():
    """Over the default interval every call is guided, even at times a solver strays outside
    [0, 1]; a narrower interval guides only inside itself."""
    guided = lambda interval: GuidedModel(NeverCalled(), torch.zeros(2, dtype=torch.long), 4, 2.0, interval)
    assert [guided((0.0, 1.0)).backbone_evaluations(t) for t in (-6.5, 0.0, 0.5, 1.0, 1.0 + 1e-12)] == [2] * 5
    assert [guided((0.2, 0.6)).backbone_evaluations(t) for t in (0.1, 0.2, 0.4, 0.6, 0.7)] == [1, 2, 2, 2, 1]


@pytest.mark.parametrize("solver", ["euler", "heun", "dpm++2m", "pc"])
def test_a_guidance_interval_doubles_only_the_steps_inside_it(solver):
    """Kynkaanniemi et al. 2024: both halves only for lo <= t <= hi, one elsewhere."""
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
    nfe, _ = recorded_sampling("euler", grid="uniform", labels=0, guidance=3.0, guidance_interval=(lo, hi))
    assert nfe == sum(1 + (lo <= t <= hi) for t in times) == 14


def test_the_guided_choice_at_an_interval_edge_is_made_from_the_exact_time():
    """The README's ``--guidance-interval 0.2,0.8`` on a 10-step uniform grid: 0.8 and 0.2 are grid
    times, inside the interval. The samples are float32, where 0.8 is 0.80000001: the choice is made
    once, from the float64 time, so every call that NFE counts as guided is guided."""
    nfe, recorder = recorded_sampling("euler", grid="uniform", steps=10, labels=0, guidance=3.0, guidance_interval=(0.2, 0.8))
    doubled = sum(rows == 6 for rows, _ in recorder.calls)
    assert nfe == 10 + 7 and doubled == 2 * 7  # 0.8, 0.7, ..., 0.2 guided, in both batches


@pytest.mark.parametrize("level", [0.05, 0.28, 1.0, 5.42, 40.0])
def test_the_time_of_a_noise_level_inverts_sigma_over_alpha(process, level):
    """Every path's noise level sigma/alpha grows with t; the time found has the level asked for,
    or is the end of the path where the level lies beyond it."""
    t = process.time_of_noise_level(level)
    lowest, highest = process.noise_level(0.0), process.noise_level(1.0)
    if lowest < level < highest:
        assert process.noise_level(t) == pytest.approx(level, rel=1e-9)
    else:
        assert t == (0.0 if level <= lowest else 1.0)


def test_a_noise_level_interval_means_the_same_noise_for_every_process():
    """EDM2's interval (0.28, 5.42] in sigma: the same signal-to-noise ratios on every path, at
    other times on each (rectified flow: t = sigma / (1 + sigma))."""
    interval = parse_interval("sigma=0.28,5.42")
    assert interval.times(make_process("rectified-flow")) == pytest.approx((0.28 / 1.28, 5.42 / 6.42), abs=1e-12)
    for process in (make_process("ddpm"), make_process("sde", sde="vp"), make_process("cnf")):
        low, high = interval.times(process)
        assert (process.noise_level(low), process.noise_level(high)) == pytest.approx((0.28, 5.42), rel=1e-9)
    assert parse_interval("0.2,0.8").times(make_process("ddpm")) == (0.2, 0.8)


class LabelRecorder:
    """A conditional model that records the labels of every call."""

    null_label = 4

    def __init__(self) -> None:
        self.labels: list[list[int]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.labels.append(labels.tolist())
        return torch.zeros_like(x)


@pytest.mark.parametrize(("scale", "inside"), [(0.0, [4, 4]), (1.0, [1, 2])])
def test_guidance_0_or_1_inside_the_interval_and_the_conditional_model_outside(scale, inside):
    """Guidance 0 is the unconditional model inside the interval only; outside it, as for every
    scale, the conditional model (one evaluation either way)."""
    recorder = LabelRecorder()
    guided = GuidedModel(recorder, torch.tensor([1, 2]), recorder.null_label, scale, (0.2, 0.6))
    for t in (0.1, 0.4, 0.7):
        guided(torch.zeros(2, 2), torch.full((2,), t))
    assert recorder.labels == [[1, 2], inside, [1, 2]]
    assert [guided.backbone_evaluations(t) for t in (0.1, 0.4, 0.7)] == [1, 1, 1]


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


def test_label_dropout_needs_a_null_label():
    objective = DenoisingObjective(make_process("rectified-flow"), label_dropout=0.1)
    with pytest.raises(GenflowError, match="needs a class-conditional model"):
        objective.drop_labels(torch.zeros(4, dtype=torch.long), torch.Generator())


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
    batch = objective.draw({"images": torch.randn(8, 1, 2, 2), "labels": labels}, torch.Generator().manual_seed(0))
    objective.loss(model, batch)
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


BAD_ARGUMENTS = {
    "negative guidance": ({"labels": 0, "guidance": -1.0}, "guidance must be a finite number >= 0"),
    "infinite guidance": ({"labels": 0, "guidance": math.inf}, "guidance must be a finite number >= 0"),
    "nan guidance": ({"labels": 0, "guidance": math.nan}, "guidance must be a finite number >= 0"),
    "empty interval": ({"labels": 0, "guidance_interval": (0.5, 0.5)}, "0 <= LO < HI <= 1"),
    "reversed interval": ({"labels": 0, "guidance_interval": (0.8, 0.2)}, "0 <= LO < HI <= 1"),
    "interval below 0": ({"labels": 0, "guidance_interval": (-0.1, 0.5)}, "0 <= LO < HI <= 1"),
    "interval above 1": ({"labels": 0, "guidance_interval": (0.2, 1.5)}, "0 <= LO < HI <= 1"),
    "three times": ({"labels": 0, "guidance_interval": (0.1, 0.2, 0.3)}, "two times LO,HI"),
    "class too high": ({"labels": 4}, r"class 4 is out of range: this model has classes 0\.\.3"),
    "negative class": ({"labels": [0, -1]}, r"class -1 is out of range"),
    "too many labels": ({"labels": [0, 1, 2]}, r"one whole number or 2 of them"),
    "fractional labels": ({"labels": [0.0, 1.0]}, r"one whole number or 2 of them"),
    "guidance without labels": ({"guidance": 2.0}, "guidance needs labels"),
}


@pytest.mark.parametrize("arguments, message", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_guidance_arguments_fail_before_sampling(arguments, message):
    with pytest.raises(GenflowError, match=message):
        genflow.sample(NeverCalled(), "rectified-flow", shape=(2, 2), **arguments)


def test_labels_need_a_conditional_model():
    with pytest.raises(GenflowError, match="labels need a class-conditional model"):
        genflow.sample(never_called_unconditional, "rectified-flow", shape=(2, 2), labels=0)


def test_guidance_without_a_null_label_is_refused():
    with pytest.raises(GenflowError, match="needs a model trained with label dropout"):
        GuidedModel(never_called_unconditional, torch.zeros(2, dtype=torch.long), None, scale=2.0)


# --- log-likelihood given a class --------------------------------------------------------


@pytest.mark.parametrize("name", ["rectified-flow", "sde"])
def test_likelihood_given_a_class_is_its_component_density(name):
    """log p(x | k) is component k's Gaussian density at t_min (as test_metrics checks for one
    Gaussian: 0.01 nats per dimension on average); without labels, the mixture's, which is
    about log 2 lower at these well-separated points, so ignored labels would fail."""
    process, means = make_process(name), [[1.0, -1.0], [-1.0, 0.5]]
    mixture, classes = GaussianMixture(means, std=0.4), torch.arange(24) % 2
    x = component_draws(mixture, classes, seed=0)
    c = process.coefficients(process.t_min)
    component = lambda k: GaussianMixture([means[k]], mixture.std).log_prob(x, c.alpha, c.sigma)
    own = torch.where(classes == 0, component(0), component(1))
    whole = mixture.log_prob(x, c.alpha, c.sigma)
    per_dim_error = lambda ours, exact: float((ours - exact).abs().mean()) / 2
    model = mixture.exact_model(process)
    assert per_dim_error(log_likelihood(model, process, x, labels=classes), own) < 0.01
    assert per_dim_error(log_likelihood(model, process, x[classes == 1], labels=1), own[classes == 1]) < 0.01
    assert per_dim_error(log_likelihood(model, process, x), whole) < 0.01
    assert per_dim_error(whole, own) > 0.3  # control: log 2 / 2


def test_likelihood_checks_labels_like_sampling():
    x = torch.zeros(2, 2)
    with pytest.raises(GenflowError, match="class 4 is out of range"):
        log_likelihood(NeverCalled(), "rectified-flow", x, labels=4)
    with pytest.raises(GenflowError, match="labels need a class-conditional model"):
        log_likelihood(never_called_unconditional, "rectified-flow", x, labels=0)
