"""Checkpoints and resume through the library: an interrupted run resumed is bit-identical to
an uninterrupted one; corrupt checkpoints are skipped; a resume may raise the step budget but
not change the run; non-finite steps are skipped and stop the run; a failed save keeps the
previous checkpoint."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL
from safetensors import SafetensorError

from genflow import api
from genflow.config import TrainConfig
from genflow.errors import GenflowError, TrainingDiverged, TrainingInterrupted
from genflow.progress import SilentReporter
from genflow.runs.checkpoint import CHECKPOINTS, latest_name, list_checkpoints, read_checkpoint
from genflow.train import StopSignals, Trainer

TINY = {
    "steps": 30,
    "batch_size": 32,
    "lr": 3e-3,
    "warmup_steps": 5,
    "log_every": 5,
    "sample_every": 0,
    "sample_steps": 2,
    "checkpoint_every": 10,
    "device": "cpu",
    "model": TINY_MODEL,
}
FINAL_FILES = ("model.safetensors", "ema.safetensors")
CHECKPOINT_FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "random.safetensors")


def tiny_config(**changes) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, **changes})


class Recorder(SilentReporter):
    """Keeps notes; sends ``signum`` to this process when ``at`` steps are logged."""

    def __init__(self, at: int | None = None, signum: int = signal.SIGINT) -> None:
        super().__init__()
        self.at, self.signum, self.notes = at, signum, []

    def step(self, step: int, loss: float, lr: float) -> None:
        if step == self.at:
            os.kill(os.getpid(), self.signum)

    def note(self, message: str) -> None:
        self.notes.append(message)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every resumed run must reproduce."""
    return api.train(tiny_config(), tmp_path_factory.mktemp("reference") / "run")


def assert_same_run(run: Path, reference: Path) -> None:
    for name in FINAL_FILES:
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    final = f"{CHECKPOINTS}/step-{TINY['steps']:08d}"
    for name in CHECKPOINT_FILES:
        assert (run / final / name).read_bytes() == (reference / final / name).read_bytes(), name


def interrupted_run(path: Path, at: int, signum: int = signal.SIGINT, **changes) -> TrainingInterrupted:
    with pytest.raises(TrainingInterrupted) as stopped:
        api.train(tiny_config(**changes), path, reporter=Recorder(at, signum))
    return stopped.value


def test_a_run_stopped_by_sigint_and_resumed_is_bit_identical(reference, tmp_path):
    stopped = interrupted_run(tmp_path / "run", at=15)
    assert stopped.exit_code == 130 and "--resume" in str(stopped)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000015", "step-00000010"]
    assert not (tmp_path / "run" / "ema.safetensors").exists()  # unfinished: no final weights yet
    recorder = Recorder()
    api.resume(tmp_path / "run", reporter=recorder)
    assert any("from step-00000015" in note for note in recorder.notes), recorder.notes
    assert_same_run(tmp_path / "run", reference)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 15, 20, 25, 30]  # the resume is noted once, no step logged twice


def test_sigterm_exits_143_and_handlers_are_restored(reference, tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert interrupted_run(tmp_path / "run", at=25, signum=signal.SIGTERM).exit_code == 143
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    api.resume(tmp_path / "run")
    assert_same_run(tmp_path / "run", reference)


def test_a_second_signal_while_stopping_changes_nothing():
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    assert signals.received == signal.SIGTERM


def test_corrupt_newest_checkpoint_is_reported_and_skipped(reference, tmp_path):
    run = tmp_path / "run"
    interrupted_run(run, at=25)
    newest = run / CHECKPOINTS / "step-00000025" / "optimizer.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    recorder = Recorder()
    api.resume(run, reporter=recorder)
    assert any("step-00000025/optimizer.safetensors is corrupt or truncated" in note for note in recorder.notes), recorder.notes
    assert any("from step-00000020" in note for note in recorder.notes), recorder.notes
    assert_same_run(run, reference)


def test_no_valid_checkpoint_is_an_error_that_damages_nothing(tmp_path):
    run = tmp_path / "run"
    interrupted_run(run, at=15, keep_checkpoints=1)
    assert [p.name for p in list_checkpoints(run)] == ["step-00000015"]
    manifest = run / CHECKPOINTS / "step-00000015" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"step": 15', '"step": "fifteen"'))
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(GenflowError, match="no checkpoint .* verifies"):
        api.resume(run)
    assert files == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_checkpoints_are_pruned_to_the_newest_k_after_each_commit(tmp_path):
    run = api.train(tiny_config(checkpoint_every=5, keep_checkpoints=2), tmp_path / "run")
    assert [p.name for p in list_checkpoints(run)] == ["step-00000030", "step-00000025"]
    assert latest_name(run) == "step-00000030"
    assert read_checkpoint(run / CHECKPOINTS / "step-00000030").step == 30
    assert not [p for p in (run / CHECKPOINTS).iterdir() if p.name.startswith(".")]


def image_folder(path: Path, mode: str) -> Path:
    from PIL import Image

    path.mkdir()
    for i in range(40):
        Image.new(mode, (8, 8), color=(i * 6, 255 - i * 6, 0)[: len(mode)]).save(path / f"{i}.png")  # RGB: in colour
    return path


def test_resume_may_raise_the_budget_and_refuses_to_change_the_run(tmp_path):
    run = api.train(tiny_config(steps=10), tmp_path / "run")
    for overrides, key in (
        ({"process": "ddpm"}, "process is 'rectified-flow', not 'ddpm'"),
        ({"process_options": {"prediction": "x0"}}, "process option prediction"),
        ({"lr": 1e-3}, "lr is 0.003, not 0.001"),
        ({"batch_size": 16}, "batch_size"),
        ({"dataset": str(image_folder(tmp_path / "grey", "L"))}, "dataset is 'digits'"),
        ({"dataset": str(image_folder(tmp_path / "rgb", "RGB"))}, "model.channels is 1, not 3"),
        ({"steps": 5}, "already at step 10; --steps must be at least 10"),
    ):
        with pytest.raises(GenflowError, match=key):
            api.resume(run, overrides)
    recorder = Recorder()
    api.resume(run, {"steps": 20, "device": "cpu"}, reporter=recorder)
    assert any("steps 10 -> 20" in note for note in recorder.notes), recorder.notes
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 20
    assert latest_name(run) == "step-00000020"
    resumed = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "resumed_from" in line]
    assert resumed == [{"step": 10, "resumed_from": "step-00000010", "changes": {"steps": [10, 20]}}]


def test_resume_refuses_changed_images(tmp_path):
    from PIL import Image

    folder = image_folder(tmp_path / "images", "L")
    run = api.train(tiny_config(steps=2, dataset=str(folder), batch_size=16), tmp_path / "run")
    Image.new("L", (8, 8), color=255).save(folder / "0.png")
    with pytest.raises(GenflowError, match="data sha256 is '[0-9a-f]{16}', not '[0-9a-f]{16}'"):
        api.resume(run, {"steps": 4})


def test_an_unfinished_run_samples_from_its_newest_checkpoint(tmp_path):
    run = tmp_path / "run"
    interrupted_run(run, at=20)
    loaded = api.load(run, device="cpu")
    ema = read_checkpoint(run / CHECKPOINTS / "step-00000020").tensors("ema")
    assert all(torch.equal(v, ema[f"backbone.{k}"]) for k, v in loaded.model.backbone.state_dict().items())


def flaky_training(run: Path, bad: set[int], monkeypatch, **changes) -> Recorder:
    """Train a tiny run into ``run`` whose losses are NaN on the ``bad`` steps (1-based)."""
    config = tiny_config(**changes)
    setup = api.prepare(config)
    process_class, calls = type(setup.process), []
    real_loss = process_class.loss_at

    def flaky_loss(self, model, x0, t, eps):
        calls.append(1)
        loss = real_loss(self, model, x0, t, eps)
        return loss * float("nan") if len(calls) in bad else loss

    monkeypatch.setattr(process_class, "loss_at", flaky_loss)
    (run / "samples").mkdir(parents=True)
    recorder = Recorder()
    Trainer(setup, run, recorder).run()
    return recorder


def newest(run: Path):
    return read_checkpoint(run / CHECKPOINTS / latest_name(run))


def test_nonfinite_steps_are_skipped_and_reported(tmp_path, monkeypatch):
    recorder = flaky_training(tmp_path / "run", {3, 4, 17}, monkeypatch, steps=20)
    assert [n for n in recorder.notes if "non-finite" in n] == [
        "step 3: non-finite loss or gradient, step skipped (1 in a row)",
        "step 4: non-finite loss or gradient, step skipped (2 in a row)",
        "step 17: non-finite loss or gradient, step skipped (1 in a row)",
    ]
    final = newest(tmp_path / "run")
    assert final.step == 20 and final.state["nonfinite_streak"] == 0
    assert all(torch.isfinite(w).all() for w in final.tensors("model").values())


def test_k_nonfinite_steps_in_a_row_stop_training_with_exit_code_3(tmp_path, monkeypatch):
    with pytest.raises(TrainingDiverged) as diverged:
        flaky_training(tmp_path / "run", set(range(8, 40)), monkeypatch, max_nonfinite=5, checkpoint_every=5)
    assert diverged.value.exit_code == 3 and "5 non-finite steps in a row up to step 12" in str(diverged.value)
    assert newest(tmp_path / "run").step == 10  # saved after the skipped steps 8-10: the step-7 weights, finite
    assert not (tmp_path / "run" / "ema.safetensors").exists()


def test_nonfinite_weights_are_never_saved(tmp_path):
    trainer = Trainer(api.prepare(tiny_config()), tmp_path)
    trainer.save_checkpoint()
    with torch.no_grad():
        next(trainer.state.ema.parameters())[0] = float("inf")
    trainer.state.step = 1
    with pytest.raises(
        TrainingDiverged, match="weights became non-finite by step 1 and were not saved; the last checkpoint is .*step-00000000"
    ):
        trainer.save_checkpoint()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000000"]


FULL_DISK = "Error while serializing: I/O error: No space left on device (os error 28)"
"""What safetensors raises (its own SafetensorError, not an OSError) writing to a full disk: seen
on a 64 KiB tmpfs."""


def test_disk_full_while_saving_keeps_the_previous_checkpoint(reference, tmp_path, monkeypatch):
    import genflow.storage as storage_module

    real_save, calls = storage_module.save_file, []

    def fills_up(tensors, path):
        calls.append(path)
        if len(calls) == 6:  # the second file of the step-20 checkpoint
            Path(path).write_bytes(b"partial")
            raise SafetensorError(FULL_DISK)
        real_save(tensors, path)

    monkeypatch.setattr(storage_module, "save_file", fills_up)
    run = tmp_path / "run"
    with pytest.raises(GenflowError) as error:
        api.train(tiny_config(), run)
    message = str(error.value)
    assert "No space left on device" in message and "step-00000010 is intact" in message and "--resume" in message
    assert sorted(p.name for p in (run / CHECKPOINTS).iterdir()) == ["latest", "step-00000010"]  # no half-written folder
    assert read_checkpoint(run / CHECKPOINTS / "step-00000010").step == 10
    monkeypatch.setattr(storage_module, "save_file", real_save)
    api.resume(run)
    assert_same_run(run, reference)


def test_overwrite_replaces_every_file_of_the_previous_run(tmp_path):
    run = api.train(tiny_config(steps=20, checkpoint_every=5), tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    api.train(tiny_config(steps=4, checkpoint_every=2), run, overwrite=True)
    assert [p.name for p in list_checkpoints(run)] == ["step-00000004", "step-00000002"]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [4]
    assert (run / "notes.txt").read_text() == "mine"


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(GenflowError, match="holds config.json but is not a genflow run"):
        api.train(tiny_config(steps=2), folder, overwrite=True)
    assert (folder / "config.json").read_text() == "{}"


def test_a_run_being_trained_cannot_be_trained_by_a_second_process(reference, tmp_path):
    import fcntl

    run = tmp_path / "run"
    interrupted_run(run, at=10)
    fd = os.open(run, os.O_RDONLY)  # what the other process holds
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(GenflowError, match="being trained by another genflow process"):
            api.resume(run)
        with pytest.raises(GenflowError, match="being trained by another genflow process"):
            api.train(tiny_config(), run, overwrite=True)
    finally:
        os.close(fd)
    api.resume(run)
    assert_same_run(run, reference)


def test_a_run_killed_before_its_first_checkpoint_restarts_from_step_0(reference, tmp_path):
    import shutil

    run = tmp_path / "run"
    interrupted_run(run, at=5)
    shutil.rmtree(run / CHECKPOINTS)  # as if killed before the first save
    recorder = Recorder()
    api.resume(run, reporter=recorder)
    assert any("no checkpoint yet: training from step 0" in note for note in recorder.notes), recorder.notes
    assert_same_run(run, reference)
