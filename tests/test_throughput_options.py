"""The throughput and memory options (bf16 autocast, gradient accumulation, gradient
checkpointing, torch.compile) each train, save and resume to the same weights as an
uninterrupted run; gradient checkpointing changes no gradient; a global batch that does not
split into processes x accumulation steps is refused before anything is written."""

from __future__ import annotations

import signal

import pytest
import torch
from conftest import TINY_DIT, TINY_MODEL, expect_usage_error, invoke
from safetensors.torch import load_file

import genflow
from genflow import api
from genflow.config import TrainConfig
from genflow.errors import TrainingInterrupted
from genflow.nn import Preconditioner, backbone_from_dict
from genflow.train import DenoisingObjective, Trainer

OPTIONS = {
    "bf16": {"precision": "bf16"},
    "grad-accumulation": {"grad_accumulation": 2},
    "gradient-checkpointing": {"gradient_checkpointing": True},
    "compile": {"compile": True},  # traced by dynamo and AOTAutograd; GENFLOW_COMPILE_BACKEND=aot_eager skips codegen
}


BACKBONES = {"unet": TINY_MODEL, "dit": TINY_DIT}


def config(model: dict = TINY_MODEL, **options: object) -> TrainConfig:
    return TrainConfig(steps=6, batch_size=16, lr=3e-3, warmup_steps=1, sample_every=0, checkpoint_every=0, final_grid=False,
                       device="cpu", model=model, **options)  # fmt: skip


def interrupt_at(step: int, monkeypatch) -> None:
    """SIGINT to this process right after ``step``, as a Ctrl-C would arrive."""
    original = Trainer.step

    def step_then_interrupt(self):
        loss = original(self)
        if self.state.step == step:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(Trainer, "step", step_then_interrupt)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("name", OPTIONS)
def test_each_option_trains_saves_and_resumes_to_the_uninterrupted_run(name, backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("GENFLOW_COMPILE_BACKEND", "aot_eager")
    options, model = OPTIONS[name], BACKBONES[backbone]
    straight = api.train(config(model, **options), tmp_path / "straight")
    with monkeypatch.context() as patched:
        interrupt_at(3, patched)
        with pytest.raises(TrainingInterrupted, match="stopped by SIGINT after step 3"):
            api.train(config(model, **options), tmp_path / "stopped")
    resumed = api.resume(tmp_path / "stopped")
    for weights in ("model.safetensors", "ema.safetensors"):
        ours, theirs = load_file(resumed / weights), load_file(straight / weights)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), weights
    recorded = api.read_run(resumed).train_config().to_dict()
    assert recorded.items() >= options.items() and recorded["model"].items() >= model.items()
    if name == "bf16":  # autocast reached the backbone: its rounding changes the run
        plain = load_file(api.train(config(model), tmp_path / "plain") / "model.safetensors")
        assert any(not torch.equal(plain[k], ours[k]) for k in plain)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_gradient_checkpointing_gives_the_same_gradients(backbone):
    process = genflow.make_process("rectified-flow")
    torch.manual_seed(0)
    model = Preconditioner(backbone_from_dict(BACKBONES[backbone]), process.schedule, process.discrete_steps)
    objective = DenoisingObjective(process)
    batch = objective.draw({"images": torch.randn(8, 1, 8, 8)}, torch.Generator().manual_seed(1))

    def gradients() -> list[torch.Tensor]:
        model.zero_grad()
        objective.loss(model, batch).mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = gradients()
    model.backbone.enable_gradient_checkpointing()
    checkpointed = gradients()
    assert model.backbone.is_gradient_checkpointing
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_a_batch_that_does_not_split_is_refused_naming_both(tmp_path):
    result = invoke("train", "--batch-size", "30", "--grad-accumulation", "4", "--steps", "1", "--out", tmp_path / "run")
    expect_usage_error(result, "batch_size 30 does not divide into 1 processes x 4 accumulation steps", "multiple of 4")
    assert not (tmp_path / "run").exists()
