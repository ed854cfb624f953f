"""The DiT backbone (diffusers' ``DiTTransformer2DModel``): its sizes follow the paper, it starts
as DiT starts (zero output, adaLN-Zero) and drops no labels of its own, every process and solver
works with it exactly where they work with the UNet, a run trains, samples (with guidance),
shows its size and reflows from the command line, two gloo processes train the one-process
run, and what it cannot do is refused in one line. Resume, bf16, accumulation, gradient
checkpointing and compile with a DiT are in ``test_throughput_options``."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_DIT, TINY_MODEL, expect_usage_error, invoke

import genflow
from genflow import api
from genflow.config import TrainConfig
from genflow.errors import GenflowError, IncompatibleError
from genflow.nn import DiTConfig, Preconditioner, backbone_for_data, backbone_from_dict
from genflow.runs.files import read_run

CLASSES = 3


def test_named_sizes_follow_the_paper_and_a_key_given_beside_one_wins():
    base = backbone_for_data({"backbone": "dit", "size": "B/4"}, 4, 32, 0)
    assert (base.depth, base.width, base.heads, base.patch_size) == (12, 768, 12, 4)  # Peebles & Xie 2023, table 1
    assert base.describe() == "DiT-B/4, 64 tokens"
    shallow = backbone_for_data({"backbone": "dit", "size": "XL/2", "depth": 4}, 4, 32, 0)
    assert (shallow.depth, shallow.width, shallow.heads) == (4, 1152, 16) and shallow.describe().startswith("DiT (patch 2")
    assert backbone_for_data({"backbone": "dit"}, 1, 8, 0).patch_size == 2
    assert backbone_for_data({"backbone": "dit"}, 3, 64, 0).describe() == "DiT-S/4, 256 tokens"
    assert backbone_for_data({"backbone": "dit"}, 1, 28, 0).patch_size == 2  # the default 2 divides 28; 4 would not
    for config in (base, shallow, backbone_for_data({}, 1, 8, 0)):
        assert backbone_from_dict(config.to_dict()) == config and config.to_dict()["backbone"] == config.name


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ({"size": "M/2"}, "is not a DiT size; choose from S/2"),
        ({"size": "S/3"}, "is not a DiT size"),
        ({"patch_size": 3}, "model.patch_size 3 does not divide the resolution 8"),
        ({"width": 100, "heads": 3}, "model.width 100 is not a multiple of model.heads 3"),
        ({"depth": 0}, "model.depth must be a whole number >= 1"),
        ({"block_channels": [32]}, "unknown DiT option model.block_channels"),
    ],
)
def test_a_dit_it_cannot_build_is_refused_naming_the_option(model, fragment):
    with pytest.raises(GenflowError, match=fragment):
        backbone_for_data({"backbone": "dit", **model}, 1, 8, 0)


def perturbed(config: DiTConfig | dict, process: genflow.GaussianProcess, seed: int = 0) -> Preconditioner:
    """A preconditioned network with every weight drawn at random (a fresh DiT outputs zero)."""
    torch.manual_seed(seed)
    model = Preconditioner(
        backbone_from_dict(config) if isinstance(config, dict) else config, process.schedule, process.discrete_steps
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def test_a_fresh_dit_outputs_zero_and_conditions_on_time_and_class_without_dropping_labels():
    process = genflow.make_process("rectified-flow")
    config = DiTConfig(**{k: v for k, v in TINY_DIT.items() if k != "backbone"}, num_classes=CLASSES)
    torch.manual_seed(0)
    fresh = Preconditioner(config, process.schedule).train()
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 0.5)
    assert torch.equal(fresh(x, t, torch.tensor([0, 1, 2, 0])), torch.zeros_like(x))  # adaLN-Zero: every block the identity
    model = perturbed(config, process).train()
    state = torch.get_rng_state()
    first, second = model(x, t, torch.tensor([0, 1, 2, 0])), model(x, t, torch.tensor([0, 1, 2, 0]))
    assert torch.equal(first, second) and torch.equal(torch.get_rng_state(), state)  # diffusers' own 10% label dropout is off
    assert not torch.allclose(first[0], first[1])  # another class, another output
    assert not torch.allclose(model(x, t)[0], first[0])  # no label is the null class, not class 0
    assert not torch.allclose(model(x, torch.full((4,), 0.9))[0], model(x, t)[0])


SOLVER_OPTIONS = {"dopri5": {"rtol": 1e-2, "atol": 1e-2}}


def outcome(model: Preconditioner, process: genflow.GaussianProcess, solver: str) -> str:
    """``ok`` when ``solver`` samples ``model`` with guidance, else the refusal."""
    try:
        x = genflow.sample(model, process, solver=solver, steps=3, shape=(2, 1, 8, 8), seed=0, labels=[0, 1], guidance=2.0,
                           **SOLVER_OPTIONS.get(solver, {}))  # fmt: skip
    except IncompatibleError as refusal:
        return str(refusal)
    assert torch.isfinite(x).all() and x.shape == (2, 1, 8, 8)
    return "ok"


def test_every_process_and_solver_work_with_a_dit_exactly_where_they_work_with_the_unet(process):
    unet = perturbed({**TINY_MODEL, "num_classes": CLASSES}, process)
    dit = perturbed({**TINY_DIT, "num_classes": CLASSES}, process)
    outcomes = {solver: (outcome(unet, process, solver), outcome(dit, process, solver)) for solver in genflow.SOLVERS.names()}
    assert all(with_unet == with_dit for with_unet, with_dit in outcomes.values()), outcomes
    assert sum(with_dit == "ok" for _, with_dit in outcomes.values()) >= 6, outcomes


@pytest.mark.slow
def test_a_dit_run_trains_samples_with_guidance_shows_its_size_and_reflows(tmp_path):
    run = tmp_path / "dit"
    trained = invoke("train", "--backbone", "dit", "--conditional", "--steps", "30", "--out", run)
    assert trained.exit_code == 0, trained.output
    record = json.loads((run / "config.json").read_text())["model"]
    assert record["backbone"] == "dit" and record["num_classes"] == 10 and record["patch_size"] == 2
    sampled = invoke(
        "sample", run, "--steps", "8", "--class", "3", "--guidance", "2", "--n", "4", "--out", tmp_path / "three.npz"
    )
    assert sampled.exit_code == 0, sampled.output
    shown = invoke("info", run)
    assert shown.exit_code == 0 and "DiT (patch 2, width 128, depth 6, 4 heads), 16 tokens" in shown.stdout, shown.stdout
    expect_usage_error(invoke("export", run, tmp_path / "export"), "cannot export a dit run", "VAE")
    assert not (tmp_path / "export").exists()
    expect_usage_error(
        invoke("train", "--resume", run, "--backbone", "unet", "--steps", "40"), "model.backbone is 'dit', not 'unet'"
    )


@pytest.mark.slow
def test_a_dit_teacher_reflows_into_a_dit_student(tmp_path):
    config = TrainConfig(steps=6, batch_size=16, model=TINY_DIT, warmup_steps=1, sample_every=0, checkpoint_every=0,
                         final_grid=False, device="cpu")  # fmt: skip
    teacher = api.train(config, tmp_path / "teacher")
    student = tmp_path / "student"
    made = invoke(
        "reflow", teacher, "--out", student, "--pairs", "16", "--steps", "2", "--train-steps", "2", "--batch-size", "16"
    )
    assert made.exit_code == 0, made.output
    assert read_run(student).config["model"] == read_run(teacher).config["model"]
    unet = api.train(TrainConfig(**{**config.to_dict(), "model": TINY_MODEL}), tmp_path / "unet")
    refused = invoke("train", "-o", f"init_from={unet}", "--backbone", "dit", *(f"-o model.{k}={v}" for k, v in TINY_DIT.items() if k != "backbone"),
                     "--steps", "2", "--out", tmp_path / "mixed")  # fmt: skip
    expect_usage_error(refused, "do not fit this run's backbone")


def test_an_unknown_backbone_is_refused_before_anything_is_written(tmp_path):
    expect_usage_error(
        invoke("train", "--backbone", "dot", "--out", tmp_path / "run"), "unknown backbone 'dot'; did you mean 'dit'?"
    )
    expect_usage_error(
        invoke("train", "--backbone", "dit", "-o", "model.size=Q/2", "--out", tmp_path / "run"), "model.size 'Q/2'"
    )
    assert not (tmp_path / "run").exists()


def test_print_config_shows_the_dit_a_preset_can_name(tmp_path):
    shown = invoke("train", "--backbone", "dit", "-o", "model.size=S/2", "--print-config")
    assert shown.exit_code == 0, shown.output
    preset = tmp_path / "dit.toml"
    preset.write_text(shown.stdout)
    again = invoke("train", "--config", preset, "--print-config")
    assert again.exit_code == 0 and again.stdout == shown.stdout
    assert 'backbone = "dit"' in shown.stdout and "width = 384" in shown.stdout and "depth = 12" in shown.stdout
