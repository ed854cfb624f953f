"""What a new user meets in the first hour: training progress from the first step, training
keys on the command line, the resolved config as TOML, a bounded warm-up, the final grid."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from conftest import TINY_MODEL, invoke, tiny_preset

from genflow import api
from genflow.config import TrainConfig
from genflow.progress import SilentReporter
from genflow.train import Trainer

TINY_TRAIN = {"model": TINY_MODEL, "device": "cpu", "batch_size": 16, "sample_every": 0, "sample_steps": 2, "final_grid": False}


class Notes(SilentReporter):
    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)


@pytest.fixture
def tiny(tmp_path) -> Path:
    return tiny_preset(tmp_path / "tiny.toml", steps=3, batch_size=16, sample_every=0, sample_steps=2, device="cpu")


def test_plain_progress_reports_the_first_step_at_once_and_the_grid(tiny, tmp_path):
    result = invoke("train", "--config", tiny, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert "after 0 warm-up steps" in lines[0] and "steps 1..3 of batch 16" in lines[0]
    assert lines[1].startswith("step 1/3  loss ")  # log_every is 50: the first step is reported anyway
    assert any("sampling a grid of 64" in line for line in lines)
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [3]


def test_training_keys_and_model_keys_from_the_command_line(tiny, tmp_path):
    run = tmp_path / "run"
    result = invoke(
        "train", "--config", tiny, "--out", run, "-o", "log_every=1", "--ema-decay", "0.9", "--warmup-steps", "0",
        "-o", "model.dropout=0.1", "--no-final-grid",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((run / "config.json").read_text())
    assert (record["train"]["log_every"], record["train"]["ema_decay"], record["model"]["dropout"]) == (1, 0.9, 0.1)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert not any((run / "samples").iterdir())  # --no-final-grid


def test_print_config_round_trips_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    printed = invoke("train", "--process", "ddpm", "--steps", "300", "-o", "timesteps=500", "--print-config")
    assert printed.exit_code == 0, printed.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    values = tomllib.loads(printed.stdout)
    assert (values["process"], values["process_options"]["timesteps"], values["model"]["block_channels"]) == ("ddpm", 500, [32, 64, 64])
    (tmp_path / "printed.toml").write_text(printed.stdout)
    again = invoke("train", "--config", tmp_path / "printed.toml", "--print-config")
    assert again.stdout == printed.stdout


def test_warmup_is_capped_at_a_tenth_of_the_run(tmp_path):
    printed = invoke("train", "--steps", "100", "--print-config")
    assert "\nwarmup_steps = 10\n" in printed.stdout
    assert "\nwarmup_steps = 100\n" in invoke("train", "--steps", "5000", "--print-config").stdout
    trained = invoke("train", "--config", tiny_preset(tmp_path / "t.toml", steps=3, warmup_steps=50, device="cpu", final_grid=False),
                     "--out", tmp_path / "run")  # fmt: skip
    assert "after 0 warm-up steps" in trained.stderr.splitlines()[0]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["warmup_steps"] == 0


def test_a_long_run_gets_advice_after_its_first_steps(tmp_path, monkeypatch):
    setup = api.prepare(TrainConfig.from_dict({**TINY_TRAIN, "steps": 20000}))
    notes = Notes()
    trainer = Trainer(setup, tmp_path, notes)
    trainer.advise_on_pace(0.01)  # 3 minutes: nothing to say
    assert notes.notes == []
    trainer.advise_on_pace(1.0)
    assert "5.6 h more" in notes.notes[0] and "--steps" in notes.notes[0]


def test_the_loop_times_its_pace_after_the_first_step_and_again_before_advising(tmp_path, monkeypatch):
    """A long run's advice comes after a second estimate, timed after the first one (steps 2 to 6)."""
    from genflow.train import loop

    paces = []
    monkeypatch.setattr(loop, "LONG_RUN_SECONDS", 0.0)  # every run is long
    monkeypatch.setattr(loop, "PACE_RECHECK_SECONDS", 0.0)  # the second estimate over one step
    monkeypatch.setattr(loop.Trainer, "advise_on_pace", lambda self, pace: paces.append((self.state.step, pace)))
    api.train(TrainConfig.from_dict({**TINY_TRAIN, "steps": 10}), tmp_path / "run")
    assert len(paces) == 1 and paces[0][0] == 1 + loop.PACE_STEPS + 1 and paces[0][1] > 0


@pytest.mark.parametrize(("later", "advised"), [(0.01, None), (2.0, 2.0)])
def test_a_busy_start_is_timed_again_before_a_long_run_is_advised(later, advised):
    """Issue 30: a machine busy during the first steps made a 6-minute run "need about 1.7 h"."""
    from genflow.train.loop import PACE_RECHECK_SECONDS, PACE_STEPS, PaceWatch

    watch = PaceWatch(first=1, is_long=lambda pace: pace * 1000 >= 1800)  # 1000 steps left; long: 30 min
    said = [watch.pace_to_advise(1, 0.0)]
    said += [watch.pace_to_advise(step, 2.0 * (step - 1)) for step in range(2, 2 + PACE_STEPS)]  # busy: 2 s a step
    start = 2.0 * PACE_STEPS
    steps = int(PACE_RECHECK_SECONDS / later) + 1
    said += [watch.pace_to_advise(1 + PACE_STEPS + k, start + later * k) for k in range(1, steps + 1)]
    assert [pace for pace in said if pace is not None] == ([] if advised is None else [pytest.approx(advised)])


def test_the_progress_bar_shows_no_loss_before_the_first_step():
    from io import StringIO

    from rich.console import Console

    from genflow.progress import RichReporter

    def shown(reporter: RichReporter) -> str:
        screen = StringIO()
        Console(file=screen, width=120).print(reporter.progress.get_renderable())
        return screen.getvalue()

    reporter = RichReporter(Console(file=StringIO()))
    reporter.start(total=10)
    before = shown(reporter)
    reporter.step(1, 0.1234, 1e-3)
    after = shown(reporter)
    reporter.finish()
    assert "loss -" in before and "nan" not in before, before
    assert "loss 0.1234" in after, after


def test_train_help_says_where_the_unset_numbers_come_from(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per option
    shown = invoke("train", "--help").stdout
    for flag, value in (("--steps", "3000"), ("--batch-size", "128"), ("--lr", "0.002")):
        line = next(line for line in shown.splitlines() if f" {flag} " in line)
        assert f"{value} in rectified-flow's" in line, line
