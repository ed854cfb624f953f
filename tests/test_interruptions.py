"""Real processes: SIGINT and SIGTERM stop training with a checkpoint and exit 130 / 143;
``kill -9`` at random moments always leaves a loadable latest checkpoint; resuming after
any of these ends bit-identical to a run that was never stopped."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import invoke, tiny_preset

from genflow.runs.checkpoint import CHECKPOINTS, latest_name, read_checkpoint

STEPS = 80
FINAL_FILES = ("model.safetensors", "ema.safetensors", f"{CHECKPOINTS}/step-{STEPS:08d}/optimizer.safetensors")


def genflow_train(*args: object, cwd: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "genflow", "train", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)


def wait_for_new_checkpoint(run: Path, process: subprocess.Popen, timeout: float = 120) -> str:
    """Block until ``checkpoints/latest`` names a checkpoint it did not name before."""
    before, deadline = latest_name(run), time.monotonic() + timeout
    while (name := latest_name(run)) is None or name == before:
        assert process.poll() is None, f"training ended early: {process.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    return name


def finished(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


@pytest.fixture(scope="module")
def preset(tmp_path_factory) -> Path:
    return tiny_preset(tmp_path_factory.mktemp("preset") / "tiny.toml", steps=STEPS, batch_size=32, lr=3e-3, warmup_steps=5,
                       log_every=10, sample_every=0, sample_steps=2, checkpoint_every=4, device="cpu")  # fmt: skip


@pytest.fixture(scope="module")
def reference(preset, tmp_path_factory) -> Path:
    """The uninterrupted run, trained by the same command in this process (as many threads as the
    launched ones: tests/conftest.py shares the cores out through OMP_NUM_THREADS)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    result = invoke("train", "--config", preset, "--out", run)
    assert result.exit_code == 0, result.output
    return run


def assert_same_weights(run: Path, reference: Path) -> None:
    for name in FINAL_FILES:
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name


def stop_with(signum: signal.Signals, training: subprocess.Popen, run: Path) -> int:
    """Send ``signum`` once a new checkpoint is written; the run exits ``128 + signum`` with a last
    line naming the signal, the step and the resume command. Returns the step it stopped at."""
    wait_for_new_checkpoint(run, training)
    training.send_signal(signum)
    code, stderr = finished(training)
    assert code == 128 + signum, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"genflow: stopped by {signum.name} after step") and "--resume runs/" in last, last
    stopped_at = read_checkpoint(run / CHECKPOINTS / latest_name(run)).step
    assert 0 < stopped_at < STEPS and f"step {stopped_at};" in last
    return stopped_at


@pytest.mark.slow
def test_sigint_then_sigterm_save_exit_128_plus_signal_and_resume_matches(preset, reference, tmp_path):
    """Stopped by SIGINT, resumed, stopped by SIGTERM, resumed to the end: the uninterrupted run."""
    run = tmp_path / "runs" / "latest"  # made when training starts, so an interrupted run can be resumed by it
    first = stop_with(signal.SIGINT, genflow_train("--config", preset, cwd=tmp_path), run)
    second = stop_with(signal.SIGTERM, genflow_train("--resume", "runs/latest", cwd=tmp_path), run)
    assert second > first
    code, stderr = finished(genflow_train("--resume", "runs/latest", cwd=tmp_path))
    assert code == 0, stderr
    assert_same_weights(run, reference)


@pytest.mark.slow
def test_kill_9_at_random_moments_always_leaves_a_resumable_run(preset, reference, tmp_path):
    run, moments = tmp_path / "run", random.Random(0)
    resumes = [("--config", preset, "--out", run, "--checkpoint-every", 1)] + [("--resume", run)] * 2
    for args in resumes:
        training = genflow_train(*args)
        wait_for_new_checkpoint(run, training)
        time.sleep(moments.uniform(0.0, 0.4))  # mid-step or mid-save: with a checkpoint every step, both are likely
        training.kill()
        training.wait()
        assert read_checkpoint(run / CHECKPOINTS / latest_name(run)).step < STEPS  # the pointer names a whole checkpoint
    code, stderr = finished(genflow_train("--resume", run))
    assert code == 0, stderr
    assert not list((run / CHECKPOINTS).glob(".*"))  # what the kills left half-written is gone
    assert_same_weights(run, reference)
