"""Metrics, likelihood and sweeps: closed forms, orderings, determinism, the CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROCESS_CONFIGS, PROCESS_IDS, expect_usage_error, invoke
from sklearn.datasets import load_digits as sklearn_digits
from sklearn.model_selection import train_test_split
from torch import nn

import genflow
from genflow import api
from genflow.config import TrainConfig
from genflow.data.datasets import load_digits
from genflow.eval.metrics import (
    DIGITS_CLASSIFIER_CARD,
    evaluate,
    extract_features,
    frechet_distance,
    kernel_distance,
    load_digits_classifier,
    memorization,
    precision_recall,
)
from genflow.sampling.likelihood import bits_per_dim, dequantize, log_likelihood
from genflow.toy import GaussianMixture


@pytest.mark.parametrize("name, options", PROCESS_CONFIGS, ids=PROCESS_IDS)
def test_likelihood_of_gaussian_data_is_the_closed_form(name, options):
    """Under the exact model the flow maps N(mu, s^2) at t_min to the prior; the ODE's
    log-density must match the Gaussian's (up to the prior's N(0, sigma(1)^2) approximation)."""
    process = genflow.make_process(name, **options)
    data = GaussianMixture([[1.0, -0.5, 0.3]], std=0.5)
    x = data.sample(48, torch.Generator().manual_seed(0))
    c = process.coefficients(process.t_min)
    exact = data.log_prob(x, c.alpha, c.sigma)
    ours = log_likelihood(data.exact_model(process), process, x)
    assert ours.shape == (48,)
    assert float((ours - exact).abs().mean()) / 3 < 0.01
    assert abs(float(ours.mean() - exact.mean())) / 3 < 0.002


def test_hutchinson_estimate_is_unbiased_and_heun_agrees():
    process = genflow.make_process("rectified-flow")
    data = GaussianMixture([[1.0, -1.0, 0.0, 2.0], [-1.0, 1.0, 0.5, -2.0]], std=0.4)
    x = data.sample(256, torch.Generator().manual_seed(1))
    exact = data.log_prob(x)
    hutchinson = log_likelihood(data.exact_model(process), process, x, divergence="hutchinson")
    heun = log_likelihood(data.exact_model(process), process, x, method="heun", steps=50)
    assert abs(float(hutchinson.mean() - exact.mean())) / 4 < 0.01
    assert float((hutchinson - exact).abs().mean()) > float((heun - exact).abs().mean())  # single-probe noise is real
    assert float((heun - exact).abs().mean()) / 4 < 0.01


def test_bits_per_dim_of_uniform_levels_is_log2_levels():
    """A density uniform over K bins of width w: log p = -D log(K w), so bpd = log2 K."""
    levels, dims = 17, 64
    x, width = dequantize(torch.zeros(10, dims), levels, torch.Generator().manual_seed(0))
    assert width == pytest.approx(2 / 16)
    assert float((x.abs() <= width / 2).float().mean()) == 1.0
    log_px = torch.full((10,), -dims * math.log(levels * width))
    torch.testing.assert_close(bits_per_dim(log_px, dims, width), torch.full((10,), math.log2(levels)))


def test_shipped_classifier_matches_its_card():
    card = json.loads(DIGITS_CLASSIFIER_CARD.read_text())
    classifier = load_digits_classifier()  # checks the sha256
    digits = sklearn_digits()
    _, test_idx = train_test_split(range(len(digits.target)), test_size=0.25, stratify=digits.target, random_state=0)
    images = load_digits()[test_idx]
    with torch.no_grad():
        accuracy = float((classifier(images).argmax(1) == torch.from_numpy(digits.target[test_idx])).float().mean())
    assert accuracy == pytest.approx(card["test_accuracy"], abs=1e-4) and accuracy > 0.95


def test_frechet_distance_closed_form_and_kid_near_zero_for_one_distribution():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=generator, dtype=torch.float64)
    b = torch.randn(4000, 3, generator=generator, dtype=torch.float64) * 2 + 1
    # N(0, I) vs N(1, 4 I): |mu|^2 + tr(I + 4I - 2 * 2I) = 3 + 3
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)
    same = torch.randn(4000, 3, generator=generator, dtype=torch.float64)
    assert abs(kernel_distance(a, same)) < 0.01 < kernel_distance(a, b)


class FlattenFeatures(nn.Module):
    """The pixels as features, so Gaussian 'images' are Gaussian features."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # extract_features reads the device from a parameter

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def test_training_images_resampled_score_the_floor_and_fresh_images_score_above_it():
    """A model that reproduces its training data exactly (here: draws from it) is scored at the
    floor on average, not below it; fresh real images, outside the reference its training data
    contains, score about 4/3 of it (FD's sampling terms 2/n against 1/n + 1/(2n) at n = N/2),
    and their KID (an unbiased estimate of MMD^2 = 0 between one distribution) averages 0 with
    negative draws, while the copy's KID is below 0 (Binkowski et al. 2018, eq. 4)."""
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(200, 1, 2, 2, generator=generator)
    reports = []
    for seed in range(20):
        copy = real[torch.randint(len(real), (100,), generator=generator)]
        reports.append(evaluate(copy, real, FlattenFeatures(), seed=seed).to_dict())
    mean = {key: float(np.mean([r[key] for r in reports])) for key in reports[0]}
    assert 0.8 < mean["fd"] / mean["fd_floor"] < 1.25, mean
    assert mean["fd_fresh"] > 1.1 * mean["fd_floor"], mean
    fresh_kids = [r["kid_fresh"] for r in reports]
    assert abs(mean["kid_fresh"]) < 3 * np.std(fresh_kids) / len(fresh_kids) ** 0.5 and min(fresh_kids) < 0 < max(fresh_kids)
    assert mean["kid_floor"] < 0 and mean["kid"] < 0


def test_precision_recall_and_memorization_extremes():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(300, 8, generator=generator, dtype=torch.float64)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, real + 100) == (0.0, 0.0)
    images = load_digits()[:400]
    assert memorization(images, images) == 1.0
    assert memorization(torch.rand(100, 1, 8, 8) * 2 - 1, images) == 0.0


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """The same tiny backbone trained 20 and 300 steps on the digits."""
    root = tmp_path_factory.mktemp("metric-runs")
    model = {"block_channels": [16, 32], "attention": [False, False], "norm_groups": 8}
    runs = {}
    for steps in (20, 300):
        config = TrainConfig(steps=steps, batch_size=64, lr=3e-3, warmup_steps=10, sample_every=0, log_every=10, model=model)
        runs[steps] = api.load(api.train(config, root / f"steps-{steps}"), device="cpu")
    return runs


def test_distances_order_real_trained_barely_trained_noise(trained_runs):
    real, classifier = load_digits(), load_digits_classifier()
    n = 400
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))
    half_a, half_b = real[order[:n]], real[order[n : 2 * n]]

    def fd(images):
        return frechet_distance(extract_features(classifier, images), extract_features(classifier, half_a))

    trained, _ = api.sample_run(trained_runs[300], n, "heun", 10)
    barely, _ = api.sample_run(trained_runs[20], n, "heun", 10)
    noise = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    scores = [fd(half_b), fd(trained), fd(barely), fd(noise)]
    assert scores == sorted(scores), scores


def test_eval_cli_prints_scores_with_floors_and_is_deterministic(trained_runs):
    run = trained_runs[300].path
    first = json.loads(invoke("eval", run, "--n", "200", "--steps", "4", "--solver", "euler", "--json").stdout)
    second = json.loads(invoke("eval", run, "--n", "200", "--steps", "4", "--solver", "euler", "--json").stdout)
    assert first == {**second, "seconds": first["seconds"]}
    assert 0 < first["fd_floor"] < first["fd"] and first["nfe"] == 4
    table = invoke("eval", run, "--n", "100", "--steps", "2", "--nll", "--nll-n", "2", "--nll-steps", "2").stdout
    assert "floor: training" in table and "fresh real" in table and "NLL (bits/dim)" in table
    assert "its spread (1 sd)" in table
    small = json.loads(invoke("eval", run, "--n", "100", "--steps", "2", "--json").stdout)
    overlap = small["fd_fresh"] - small["fd_floor"] < 2 * small["fd_spread"]
    assert ("the floor and the fresh score lie within twice the spread" in table) == overlap
    expect_usage_error(invoke("eval", run, "--n", "1000"), "n must be at most 898")


def test_the_floor_reports_its_spread_which_shrinks_with_n():
    """At small n one draw of n real images moves FD by more than the gap between the yardsticks
    (issue 31: at n = 200 the fresh score fell below the floor); the spread says by how much."""
    real, classifier = load_digits(), load_digits_classifier()
    spreads = {}
    for n in (100, 800):
        report = evaluate(real[:n], real, classifier, seed=0)
        spreads[n] = report.fd_spread
        assert report.fd_spread > 0
    assert spreads[100] > 2 * spreads[800], spreads


def test_eval_refuses_unusable_counts_before_loading_or_sampling(tmp_path, monkeypatch):
    """Too few samples for the k-NN balls, or more than half the real data, is one line naming
    the bound, before the run is loaded (too few) or sampled (too many)."""
    run = shutil.copytree(Path(__file__).parent / "fixtures" / "v0.1-rectified-flow", tmp_path / "run")

    def never(*args, **kwargs):
        raise AssertionError("loaded or sampled before the count was checked")

    monkeypatch.setattr(genflow, "sample", never)
    monkeypatch.setattr(api, "sample_run", never)
    for n in (1, 2, 3):
        with monkeypatch.context() as patch:
            patch.setattr(api, "load", never)
            expect_usage_error(invoke("eval", run, "--n", n), "--n must be >= 4", f"not {n}")
    expect_usage_error(invoke("eval", run, "--n", 2000), "n must be at most 898", "not 2000")
    few = tmp_path / "few.npz"
    np.savez(few, np.zeros((3, 8, 8, 1), dtype=np.uint8))
    expect_usage_error(invoke("eval", "--samples", few), "must be >= 4", "not 3")


def test_nll_is_finite_and_better_for_the_better_model(trained_runs):
    """Bits/dim of the digits: below the uniform code (log2 17) and lower after more training."""
    trained = api.negative_log_likelihood(trained_runs[300], n=6, steps=6)["nll_bits_per_dim"]
    barely = api.negative_log_likelihood(trained_runs[20], n=6, steps=6)["nll_bits_per_dim"]
    assert 0 < trained < barely and trained < math.log2(17)


def test_sweep_writes_table_and_plot(trained_runs, tmp_path):
    (tmp_path / "latest").symlink_to(trained_runs[300].path)
    runs = [trained_runs[20].path, tmp_path / "latest"]
    result = invoke("sweep", *runs, "--solvers", "euler,euler-maruyama,dopri5", "--steps", "1,2", "--n", "100", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "sweep.jsonl").read_text().splitlines()]
    # euler-maruyama samples flows with g = sigma(t); adaptive dopri5 runs once, at its own steps
    points = [("euler", 1), ("euler", 2), ("euler-maruyama", 1), ("euler-maruyama", 2), ("dopri5", 1)]
    assert [(r["solver"], r["steps"]) for r in rows] == points * 2
    assert [r["run"] for r in rows[5:]] == [str(trained_runs[300].path)] * 5  # the run itself, not the link
    assert (tmp_path / "sweep.csv").read_text().startswith("run,process,solver,grid,steps,nfe,seconds,fd")
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    assert len({r["fd_floor"] for r in rows}) == 1
    expect_usage_error(invoke("sweep", *runs, "--steps", "1", "--out", tmp_path), "--overwrite")
    expect_usage_error(invoke("sweep", *runs, "--steps", "one", "--out", tmp_path / "x"), "comma-separated")
    expect_usage_error(invoke("sweep", *runs, "--solvers", "euler,bogus", "--steps", "1", "--out", tmp_path / "y"), "unknown solver 'bogus'")
    assert not (tmp_path / "y").exists()  # refused before euler was sampled


def test_eval_every_logs_the_distance(tmp_path):
    model = {"block_channels": [16, 32], "attention": [False, False], "norm_groups": 8}
    config = TrainConfig(steps=20, batch_size=32, sample_every=0, log_every=10, eval_every=10, eval_n=100, sample_steps=2, model=model)
    run = api.train(config, tmp_path / "run")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in records if "fd" in r]
    assert [r["step"] for r in scored] == [10, 20] and all(np.isfinite(r["fd"]) and r["fd_floor"] > 0 for r in scored)
    too_many = TrainConfig(steps=20, eval_every=10, eval_n=1000, model=model)
    with pytest.raises(genflow.GenflowError, match="eval_n must be at most 898"):
        api.train(too_many, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()  # refused before anything was written


def test_eval_scores_an_npz_from_any_program(tmp_path):
    real = load_digits()
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(5))
    good, noise = tmp_path / "real.npz", tmp_path / "noise.npz"
    np.savez(good, ((real[order[:300]] + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    np.savez(noise, np.random.default_rng(0).integers(0, 256, (300, 8, 8, 1), dtype=np.uint8))
    scores = {p.name: json.loads(invoke("eval", "--samples", p, "--json").stdout) for p in (good, noise)}
    assert scores["real.npz"]["fd"] < 2 * scores["real.npz"]["fd_floor"] < scores["noise.npz"]["fd"]
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, np.zeros((10, 28, 28, 1), dtype=np.uint8))
    expect_usage_error(invoke("eval", "--samples", wrong), "shape (1, 28, 28)")
    expect_usage_error(invoke("eval", "--samples", tmp_path / "none.npz"), "does not exist")
    (tmp_path / "pickle.npz").write_bytes(b"\x80\x04not an npz")
    expect_usage_error(invoke("eval", "--samples", tmp_path / "pickle.npz"), "not an .npz")
    np.savez(tmp_path / "objects.npz", np.array([{"a": 1}], dtype=object))
    refused = invoke("eval", "--samples", tmp_path / "objects.npz")
    expect_usage_error(refused, "Python objects, which genflow never unpickles")
    assert "allow_pickle" not in refused.stderr  # numpy's advice to unpickle is not ours to repeat


def test_sweep_plots_label_log_axes_with_plain_numbers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genflow.eval.sweeps import plain_log_labels

    figure, axes = plt.subplots()
    axes.plot([1, 2, 4, 10, 20], [3.0, 2.5, 1.5, 1.2, 1.0])
    axes.set(xscale="log", yscale="log")
    plain_log_labels(axes, [1, 2, 4, 10, 20])
    figure.canvas.draw()
    shown = [t.get_text() for t in (*axes.get_xticklabels(), *axes.get_yticklabels(), *axes.get_yticklabels(minor=True)) if t.get_text()]
    plt.close(figure)
    assert [t.get_text() for t in axes.get_xticklabels()] == ["1", "2", "4", "10", "20"]
    assert "2" in shown and "3" in shown and not any("10^" in t or "times" in t or "e" in t for t in shown), shown
