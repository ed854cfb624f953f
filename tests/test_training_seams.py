"""The seams of the training path: a batch is a mapping whose entries stay aligned, the loss
comes from any objective without touching the loop, and every process and solver option
reaches the command line from its registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, expect_usage_error, invoke

import genflow
from genflow import api
from genflow.config import TrainConfig
from genflow.errors import GenflowError
from genflow.train import Trainer, TrainingData

OLD_RUN = Path(__file__).parent / "fixtures" / "v0.1-rectified-flow"


def test_a_batch_is_a_mapping_whose_entries_stay_aligned_across_epochs():
    images = torch.randn(10, 1, 2, 2)
    stream = TrainingData({"images": images, "labels": torch.arange(10)}).batches(batch_size=4, seed=0)
    seen = []
    for _ in range(6):  # three epochs of two batches (the last two images of each epoch are left out)
        batch = stream.next()
        assert batch.keys() == {"images", "labels"}
        assert torch.equal(batch["images"], images[batch["labels"]])
        seen.append(batch["labels"])
    assert all(len(set(torch.cat(seen[i : i + 2]).tolist())) == 8 for i in (0, 2, 4))


class ToTargets:
    """Regress the network's output at t = 1/2 onto ``batch["targets"]``, an objective the loop
    has never heard of; it checks that its batch entries arrive aligned."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def draw(self, batch, generator):
        return batch

    def loss(self, model, batch):
        assert torch.equal(batch["targets"], -batch["images"])
        t = torch.full((len(batch["images"]),), 0.5)
        error = ((model(batch["images"], t) - batch["targets"]) ** 2).flatten(1).mean(1)
        self.losses.append(float(error.detach().mean()))
        return error


def test_any_objective_trains_through_the_same_loop(tmp_path):
    config = TrainConfig.from_dict({"steps": 20, "batch_size": 32, "lr": 3e-3, "warmup_steps": 2, "sample_every": 0,
                                    "sample_steps": 2, "checkpoint_every": 0, "device": "cpu", "model": TINY_MODEL})  # fmt: skip
    setup = api.prepare(config)
    setup.objective = objective = ToTargets()
    images = setup.data.tensors["images"]
    setup.data = TrainingData({"images": images, "targets": -images})
    (tmp_path / "samples").mkdir()
    Trainer(setup, tmp_path).run()
    assert len(objective.losses) == 20 and sum(objective.losses[-5:]) < 0.5 * sum(objective.losses[:5])
    assert (tmp_path / "ema.safetensors").is_file() and (tmp_path / "checkpoints" / "step-00000020").is_dir()


def test_every_process_option_and_solver_option_is_a_flag():
    train_help = invoke("train", "--help").stdout
    for name in genflow.PROCESSES.names():
        cls = genflow.PROCESSES.get(name)
        for field in cls.option_fields():
            assert f"--{field.name.replace('_', '-')}" in train_help, field.name
    for command in ("sample", "eval"):
        help_text = invoke(command, "--help").stdout
        for solver in genflow.SOLVERS.names():
            for option in genflow.SOLVERS.get(solver).options:
                assert f"--{option.replace('_', '-')}" in help_text, (command, option)


@pytest.mark.parametrize("flag", ["--schedule", "--beta-schedule"])
def test_process_flags_reach_the_process(flag, tmp_path):
    result = invoke("train", "--process", "ddpm", flag, "quadratic", "--out", tmp_path / "run")
    expect_usage_error(result, "beta_schedule must be one of linear, scaled-linear, cosine, not 'quadratic'")
    assert not (tmp_path / "run").exists()


def test_solver_flags_reach_the_solver_in_sample_and_eval(tmp_path):
    run = shutil.copytree(OLD_RUN, tmp_path / "run")
    expect_usage_error(
        invoke("sample", run, "--solver", "euler", "--rtol", "0.1", "--out", tmp_path / "a.png"),
        "solver 'euler' takes no options",
    )
    expect_usage_error(invoke("eval", run, "--solver", "dopri5", "--atol", "-1"), "atol must be > 0")
    arrays = []
    for eta in ("0", "0.8"):
        out = tmp_path / f"eta-{eta}.npz"
        assert invoke("sample", run, "--solver", "ddim", "--eta", eta, "--steps", "3", "--n", "4", "--out", out).exit_code == 0
        arrays.append(np.load(out)["arr_0"])
    assert np.abs(arrays[0].astype(int) - arrays[1].astype(int)).max() > 10  # eta = 0.8 injects noise


def test_a_refused_resume_names_the_option_that_changed(tmp_path):
    config = TrainConfig.from_dict({"process": "sde", "steps": 2, "batch_size": 16, "warmup_steps": 1, "sample_every": 0,
                                    "sample_steps": 2, "device": "cpu", "model": TINY_MODEL})  # fmt: skip
    run = api.train(config, tmp_path / "run")
    record = json.loads((run / "config.json").read_text())
    assert record["process"] == {"name": "sde", "options": {"prediction": "eps", "sde": "vp", "beta_min": 0.1, "beta_max": 20.0}}
    assert not {"process", "process_options", "model"} & record["train"].keys()  # each recorded once
    for options, message in (
        ({"sde": "ve"}, "process option sde is 'vp', not 've'"),
        ({"beta_max": 10.0}, "beta_max is 20.0, not 10.0"),
    ):
        with pytest.raises(GenflowError, match=message):
            api.resume(run, {"process_options": options})
