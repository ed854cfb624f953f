"""The genflow command: train, sample in every format, presets, errors, through Typer's
runner and as a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import expect_usage_error, invoke, tiny_preset
from PIL import Image


def run_genflow(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genflow", *map(str, args)], check=False, capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def preset(tmp_path_factory) -> Path:
    return tiny_preset(tmp_path_factory.mktemp("presets") / "tiny.toml", process="rectified-flow", steps=500, batch_size=32, lr=3e-3,
                       warmup_steps=5, log_every=5, sample_every=20, sample_steps=4)  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, preset) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = invoke("train", "--config", preset, "--steps", "60", "--seed", "1", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_a_complete_run_and_flags_override_the_preset(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["steps"] == 60 and config["train"]["batch_size"] == 32  # flag over preset, preset over default
    assert config["model"]["block_channels"] == [16, 32]
    assert config["process"] == {"name": "rectified-flow", "options": {"prediction": "velocity", "time_sampling": "uniform"}}
    assert {"ema.safetensors", "model.safetensors", "metrics.jsonl"} <= {p.name for p in run_dir.iterdir()}
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["step-000020.png", "step-000040.png", "step-000060.png"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(5, 61, 5))
    assert set(records[0]) == {"step", "loss", "lr", "seconds"}
    early, late = np.mean([r["loss"] for r in records[:3]]), np.mean([r["loss"] for r in records[-3:]])
    assert late < 0.8 * early, (early, late)
    assert not list(run_dir.rglob("*.pt")) and not list(run_dir.rglob("*.pkl"))


def test_sample_writes_every_format(run_dir, tmp_path):
    grid = tmp_path / "grid.png"
    assert invoke("sample", run_dir, "--n", "9", "--steps", "3", "--scale", "1", "--out", grid).exit_code == 0
    assert Image.open(grid).size == (3 * 9 + 1, 3 * 9 + 1)  # 3x3 grid of 8x8 images with 1-pixel padding
    array = tmp_path / "samples.npz"
    assert invoke("sample", run_dir, "--n", "5", "--steps", "3", "--out", array).exit_code == 0
    stored = np.load(array)["arr_0"]
    assert stored.dtype == np.uint8 and stored.shape == (5, 8, 8, 1)
    folder = tmp_path / "pngs"
    assert invoke("sample", run_dir, "--n", "4", "--steps", "3", "--out", folder).exit_code == 0
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:06d}.png" for i in range(4)]


def test_sample_grid_upscales_small_images(run_dir, tmp_path):
    native, scaled, wide = tmp_path / "native.png", tmp_path / "scaled.png", tmp_path / "wide.png"
    assert invoke("sample", run_dir, "--n", "64", "--steps", "2", "--out", scaled).exit_code == 0
    assert Image.open(scaled).size == (8 * 33 + 1, 8 * 33 + 1)  # 8x8 images shown 4 times larger: 32-pixel tiles
    assert invoke("sample", run_dir, "--n", "64", "--steps", "2", "--scale", "1", "--out", native).exit_code == 0
    assert Image.open(native).size == (73, 73)
    assert invoke("sample", run_dir, "--n", "4", "--steps", "2", "--scale", "6", "--out", wide).exit_code == 0
    assert Image.open(wide).size == (2 * 49 + 1, 2 * 49 + 1)
    pixels, small = np.asarray(Image.open(scaled)), np.asarray(Image.open(native))
    assert np.array_equal(pixels[1:33:4, 1:33:4], small[1:9, 1:9])  # nearest neighbour: the same pixels, repeated
    assert Image.open(run_dir / "samples" / "step-000020.png").size == (265, 265)  # training grids scale too


def test_sample_without_out_makes_the_runs_samples_folder(run_dir, tmp_path):
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    shutil.rmtree(run / "samples")  # as in a run that lacks it
    result = invoke("sample", run, "--n", "4", "--steps", "2", "--json")
    assert result.exit_code == 0, result.output
    assert Path(json.loads(result.stdout)["out"]).parent == run / "samples" and (run / "samples").is_dir()


def test_json_output_is_one_object(run_dir, tmp_path):
    result = invoke("sample", run_dir, "--solver", "heun", "--steps", "4", "--grid", "karras", "--n", "4", "--out", tmp_path / "h.png", "--json")
    record = json.loads(result.stdout)
    assert record["solver"] == "heun" and record["grid"] == "karras" and record["steps"] == 4 and record["nfe"] == 7
    assert record["process"] == "rectified-flow" and record["seconds"] > 0


def test_same_seed_same_samples_at_two_batch_sizes(run_dir, tmp_path):
    for name, batch in (("a.npz", "2"), ("b.npz", "7")):
        invoke("sample", run_dir, "--solver", "ancestral", "--steps", "5", "--n", "7", "--seed", "3", "--batch-size", batch, "--out", tmp_path / name)
    a, b = np.load(tmp_path / "a.npz")["arr_0"], np.load(tmp_path / "b.npz")["arr_0"]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # uint8 rounding of float-identical samples
    invoke("sample", run_dir, "--solver", "ancestral", "--steps", "5", "--n", "7", "--seed", "4", "--out", tmp_path / "c.npz")
    assert not np.array_equal(a, np.load(tmp_path / "c.npz")["arr_0"])


def test_existing_output_is_kept_unless_overwrite(run_dir, tmp_path):
    out = tmp_path / "keep.png"
    out.write_bytes(b"precious")
    expect_usage_error(invoke("sample", run_dir, "--steps", "2", "--out", out), "--overwrite")
    assert out.read_bytes() == b"precious"
    assert invoke("sample", run_dir, "--steps", "2", "--out", out, "--overwrite").exit_code == 0
    assert out.read_bytes() != b"precious"


@pytest.mark.slow
def test_subprocess_train_latest_sample_and_errors(preset, tmp_path):
    trained = run_genflow("train", "--config", preset, "--steps", "5", "--sample-every", "0", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "runs" / "latest" / "ema.safetensors").is_file()
    sampled = run_genflow("sample", "--steps", "2", "--n", "4", "--json", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    record = json.loads(sampled.stdout)
    assert Path(tmp_path / record["out"]).is_file() or Path(record["out"]).is_file()
    assert "latest" not in record["run"] and (tmp_path / record["run"]).resolve() == (tmp_path / "runs" / "latest").resolve()
    failed = run_genflow("sample", "missing-run", cwd=tmp_path)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().startswith("genflow: error:") and len(failed.stderr.strip().splitlines()) == 1
    version = run_genflow("--version")
    assert version.returncode == 0 and version.stdout.startswith("genflow ")


def test_list_names_every_component():
    import genflow

    output = invoke("list").stdout
    for name in genflow.PROCESSES.names() + genflow.SOLVERS.names() + genflow.GRIDS.names():
        assert name in output


def test_a_diverging_run_exits_3_with_one_line_and_saves_nothing(preset, tmp_path):
    result = invoke("train", "--config", preset, "--lr", "1e30", "--steps", "40", "--out", tmp_path / "run")
    assert result.exit_code == 3, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("genflow: training diverged: 10 non-finite steps in a row") and "lower --lr" in last, last
    assert "Traceback" not in result.output
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "ema.safetensors").exists()


def test_info_tells_whether_a_run_is_finished(run_dir):
    output = invoke("info", run_dir).stdout
    assert "checkpoint" in output and "(finished)" in output


def test_ctrl_c_outside_training_exits_130_without_a_traceback(run_dir, monkeypatch):
    from genflow import api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "sample_run", interrupted)
    result = invoke("sample", run_dir, "--steps", "2")
    assert result.exit_code == 130 and result.stderr.strip() == "genflow: interrupted", result.output


def test_sample_and_info_name_the_run_and_the_checkpoint_of_an_unfinished_run(run_dir, tmp_path, monkeypatch):
    from genflow.cli.core import out_console

    monkeypatch.setattr(out_console, "width", 200)  # info's table folds cells at 80 columns: pytest-xdist's paths are longer
    unfinished = Path(shutil.copytree(run_dir, tmp_path / "unfinished"))
    (unfinished / "ema.safetensors").unlink()
    (unfinished / "model.safetensors").unlink()
    (tmp_path / "link").symlink_to(unfinished)
    sampled = invoke("sample", tmp_path / "link", "--steps", "2", "--n", "4", "--out", tmp_path / "s.png")
    assert sampled.exit_code == 0, sampled.output
    assert sampled.stdout.startswith(f"{unfinished} (unfinished: checkpoint of step 60 of 60): unipc on rectified-flow, 2 steps")
    assert str(unfinished) in invoke("info", tmp_path / "link").stdout


def test_an_adaptive_solver_says_so(run_dir, tmp_path):
    sampled = invoke("sample", run_dir, "--solver", "dopri5", "--n", "4", "--out", tmp_path / "s.png")
    assert sampled.exit_code == 0, sampled.output
    assert "dopri5 on rectified-flow, adaptive steps, NFE" in sampled.stdout


@pytest.mark.slow
def test_the_shell_sweep_example_scores_every_point_and_cleans_up(run_dir, tmp_path):
    """examples/sweep.sh: sample and score in a shell loop; its temporary samples are removed."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "SOLVERS": "heun", "STEPS": "2", "N": "16", "TMPDIR": str(scratch),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    script = Path(__file__).parents[1] / "examples" / "sweep.sh"
    done = subprocess.run(["bash", script, run_dir, tmp_path / "table.tsv"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    header, *rows = [line.split("\t") for line in (tmp_path / "table.tsv").read_text().splitlines()]
    assert header == ["solver", "steps", "nfe", "seconds", "fd", "fd_floor", "kid"]
    assert [(row[0], row[1], row[2]) for row in rows] == [("heun", "2", "3.0")]
    assert all(float(row[4]) > 0 for row in rows)
    assert list(scratch.iterdir()) == []


def test_a_run_resumed_past_its_end_samples_its_newest_checkpoint(run_dir, tmp_path):
    """Final weights from an earlier end are not the run's newest: a larger budget whose
    resume was stopped samples the checkpoint, and says so."""
    resumed = Path(shutil.copytree(run_dir, tmp_path / "resumed"))
    record = json.loads((resumed / "config.json").read_text())
    record["train"]["steps"] = 120  # what 'genflow train --resume RUN --steps 120' records before training on
    (resumed / "config.json").write_text(json.dumps(record))
    sampled = invoke("sample", resumed, "--steps", "2", "--n", "4", "--out", tmp_path / "s.png")
    assert sampled.exit_code == 0, sampled.output
    assert sampled.stdout.startswith(f"{resumed} (unfinished: checkpoint of step 60 of 120)")
