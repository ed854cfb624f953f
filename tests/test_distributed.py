"""torch.distributed on the CPU (gloo), launched as users launch it: ``torchrun --nproc-per-node 2
-m genflow ...``. A 2-process run follows the 1-process run (and the 1-process run with
gradient accumulation 2) up to float reduction order; sampling on 2 processes is
byte-identical; a run resumes on another number of processes; one rank's signal or non-finite
loss stops or skips on every rank; only rank 0 writes. Every launch has a hard timeout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_DIT, invoke, tiny_preset
from safetensors.torch import load_file

from genflow.runs.checkpoint import CHECKPOINTS, latest_name

pytestmark = pytest.mark.slow  # every test launches torchrun

LAUNCH_TIMEOUT = 240  # seconds; a hang fails the test instead of CI
FAULTY_TRAIN = Path(__file__).parent / "fixtures" / "faulty_train.py"
WEIGHT_TOLERANCE = 1e-5
"""How far 2-process weights may lie from 1-process weights after 20 steps. Attention key
biases have an exactly zero gradient (softmax ignores a shift of every score), so their
gradient is rounding noise, which Adam normalizes into steps of about the learning rate;
at lr 5e-4 those stay within this tolerance, as every other weight does by far."""


def launch(*args: object, processes: int = 2, module: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N [-m genflow | script] ARGS``, or one plain
    process when ``processes`` is 1."""
    target = ["-m", "genflow"] if module else [str(FAULTY_TRAIN)]
    if processes == 1:
        command = [sys.executable, *target, *map(str, args)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *target]
        command += list(map(str, args))
    return subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, cwd=cwd, check=False)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def in_this_process(*args: object) -> None:
    """The one-process command a launch is compared with, run in the test's process: what is
    under test is the launch of several."""
    result = invoke(*args)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def preset(tmp_path_factory) -> Path:
    return tiny_preset(tmp_path_factory.mktemp("preset") / "tiny.toml", steps=20, batch_size=32, lr=5e-4, warmup_steps=2,
                       log_every=5, sample_every=0, sample_steps=2, checkpoint_every=10, final_grid=False, device="cpu")  # fmt: skip


@pytest.fixture(scope="module")
def one_process(preset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("one") / "run"
    in_this_process("train", "--config", preset, "--out", run)
    return run


def max_difference(run: Path, reference: Path, name: str = "model.safetensors") -> float:
    ours, theirs = load_file(run / name), load_file(reference / name)
    assert ours.keys() == theirs.keys()
    return max(float((ours[k] - theirs[k]).abs().max()) for k in ours)


def assert_same_run(run: Path, reference: Path) -> None:
    for name in ("model.safetensors", "ema.safetensors"):
        assert max_difference(run, reference, name) < WEIGHT_TOLERANCE, name


def files_of(run: Path) -> list[str]:
    return sorted(str(path.relative_to(run)) for path in run.rglob("*"))


def test_two_processes_train_the_one_process_run_and_write_what_it_writes(preset, one_process, tmp_path):
    two, accumulated = tmp_path / "two", tmp_path / "accumulated"
    result = ok(launch("train", "--config", preset, "--out", two))
    in_this_process("train", "--config", preset, "--out", accumulated, "--grad-accumulation", "2")
    assert_same_run(two, one_process)
    assert_same_run(accumulated, one_process)
    assert files_of(two) == files_of(one_process)  # rank 1 wrote nothing of its own
    assert result.stdout.count("trained rectified-flow") == 1 and "[rank 1]" not in result.stderr
    ours, theirs = json.loads((two / "config.json").read_text()), json.loads((one_process / "config.json").read_text())
    assert ours == theirs
    logged = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (one_process / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [r["step"] for r in reference] == [5, 10, 15, 20]
    assert [r["loss"] for r in logged] == pytest.approx([r["loss"] for r in reference], rel=1e-4)  # the global mean


def test_sampling_on_two_processes_is_byte_identical(one_process, tmp_path):
    args = ("sample", one_process, "--num-samples", 7, "--steps", 3, "--batch-size", 2, "--device", "cpu")
    ok(launch(*args, "--out", tmp_path / "two.npz"))
    in_this_process(*args, "--out", tmp_path / "one.npz")
    assert (tmp_path / "two.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()


def test_a_run_stopped_by_sigint_resumes_on_another_number_of_processes(preset, one_process, tmp_path):
    """Stopped on 2 processes, resumed and stopped again on 1, finished on 2: the 1-process run."""
    run = tmp_path / "run"
    for processes, args, step in ((2, ("--config", preset, "--out", run), 7), (1, ("--resume", run), 14)):
        stopped = launch("--send", "SIGINT", "--at-step", step, "--", *args, processes=processes, module=False)
        assert stopped.returncode == (130 if processes == 1 else 1), stopped.stderr[-2000:]  # torchrun exits 1 when workers fail
        assert f"stopped by SIGINT after step {step}" in stopped.stderr and latest_name(run) == f"step-{step:08d}"
    ok(launch("train", "--resume", run, processes=2))
    assert_same_run(run, one_process)


def test_sigterm_in_one_rank_stops_both_at_the_same_step_with_a_checkpoint(preset, tmp_path):
    run = tmp_path / "run"
    stopped = launch("--send", "SIGTERM", "--on-rank", 1, "--at-step", 4, "--", "--config", preset, "--out", run, module=False)
    assert stopped.returncode != 0
    assert stopped.stderr.count("genflow: stopped by SIGTERM after step 4;") == 1, stopped.stderr[-2000:]  # rank 0 says it
    assert "exitcode  : 143" in stopped.stderr  # torchrun's report of its workers' exit codes
    assert latest_name(run) == "step-00000004" and sorted(p.name for p in (run / CHECKPOINTS).iterdir()) == ["latest", "step-00000004"]


def test_a_nonfinite_loss_in_one_rank_is_skipped_by_both(preset, one_process, tmp_path):
    run = tmp_path / "run"
    result = launch("--nan-steps", "3,4", "--on-rank", 1, "--", "--config", preset, "--out", run, module=False)
    ok(result)
    assert "step 3: non-finite loss or gradient, step skipped (1 in a row)" in result.stderr + result.stdout
    assert "step 4: non-finite loss or gradient, step skipped (2 in a row)" in result.stderr + result.stdout
    weights = load_file(run / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert max_difference(run, one_process) > 10 * WEIGHT_TOLERANCE  # two steps fewer: a different, finite run


def test_a_failed_save_in_rank_0_stops_every_rank_with_one_line(preset, tmp_path):
    run = tmp_path / "run"
    failed = launch("--full-disk-at", 20, "--", "--config", preset, "--out", run, module=False)
    assert failed.returncode != 0 and "exitcode  : 2" in failed.stderr, failed.stderr[-2000:]
    errors = [line for line in failed.stderr.splitlines() if line.startswith("genflow")]
    assert len(errors) == 1 and errors[0].startswith("genflow: error: cannot save the checkpoint at step 20"), errors
    assert "No space left on device" in errors[0] and "the previous checkpoint step-00000010 is intact" in errors[0]
    assert latest_name(run) == "step-00000010" and not (run / "model.safetensors").exists()


def test_two_processes_streaming_an_image_folder_train_the_one_process_in_memory_run(preset, tmp_path):
    """Each rank decodes only its rows of the global batch (one worker each); the ranks exchange
    the pixels, so the run follows the one-process run that holds the folder in memory."""
    from test_streaming import write_folder

    folder = write_folder(tmp_path / "images", 96)
    args = ("train", "--config", preset, "--dataset", folder, "--random-flip", "--steps", 6)
    in_this_process(*args, "--out", tmp_path / "memory")
    ok(launch(*args, "--out", tmp_path / "streamed", "-o", "data_in_memory_mb=0", "-o", "data_workers=1"))
    assert_same_run(tmp_path / "streamed", tmp_path / "memory")
    assert max_difference(tmp_path / "streamed", tmp_path / "memory") < WEIGHT_TOLERANCE


def test_two_processes_train_the_one_process_dit_run(tmp_path):
    dit = tiny_preset(tmp_path / "dit.toml", TINY_DIT, steps=10, batch_size=32, lr=5e-4, warmup_steps=2, log_every=5,
                      sample_every=0, checkpoint_every=0, final_grid=False, device="cpu")  # fmt: skip
    ok(launch("train", "--config", dit, "--out", tmp_path / "two"))
    in_this_process("train", "--config", dit, "--out", tmp_path / "one")
    assert_same_run(tmp_path / "two", tmp_path / "one")
