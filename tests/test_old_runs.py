"""A run written by genflow 0.1 (before the restructure; ``fixtures/make_v0_1_run.py``) still
samples, scores, shows and resumes, and training today follows the same numbers it did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import invoke
from safetensors.torch import load_file

from genflow import api
from genflow.runs.files import read_run

FIXTURE = Path(__file__).parent / "fixtures" / "v0.1-rectified-flow"


@pytest.fixture
def old_run(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "old"))


def assert_close_weights(a: Path, b: Path) -> None:
    """Equal up to float reduction order (the fixture was made on another machine, perhaps)."""
    first, second = load_file(str(a)), load_file(str(b))
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=1e-6, msg=name)


def test_an_old_run_samples_scores_and_shows(old_run, tmp_path):
    loaded = api.load(old_run, device="cpu")
    stored = load_file(str(old_run / "ema.safetensors"))
    assert all(torch.equal(v, stored[k]) for k, v in loaded.model.backbone.state_dict().items())
    assert loaded.process.name == "rectified-flow" and loaded.config["train"]["steps"] == 4
    assert invoke("sample", old_run, "--n", "4", "--steps", "2", "--out", tmp_path / "s.npz").exit_code == 0
    scored = invoke("eval", old_run, "--n", "32", "--steps", "2", "--json")
    assert scored.exit_code == 0 and json.loads(scored.stdout)["fd"] > 0
    shown = invoke("info", old_run)
    assert shown.exit_code == 0 and "step-00000004 (finished)" in shown.stdout


@pytest.fixture
def fixture_threads():
    """The fixture was trained with two intra-op threads. Another count sums in another order,
    and biases followed by a group norm, whose gradient is exactly zero but for rounding, then
    take Adam steps of about the learning rate in other directions (0.002 apart after 4 steps
    with one thread): the same run, not the same numbers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_training_today_follows_the_old_run_and_resumes_it(old_run, tmp_path, fixture_threads):
    config = read_run(old_run).train_config()  # its 0.1 config.json, read in today's form
    today = api.train(config, tmp_path / "today")
    for name in ("ema.safetensors", "model.safetensors"):
        assert_close_weights(today / name, old_run / name)
    for run in (old_run, today):
        api.resume(run, {"steps": 6})
    for name in ("ema.safetensors", "model.safetensors"):
        assert_close_weights(today / name, old_run / name)
    record = json.loads((old_run / "config.json").read_text())  # rewritten in today's form by the resume
    assert record == json.loads((today / "config.json").read_text())
    assert not {"process", "process_options", "model"} & record["train"].keys()
