"""Reflow and distillation (Liu, Gong & Liu 2022): closed-form answers with the exact
Gaussian-mixture teacher, resumable pair generation, and the commands on real runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, energy_distance, expect_usage_error, four_blobs, invoke
from torch import nn

import genflow
from genflow import api
from genflow.config import TrainConfig
from genflow.data.pairs import Manifest, generate, read_pairs
from genflow.errors import GenflowError
from genflow.fewstep.reflow import STRAIGHTNESS_PATHS, straightness, straightness_of_run, student_config
from genflow.processes import make_process
from genflow.train.objective import DistillationObjective, PairedObjective

PAIRS = 2048


class VelocityMLP(nn.Module):
    """A small ``model(x, t)`` for 2-D data: the student of the closed-form tests."""

    def __init__(self, width: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t.reshape(-1, 1).to(x.dtype)], dim=1))


def exact_pairs(folder: Path, shard_size: int = 512, make=None) -> Manifest:
    """``PAIRS`` pairs of the exact mixture teacher on rectified flow's ODE (dopri5, tight)."""
    process = make_process("rectified-flow")
    teacher = four_blobs().exact_model(process)

    def integrate(seeds: range) -> torch.Tensor:
        return genflow.sample(teacher, process, shape=(len(seeds), 2), solver="dopri5", seed=list(seeds), rtol=1e-6, atol=1e-6)

    plan = Manifest(count=PAIRS, teacher={"path": "exact mixture"}, solver="dopri5", steps=0, grid="adaptive", nfe=0.0, seed=0,
                    shape=[2], shard_size=shard_size)  # fmt: skip
    return generate(folder, plan, make or integrate)


def train_student(objective, pairs: dict[str, torch.Tensor], steps: int = 1500) -> VelocityMLP:
    torch.manual_seed(0)
    student, generator = VelocityMLP(), torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(student.parameters(), lr=2e-3)
    for _ in range(steps):
        index = torch.randint(0, len(pairs["images"]), (256,), generator=generator)
        batch = objective.draw({key: values[index] for key, values in pairs.items()}, generator)
        loss = objective.loss(student, batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return student.eval()


@pytest.fixture(scope="module")
def mixture_pairs(tmp_path_factory) -> dict[str, torch.Tensor]:
    folder = tmp_path_factory.mktemp("pairs")
    exact_pairs(folder)
    return read_pairs(folder)


def one_step(model, n: int = 2000) -> torch.Tensor:
    with torch.no_grad():
        return genflow.sample(model, "rectified-flow", shape=(n, 2), solver="euler", steps=1, seed=10_000)


def test_the_pairs_are_the_exact_odes_endpoints(mixture_pairs):
    """Each pair's sample is where the exact teacher's ODE takes its noise (a second, independent
    integration agrees), and that noise is the prior draw of its per-sample seed."""
    process = make_process("rectified-flow")
    teacher = four_blobs().exact_model(process)
    noise = genflow.NoiseSource(range(64))((2,))  # rectified flow's prior is N(0, I)
    assert torch.equal(mixture_pairs["noise"][:64], noise)
    again = genflow.sample(teacher, process, shape=(64, 2), solver="heun", steps=400, seed=0)
    assert (again - mixture_pairs["images"][:64]).abs().max() < 1e-3


def test_a_ve_teachers_pairs_hold_the_unit_noise_a_student_starts_from(tmp_path):
    """A VE teacher starts from 50 z (its prior's standard deviation); its pair stores z, the
    rectified-flow student's noise, and the sample the teacher's ODE reaches from 50 z."""
    process = make_process("sde", sde="ve")
    teacher = four_blobs().exact_model(process)

    def integrate(seeds: range) -> torch.Tensor:
        return genflow.sample(teacher, process, shape=(len(seeds), 2), solver="dpm++2m", steps=40, seed=list(seeds))

    plan = Manifest(count=64, teacher={"path": "exact mixture, VE"}, solver="dpm++2m", steps=40, grid="karras", nfe=0.0, seed=0, shape=[2])
    generate(tmp_path, plan, integrate)
    pairs = read_pairs(tmp_path)
    assert process.prior_std > 10
    assert torch.equal(pairs["noise"], genflow.NoiseSource(range(64))((2,)))
    assert torch.equal(pairs["images"], integrate(range(64)))


def test_a_reflowed_student_is_straighter_and_better_in_one_step(mixture_pairs, blobs_floor):
    process = make_process("rectified-flow")
    teacher = four_blobs().exact_model(process)
    student = train_student(PairedObjective(process), mixture_pairs)
    straight_teacher = straightness(teacher, process, (512, 2), steps=100)
    straight_student = straightness(student, process, (512, 2), steps=100)
    assert straight_student < 0.5 * straight_teacher, (straight_student, straight_teacher)
    data, floor = blobs_floor
    teacher_one, student_one = energy_distance(one_step(teacher), data), energy_distance(one_step(student), data)
    assert student_one < 0.5 * teacher_one, (student_one, teacher_one, floor)


def test_a_distilled_student_lands_on_its_teachers_samples_in_one_step(mixture_pairs):
    """Distillation (K = 1) trains only at t = 1, to the pair's sample: its one Euler step
    from a pair's noise ends near that pair's sample, much nearer than a reflow student's."""
    process = make_process("rectified-flow")
    distilled = train_student(DistillationObjective(process, steps_out=1), mixture_pairs)
    noise, target = mixture_pairs["noise"][:512], mixture_pairs["images"][:512]
    with torch.no_grad():
        landed = noise - distilled(noise, torch.ones(512))
    error = (landed - target).pow(2).sum(1).mean()
    spread = target.var(0).sum()
    assert error < 0.05 * spread, (float(error), float(spread))


def test_straightness_is_zero_for_straight_paths_and_not_otherwise():
    """A velocity that is constant along each path has straightness 0; the exact mixture's
    curved paths have a positive one."""
    process = make_process("rectified-flow")
    constant = lambda x, t: torch.ones_like(x)
    assert abs(straightness(constant, process, (64, 2), steps=10)) < 1e-6  # float32 paths
    assert straightness(four_blobs().exact_model(process), process, (64, 2), steps=50) > 0.01


KILLED_GENERATION = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import genflow
from test_reflow import exact_pairs, four_blobs, make_process
process = make_process("rectified-flow")
teacher = four_blobs().exact_model(process)
calls = 0
def make(seeds):
    global calls
    calls += 1
    if calls == 3:  # the third shard is in flight
        os.kill(os.getpid(), signal.SIGKILL)
    return genflow.sample(teacher, process, shape=(len(seeds), 2), solver="dopri5", seed=list(seeds), rtol=1e-6, atol=1e-6)
exact_pairs(Path({folder!r}), shard_size=512, make=make)
"""


@pytest.mark.slow
def test_pair_generation_killed_resumes_to_the_same_pairs(tmp_path):
    """kill -9 while a shard is in flight loses that shard only; the resumed pairs are those of
    an uninterrupted run; a truncated shard is caught and made again."""
    exact_pairs(tmp_path / "whole", shard_size=512)
    script = KILLED_GENERATION.format(tests=str(Path(__file__).parent), folder=str(tmp_path / "cut"))
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    manifest = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert len(manifest["shards"]) == 2
    with pytest.raises(genflow.GenflowError, match="2 of 4 pair shards"):
        read_pairs(tmp_path / "cut")
    exact_pairs(tmp_path / "cut", shard_size=512)
    whole, resumed = read_pairs(tmp_path / "whole"), read_pairs(tmp_path / "cut")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)

    shard = tmp_path / "cut" / "pairs-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(genflow.GenflowError, match="pairs-00001.safetensors is missing or does not match its sha256"):
        read_pairs(tmp_path / "cut")
    exact_pairs(tmp_path / "cut", shard_size=512)
    assert all(torch.equal(whole[k], read_pairs(tmp_path / "cut")[k]) for k in whole)


# --- the commands on real runs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    config = TrainConfig(steps=20, batch_size=32, model=TINY_MODEL, warmup_steps=2, sample_every=0, checkpoint_every=0,
                         final_grid=False, device="cpu")  # fmt: skip
    return api.train(config, tmp_path_factory.mktemp("teacher") / "run")


def test_reflow_and_distill_commands_make_runs_that_sample_and_score(tiny_teacher, tmp_path):
    student, distilled = tmp_path / "reflow", tmp_path / "distilled"
    made = invoke("reflow", tiny_teacher, "--out", student, "--pairs", "48", "--steps", "4", "--train-steps", "4", "--batch-size", "16")
    assert made.exit_code == 0, made.output
    manifest = json.loads((student / "pairs" / "manifest.json").read_text())
    assert manifest["count"] == 48 and manifest["solver"] == "dpm++2m" and manifest["nfe"] == 4
    record = json.loads((student / "config.json").read_text())
    assert record["process"]["name"] == "rectified-flow" and record["train"]["objective"] == "reflow"
    assert record["train"]["init_from"] == str(tiny_teacher.resolve())
    resumed = invoke("reflow", tiny_teacher, "--out", student, "--pairs", "48", "--steps", "4", "--train-steps", "6", "--batch-size", "16",
                     "--resume")  # fmt: skip
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((student / "config.json").read_text())["train"]["steps"] == 6  # the finished pairs kept, training continued
    made = invoke("distill", student, "--out", distilled, "--pairs", "32", "--steps", "3", "--train-steps", "4", "--batch-size", "16")
    assert made.exit_code == 0, made.output
    record = json.loads((distilled / "config.json").read_text())["train"]
    assert record["objective"] == "distill" and record["init_from"] == str(student.resolve())
    assert record["pairs"] == str((distilled / "pairs").resolve())  # the k-rectified flow's own pairs (Liu et al. 2022, sec. 2.3)
    own = json.loads((distilled / "pairs" / "manifest.json").read_text())
    assert own["count"] == 32 and own["steps"] == 3 and own["teacher"] != manifest["teacher"]
    assert invoke("sample", distilled, "--solver", "euler", "--steps", "1", "--n", "4", "--out", tmp_path / "one.png").exit_code == 0
    scored = invoke("eval", distilled, "--n", "16", "--straightness", "--straightness-steps", "8", "--json")
    assert scored.exit_code == 0, scored.output
    result = json.loads(scored.stdout)
    assert result["solver"] == "euler" and result["nfe"] == 1  # a one-step student's default
    expected = straightness_of_run(api.load(distilled, device="cpu"), STRAIGHTNESS_PATHS, steps=8)
    assert result["straightness"] == pytest.approx(expected, rel=1e-9) and expected > 0
    expect_usage_error(invoke("sample", student, "--solver", "ancestral", "--n", "2", "--out", tmp_path / "x.png"), "reflow pairs")


def test_pairs_are_never_mirrored(tiny_teacher, tmp_path):
    """A pair fixes each image's noise: a student of a teacher trained with random flips does not
    inherit them (half of each batch would pair a mirrored image with unmirrored noise), and
    flips asked for on pairs are refused before anything is written."""
    teacher = api.load(tiny_teacher, device="cpu")
    teacher.config["train"]["random_flip"] = True  # as a teacher trained with --random-flip records it
    assert student_config(teacher, tmp_path / "pairs", "auto", {}).random_flip is False
    with pytest.raises(GenflowError, match="random_flip"):
        student_config(teacher, tmp_path / "pairs", "auto", {"random_flip": True})
    expect_usage_error(invoke("reflow", tiny_teacher, "--out", tmp_path / "flipped", "-o", "random_flip=true"), "random_flip")
    assert not (tmp_path / "flipped").exists()


def test_a_student_started_from_its_teacher_keeps_what_its_weights_mean(tiny_teacher, tmp_path):
    """Weights that predict x0 are not a velocity network: a student initialised from a
    rectified-flow teacher takes its prediction and time options; one trained from scratch
    takes rectified flow's own."""
    teacher = api.load(tiny_teacher, device="cpu")
    teacher.process = make_process("rectified-flow", prediction="x0", time_sampling="logit-normal")
    started = student_config(teacher, tmp_path / "pairs", "auto", {})
    assert started.init_from and started.process_options == teacher.process.options()
    scratch = student_config(teacher, tmp_path / "pairs", "scratch", {})
    assert scratch.init_from is None and scratch.process_options == {}
    model = [arg for key, value in TINY_MODEL.items() for arg in ("-o", f"model.{key}={json.dumps(value)}")]
    for other in (("--prediction", "x0"), ("--process", "ddpm")):
        refused = invoke("train", "-o", f"init_from={tiny_teacher}", *other, *model, "--steps", "2", "--out", tmp_path / "other")
        expect_usage_error(refused, "rectified-flow run predicting velocity", "its weights would compute something else")
    assert not (tmp_path / "other").exists()


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory) -> Path:
    config = TrainConfig(process="ddpm", steps=2, batch_size=16, model=TINY_MODEL, warmup_steps=0, sample_every=0, checkpoint_every=0,
                         final_grid=False, device="cpu")  # fmt: skip
    return api.train(config, tmp_path_factory.mktemp("ddpm") / "run")


def test_reflow_refuses_what_it_cannot_use(tiny_teacher, tmp_path, conditional_run, ddpm_run):
    expect_usage_error(invoke("reflow", tiny_teacher, "--out", tmp_path / "a", "--solver", "ancestral"), "adds noise")
    expect_usage_error(invoke("reflow", tiny_teacher, "--out", tmp_path / "a", "--steps", "0"), "steps")
    expect_usage_error(invoke("reflow", tiny_teacher, "--out", tmp_path / "a", "--pairs", "8"), "batch")
    expect_usage_error(invoke("reflow", tiny_teacher, "--out", tiny_teacher, "--overwrite"), "learn from")
    expect_usage_error(invoke("reflow", conditional_run, "--out", tmp_path / "b"), "class-conditional")
    expect_usage_error(invoke("distill", ddpm_run, "--out", tmp_path / "c"), "is a ddpm run", "reflow it first")
    made = invoke("reflow", tiny_teacher, "--out", tmp_path / "d", "--pairs", "16", "--steps", "2", "--train-steps", "2", "--batch-size", "16")
    assert made.exit_code == 0, made.output
    (tmp_path / "d" / "config.json").unlink()  # as if killed before training started
    expect_usage_error(invoke("reflow", tiny_teacher, "--out", tmp_path / "d", "--pairs", "16", "--steps", "3", "--batch-size", "16", "--resume"),
                       "made differently")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
