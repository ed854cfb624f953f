"""Interop with diffusers through real files: a genflow run exported with ``genflow export`` is
sampled by diffusers' own pipelines to the same images as genflow's solvers, and a diffusers
model folder (a tiny random ``UNet2DModel`` saved with ``save_pretrained``) imported with
``genflow import`` is sampled by genflow to the same images as diffusers' pipelines and
schedulers. Samples are compared before the pipelines' final clamp to [0, 1]: an untrained
backbone's samples leave that range."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import diffusers
import pytest
import torch
from conftest import TINY_MODEL, expect_usage_error, invoke

import genflow
from genflow import api
from genflow.config import TrainConfig
from genflow.nn import Preconditioner, UNetConfig
from genflow.processes import make_process
from genflow.storage import sha256_file

N = 3
STEPS = 20  # divides T = 1000: diffusers' trailing steps are then genflow's uniform grid exactly
RTOL = 1e-5  # relative to the largest value: float32 rounding over 20 steps, not a different algorithm


def tiny_run(folder: Path, process: str, **options: object) -> Path:
    """A genflow run of the tiny backbone trained for two steps (its weights are what matter)."""
    config = TrainConfig(process=process, process_options=options, steps=2, batch_size=16, model=TINY_MODEL, warmup_steps=0,
                         sample_every=0, checkpoint_every=0, final_grid=False, device="cpu")  # fmt: skip
    return api.train(config, folder)


def tiny_diffusers_unet(**config: object) -> diffusers.UNet2DModel:
    """A random ``UNet2DModel`` in the layout of google/ddpm-cifar10-32 (sin-first embedding,
    frequency shift 1, an attention block), 8x8 and one channel."""
    torch.manual_seed(0)
    shape = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": (32, 32), "layers_per_block": 1,
             "down_block_types": ("DownBlock2D", "AttnDownBlock2D"), "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
             "norm_num_groups": 8, "flip_sin_to_cos": False, "freq_shift": 1}  # fmt: skip
    return diffusers.UNet2DModel(**(shape | config))


def save_diffusers_folder(folder: Path, scheduler: object, unet: diffusers.UNet2DModel | None = None) -> Path:
    diffusers.DDPMPipeline(unet=unet or tiny_diffusers_unet(), scheduler=scheduler).save_pretrained(folder)
    return folder


def prior_noise(process) -> torch.Tensor:
    """The initial noise genflow's sampler draws for seeds 0..N-1."""
    return process.prior_std * genflow.NoiseSource(range(N))((1, 8, 8))


def final_sample(pipeline, prior: torch.Tensor, step_noise=None, **call: object) -> torch.Tensor:
    """Run a diffusers pipeline from ``prior`` (and the step noises ``step_noise`` draws) and
    return its last scheduler output, before the pipeline clamps it into an image."""
    outputs = []
    step = pipeline.scheduler.step
    pipeline.scheduler.step = lambda *args, **kwargs: outputs.append(step(*args, **kwargs)) or outputs[-1]
    draws = iter([prior.clone()])
    module = sys.modules[type(pipeline).__module__]
    original = module.randn_tensor
    module.randn_tensor = lambda *args, **kwargs: next(draws)
    scheduler_module = sys.modules[type(pipeline.scheduler).__module__]
    scheduler_original = scheduler_module.randn_tensor
    if step_noise is not None:
        scheduler_module.randn_tensor = lambda *args, **kwargs: step_noise((1, 8, 8))
    try:
        pipeline(batch_size=N, num_inference_steps=STEPS, output_type="np", **call)
    finally:
        module.randn_tensor, scheduler_module.randn_tensor = original, scheduler_original
    return outputs[-1].prev_sample


def assert_same(theirs: torch.Tensor, ours: torch.Tensor) -> None:
    scale = ours.abs().max()
    assert torch.isfinite(scale) and scale > 0
    assert (theirs - ours).abs().max() <= RTOL * scale, float((theirs - ours).abs().max() / scale)


@pytest.fixture(scope="module")
def ddpm_export(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddpm")
    run = tiny_run(root / "run", "ddpm")
    result = invoke("export", run, root / "export")
    assert result.exit_code == 0, result.output
    assert "DiffusionPipeline.from_pretrained" in result.stdout
    return run, root / "export"


# --- the time embedding ------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_discrete_step_feeds_the_backbone_diffusers_integer_timestep(schedule):
    """Through the real preconditioner: at genflow's step ``t = (k + 1) / T`` (float32, as
    solvers pass it) the backbone gets exactly diffusers' ``k``, so the wrapped model is the
    diffusers UNet evaluated at ``k``, bit for bit; the ``999 t`` of older runs is not."""
    process = make_process("ddpm", beta_schedule=schedule)
    torch.manual_seed(0)
    model = Preconditioner(UNetConfig(**TINY_MODEL), process.schedule, process.discrete_steps).eval()
    steps = torch.arange(1000)
    t = ((steps + 1).double() / 1000).float()
    assert torch.equal(model.timestep(t), steps.double())
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        for k in (0, 1, 499, 998, 999):
            times = torch.full((4,), (k + 1) / 1000, dtype=torch.float32)
            assert torch.equal(model(x, times), model.backbone(x, k).sample), k
        legacy = Preconditioner(UNetConfig(**TINY_MODEL, time_embedding="999t"), process.schedule, process.discrete_steps)
        legacy.load_state_dict(model.state_dict())
        times = torch.full((4,), 0.5, dtype=torch.float32)
        assert not torch.equal(legacy(x, times), model.backbone(x, 499).sample)


# --- export ------------------------------------------------------------------------------


def test_an_exported_ddpm_run_is_a_diffusers_ddpm_pipeline(ddpm_export):
    run, folder = ddpm_export
    pipeline = diffusers.DiffusionPipeline.from_pretrained(folder)
    assert type(pipeline).__name__ == "DDPMPipeline" and type(pipeline.scheduler).__name__ == "DDPMScheduler"
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(folder.rglob("*.bin"))
    stored = api.load(run, device="cpu").model.backbone.state_dict()
    assert all(torch.equal(v, stored[k]) for k, v in pipeline.unet.state_dict().items())
    umask = os.umask(0)
    os.umask(umask)
    modes = {path.stat().st_mode & 0o777 for path in (folder, *folder.rglob("*")) if path.is_file()}
    assert modes == {0o666 & ~umask}  # as every other file genflow writes, not mkdtemp's private 0600
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask


def test_diffusers_ddim_pipeline_on_an_export_samples_as_genflow_ddim(ddpm_export):
    run, folder = ddpm_export
    loaded = api.load(run, device="cpu")
    ours = genflow.sample(loaded.model, loaded.process, shape=(N, 1, 8, 8), solver="ddim", steps=STEPS, grid="uniform", seed=0)
    pipeline = diffusers.DDIMPipeline.from_pretrained(folder)
    assert_same(final_sample(pipeline, prior_noise(loaded.process), eta=0.0), ours)


def test_diffusers_ddpm_pipeline_on_an_export_samples_as_genflow_ancestral(ddpm_export):
    """DDPM's ancestral sampler, each step's noise replayed from genflow's per-sample streams."""
    run, folder = ddpm_export
    loaded = api.load(run, device="cpu")
    ours = genflow.sample(
        loaded.model, loaded.process, shape=(N, 1, 8, 8), solver="ancestral", steps=STEPS, grid="uniform", seed=0
    )
    noise = genflow.NoiseSource(range(N))
    prior = loaded.process.prior_std * noise((1, 8, 8))
    pipeline = diffusers.DDPMPipeline.from_pretrained(folder)
    assert_same(final_sample(pipeline, prior, step_noise=noise), ours)


@pytest.mark.slow
@pytest.mark.parametrize(("process", "options"), [("rectified-flow", {}), ("cnf", {"sigma_min": 0.05})])
def test_an_exported_flow_run_samples_in_diffusers_as_genflow_euler(tmp_path, process, options):
    """The custom pipeline file, loaded by diffusers from the export folder in a Python where
    genflow cannot be imported, gives genflow's Euler samples from the same noise."""
    run = tiny_run(tmp_path / "run", process, **options)
    assert invoke("export", run, tmp_path / "export").exit_code == 0
    loaded = api.load(run, device="cpu")
    ours = genflow.sample(loaded.model, loaded.process, shape=(N, 1, 8, 8), solver="euler", steps=STEPS, grid="uniform", seed=0)
    torch.save(prior_noise(loaded.process), tmp_path / "prior.pt")
    script = f"""
import sys, torch
sys.modules["genflow"] = None  # no genflow here
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(tmp_path / "export")!r}, trust_remote_code=True)
assert type(pipe).__name__ == "GenflowFlowPipeline" and type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
outputs = []
step = pipe.scheduler.step
pipe.scheduler.step = lambda *a, **k: outputs.append(step(*a, **k)) or outputs[-1]
pipe(batch_size={N}, num_inference_steps={STEPS}, latents=torch.load({str(tmp_path / "prior.pt")!r}), output_type="np")
torch.save(outputs[-1].prev_sample, {str(tmp_path / "theirs.pt")!r})
"""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same(torch.load(tmp_path / "theirs.pt"), ours)


# --- import ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "betas"), [("epsilon", "linear"), ("v_prediction", "squaredcos_cap_v2"), ("sample", "scaled_linear")]
)
def test_an_imported_diffusers_model_samples_as_diffusers_does(tmp_path, prediction, betas):
    """DDIM: genflow's ``ddim`` on the imported run against diffusers' DDIMPipeline on the
    folder. DPM-Solver++(2M): genflow's ``dpm++2m`` against diffusers'
    DPMSolverMultistepScheduler on the scheduler's own timesteps (step ``k`` is ``t = (k + 1) / T``)."""
    scheduler = diffusers.DDPMScheduler(
        beta_schedule=betas, prediction_type=prediction, clip_sample=False, timestep_spacing="trailing"
    )
    folder = save_diffusers_folder(tmp_path / "diffusers", scheduler)
    result = invoke("import", folder, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    loaded = api.load(tmp_path / "run", device="cpu")
    assert loaded.process.name == "ddpm" and loaded.config["imported"]["scheduler"] == "DDPMScheduler"
    prior = prior_noise(loaded.process)

    ours = genflow.sample(loaded.model, loaded.process, shape=(N, 1, 8, 8), solver="ddim", steps=STEPS, grid="uniform", seed=0)
    assert_same(final_sample(diffusers.DDIMPipeline.from_pretrained(folder), prior, eta=0.0), ours)

    solver = diffusers.DPMSolverMultistepScheduler.from_config(scheduler.config, algorithm_type="dpmsolver++", solver_order=2)
    solver.set_timesteps(10)
    unet, x = diffusers.UNet2DModel.from_pretrained(folder / "unet"), prior.clone()
    with torch.no_grad():
        for timestep in solver.timesteps:
            x = solver.step(unet(x, timestep).sample, timestep, x).prev_sample
    times = torch.cat([(solver.timesteps.double() + 1) / 1000, torch.zeros(1, dtype=torch.float64)])
    assert_same(x, genflow.sample(loaded.model, loaded.process, shape=(N, 1, 8, 8), solver="dpm++2m", grid=times, seed=0))


def test_an_import_exported_again_is_the_same_model(tmp_path):
    """diffusers -> genflow -> diffusers keeps the UNet's config and weights bit for bit, and
    a DDIMScheduler folder imports as a ``ddim`` run."""
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    folder = save_diffusers_folder(tmp_path / "diffusers", scheduler)
    assert invoke("import", folder, "--out", tmp_path / "run").exit_code == 0
    assert api.load(tmp_path / "run", device="cpu").process.options()["beta_schedule"] == "scaled-linear"
    assert invoke("export", tmp_path / "run", tmp_path / "again").exit_code == 0
    again = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "again")
    assert type(again).__name__ == "DDIMPipeline"
    original = diffusers.UNet2DModel.from_pretrained(folder / "unet")
    assert {k: v for k, v in again.unet.config.items() if not k.startswith("_")} == {
        k: v for k, v in original.config.items() if not k.startswith("_")
    }
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in again.unet.state_dict().items())
    for key in ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps", "prediction_type"):
        assert again.scheduler.config[key] == scheduler.config[key], key


def test_an_imported_run_samples_evaluates_and_tells_what_it_is(tmp_path):
    folder = save_diffusers_folder(tmp_path / "diffusers", diffusers.DDPMScheduler())  # clip_sample on, diffusers' default
    expect_usage_error(invoke("sample", folder, "--n", "2", "--out", tmp_path / "x.png"), "diffusers model", "genflow import")
    imported = invoke("import", folder, "--out", tmp_path / "run")
    assert imported.exit_code == 0 and "clip_sample" in imported.stdout
    assert invoke("sample", tmp_path / "run", "--n", "4", "--steps", "4", "--out", tmp_path / "s.png").exit_code == 0
    scored = invoke("eval", tmp_path / "run", "--n", "16", "--steps", "2", "--json")
    assert scored.exit_code == 0 and json.loads(scored.stdout)["fd"] > 0
    shown = invoke("info", tmp_path / "run")
    assert shown.exit_code == 0 and "DDPMPipeline" in shown.stdout
    expect_usage_error(invoke("train", "--resume", tmp_path / "run"), "imported from diffusers")


# --- bad input ---------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


class RunsCode:
    """Unpickling this creates a file: the proof that a loader unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_unet_is_refused_unopened(tmp_path):
    folder = save_diffusers_folder(tmp_path / "diffusers", diffusers.DDPMScheduler())
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "ran"
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(RunsCode(marker)))
    expect_usage_error(invoke("import", folder, "--out", tmp_path / "run"), "never unpickles", "save_pretrained")
    assert not marker.exists() and not (tmp_path / "run").exists()


def edit_json(path: Path, **changes: object) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        (lambda f: (f / "model_index.json").unlink(), ["is not a diffusers model folder", "model_index.json"]),
        (
            lambda f: edit_json(f / "scheduler" / "scheduler_config.json", _class_name="EulerDiscreteScheduler"),
            ["EulerDiscreteScheduler", "DDPMScheduler"],
        ),
        (
            lambda f: edit_json(f / "scheduler" / "scheduler_config.json", prediction_type="flow"),
            ["prediction_type 'flow'", "epsilon"],
        ),
        (lambda f: edit_json(f / "scheduler" / "scheduler_config.json", beta_schedule="sigmoid"), ["beta_schedule 'sigmoid'"]),
        (lambda f: edit_json(f / "unet" / "config.json", out_channels=2), ["learned variance"]),
        (lambda f: edit_json(f / "unet" / "config.json", num_class_embeds=10), ["class-conditional"]),
        (lambda f: (f / "unet" / "config.json").write_text("{not json"), ["not valid JSON"]),
        (lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 16), ["could not be read"]),
    ],
    ids=["not-diffusers", "scheduler", "prediction", "betas", "learned-variance", "conditional", "bad-json", "bad-weights"],
)
def test_an_import_of_what_genflow_cannot_reproduce_is_one_line(tmp_path, damage, fragments):
    folder = save_diffusers_folder(tmp_path / "diffusers", diffusers.DDPMScheduler())
    damage(folder)
    expect_usage_error(invoke("import", folder, "--out", tmp_path / "run"), *fragments)
    assert not (tmp_path / "run").exists()


def test_an_existing_destination_is_kept_without_overwrite(ddpm_export, tmp_path):
    run, _ = ddpm_export
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    expect_usage_error(invoke("export", run, taken), "--overwrite")
    folder = save_diffusers_folder(tmp_path / "diffusers", diffusers.DDPMScheduler())
    expect_usage_error(invoke("import", folder, "--out", taken), "--overwrite")
    expect_usage_error(invoke("export", run, taken, "--overwrite"), "not a diffusers export")
    expect_usage_error(invoke("export", run, run.parent, "--overwrite"), "holds the run")
    assert snapshot(taken) == {"mine.txt": sha256_file(taken / "mine.txt")}
    again = tmp_path / "again"
    assert invoke("export", run, again).exit_code == 0
    (again / "unet" / "stale.txt").write_text("from before")
    assert invoke("export", run, again, "--overwrite").exit_code == 0
    assert (again / "model_index.json").is_file() and not (again / "unet" / "stale.txt").exists()


def test_runs_diffusers_cannot_load_exactly_are_refused(tmp_path, conditional_run):
    sde = tiny_run(tmp_path / "sde", "sde")
    expect_usage_error(invoke("export", sde, tmp_path / "out"), "score SDEs", "ddpm")
    expect_usage_error(invoke("export", conditional_run, tmp_path / "out"), "class-conditional")
    eps_flow = tiny_run(tmp_path / "eps-flow", "rectified-flow", prediction="eps")
    expect_usage_error(invoke("export", eps_flow, tmp_path / "out"), "velocity prediction")
    ddpm = tiny_run(tmp_path / "ddpm", "ddpm")
    record = json.loads((ddpm / "config.json").read_text())
    record["model"]["time_embedding"] = "999t"
    (ddpm / "config.json").write_text(json.dumps(record))
    expect_usage_error(invoke("export", ddpm, tmp_path / "out"), "step index")
    (tmp_path / "file").write_text("x")
    expect_usage_error(invoke("export", ddpm, tmp_path / "file"), "is a file")
    assert not (tmp_path / "out").exists()


def test_a_run_from_before_the_step_index_keeps_its_time_input(tmp_path):
    """A ddpm run whose config.json is genflow-run/2 was trained on ``999 t``: read today, its
    record says so, and its backbone still gets ``999 t``."""
    run = tiny_run(tmp_path / "run", "ddpm")
    record = json.loads((run / "config.json").read_text())
    del record["model"]["time_embedding"]
    (run / "config.json").write_text(json.dumps(record | {"format": "genflow-run/2"}))
    loaded = api.load(run, device="cpu")
    assert loaded.config["model"]["time_embedding"] == "999t"
    t = torch.tensor([0.5])
    assert torch.equal(loaded.model.timestep(t), t * 999)
