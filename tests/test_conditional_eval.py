"""``genflow eval`` and ``genflow sweep`` on class-conditional runs: class agreement, per-class
Frechet distance beside per-class floors, guidance as a sweep axis; unconditional runs unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import TINY_MODEL, expect_usage_error, invoke

import genflow
from genflow import api
from genflow.config import TrainConfig
from genflow.eval import scoring

DIGITS = [str(k) for k in range(10)]
UNCONDITIONAL_KEYS = {"run", "process", "solver", "grid", "steps", "nfe", "seconds", "n", "fd", "fd_floor", "fd_fresh", "fd_spread", "kid",
                      "kid_floor", "kid_fresh", "precision", "recall", "memorized"}  # fmt: skip


@pytest.fixture(scope="module")
def unconditional_run(tmp_path_factory) -> Path:
    """A tiny unconditional rectified-flow run on the digits (20 steps: only its outputs' shape matters)."""
    config = TrainConfig(
        steps=20, batch_size=32, warmup_steps=2, sample_every=0, final_grid=False, device="cpu", model=TINY_MODEL
    )
    return api.train(config, tmp_path_factory.mktemp("unconditional") / "run")


@pytest.fixture(scope="module")
def scores(conditional_run) -> dict[float, dict]:
    """``genflow eval --json`` of the conditional run at guidance 0 (unconditional samples
    assigned to classes), 1 (the conditional model) and 2, with the same 200 seeds."""

    def at(guidance: float) -> dict:
        result = invoke("eval", conditional_run, "--n", 200, "--solver", "euler", "--steps", 10, "--guidance", guidance, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    return {guidance: at(guidance) for guidance in (0.0, 1.0, 2.0)}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, conditional_run, unconditional_run) -> tuple[list[dict], str, Path]:
    """One sweep over both runs at guidance 1 and 2: its rows, its progress notes, its folder."""
    out = tmp_path_factory.mktemp("sweep")
    runs = (conditional_run, unconditional_run)
    result = invoke("sweep", *runs, "--solvers", "euler", "--steps", "2,4", "--guidance", "1,2", "--n", 100, "--out", out)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()], result.stderr, out


def test_class_agreement_is_well_above_chance_and_guidance_raises_it(scores):
    agreement = {guidance: result["class_agreement"] for guidance, result in scores.items()}
    assert agreement[0.0] < 0.4 and 0.6 < agreement[1.0] <= agreement[2.0], agreement  # chance is 0.1
    assert set(scores[1.0]["class_agreement_per_class"]) == set(DIGITS)
    assert scores[1.0]["class_agreement"] == pytest.approx(sum(scores[1.0]["class_agreement_per_class"].values()) / 10)
    assert [result["guidance"] for result in scores.values()] == [0.0, 1.0, 2.0]
    assert [result["nfe"] for result in scores.values()] == [10, 10, 20]  # a guided step costs two evaluations


def test_per_class_fd_covers_every_class_beside_a_finite_floor(scores):
    result = scores[1.0]
    for key in ("fd_per_class", "fd_floor_per_class", "fd_fresh_per_class"):
        assert list(result[key]) == DIGITS and all(math.isfinite(v) and v > 0 for v in result[key].values()), key
        assert result[f"{key}_mean"] == pytest.approx(sum(result[key].values()) / 10)
    assert result["fd_floor_per_class"] == scores[2.0]["fd_floor_per_class"]  # the floor depends on the data only
    assert result["n"] == 200 and result["fd_floor"] < result["fd"]


def test_guided_samples_are_nearer_their_class_than_unconditional_samples(scores):
    """Unconditional samples assigned to classes are mostly other digits: per-class FD several
    times that of the conditional model (about 146 against 24 and 44 at guidance 2)."""
    unconditional = scores[0.0]["fd_per_class_mean"]
    assert scores[1.0]["fd_per_class_mean"] < unconditional / 2 and scores[2.0]["fd_per_class_mean"] < unconditional / 2


def test_class_subset_is_scored_against_those_classes_only(conditional_run):
    common = ("eval", conditional_run, "--class", "3,5", "--n", 40, "--steps", 4)
    result = json.loads(invoke(*common, "--json").stdout)
    assert list(result["fd_per_class"]) == list(result["class_agreement_per_class"]) == ["3", "5"]
    table = invoke(*common).stdout
    assert "class agreement" in table and "per-class FD (mean of 2)" in table and "guidance 1" in table


def test_counts_and_conditioning_are_refused_before_data_or_sampling(conditional_run, unconditional_run, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("loaded the real data or sampled before refusing")

    monkeypatch.setattr(genflow, "sample", never)
    expect_usage_error(invoke("eval", conditional_run, "--n", 898), "between 20 and 870", "class 0")  # 90 of its 178
    expect_usage_error(invoke("eval", conditional_run, "--n", 10), "between 20 and 870")
    expect_usage_error(invoke("eval", conditional_run, "--class", "12"), "out of range")
    expect_usage_error(invoke("eval", conditional_run, "--guidance", "-1"), "guidance must be")
    expect_usage_error(invoke("eval", "--samples", "x.npz", "--guidance", "2"), "--samples")
    monkeypatch.setattr(scoring, "load_labelled_dataset", never)
    for flags in (("--class", "3"), ("--guidance", "2")):
        expect_usage_error(invoke("eval", unconditional_run, "--n", 100, *flags), "is unconditional")


def test_unconditional_eval_json_has_no_new_keys(unconditional_run):
    result = json.loads(invoke("eval", unconditional_run, "--n", 100, "--steps", 2, "--json").stdout)
    assert set(result) == UNCONDITIONAL_KEYS


def test_sweep_has_a_guidance_axis_with_nfe_doubled_and_class_agreement(sweep, conditional_run):
    rows, _, out = sweep
    mine = [r for r in rows if r["run"] == str(conditional_run)]
    assert [(r["guidance"], r["steps"], r["nfe"]) for r in mine] == [(1, 2, 2), (1, 4, 4), (2, 2, 4), (2, 4, 8)]
    assert all(0 <= r["class_agreement"] <= 1 for r in mine)
    assert (out / "sweep.csv").read_text().splitlines()[0].endswith(",guidance,class_agreement")
    assert (out / "sweep.png").stat().st_size > 10_000


def test_sweep_skips_guidance_for_an_unconditional_run_with_a_note(sweep, unconditional_run):
    rows, notes, out = sweep
    theirs = [r for r in rows if r["run"] == str(unconditional_run)]
    assert [(r["guidance"], r["steps"], r["class_agreement"]) for r in theirs] == [(1, 2, None), (1, 4, None)]
    assert f"skipped {unconditional_run} / guidance 2: the run is unconditional" in notes
    assert (out / "sweep.csv").read_text().splitlines()[-1].endswith(",1.0,")  # empty class agreement
