"""The command line answers help, ``list`` and argument errors without importing torch or
diffusers (seconds of start-up); the timing itself is in benchmarks/bench_startup.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow  # every test starts an interpreter

HEAVY = ("torch", "diffusers", "torchvision", "torchdiffeq", "scipy", "sklearn")

PROBE = """
import json, sys
from typer.testing import CliRunner
from genflow.cli import app

codes = [CliRunner().invoke(app, args).exit_code for args in json.loads(sys.argv[1])]
heavy = sorted({name.split('.')[0] for name in sys.modules} & set(json.loads(sys.argv[2])))
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def heavy_imports_after(*commands: list[str]) -> tuple[list[int], list[str]]:
    """Exit codes of ``commands`` run in one fresh interpreter, and the heavy modules it imported."""
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(commands), json.dumps(HEAVY)], capture_output=True, text=True, timeout=120, check=False
    )
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    return result["codes"], result["heavy"]


def test_help_and_list_import_no_torch():
    codes, heavy = heavy_imports_after(["--help"], ["list"], ["train", "--help"], ["sample", "--help"], ["eval", "--help"])
    assert codes == [0, 0, 0, 0, 0]
    assert heavy == []


def test_argument_errors_import_no_torch():
    codes, heavy = heavy_imports_after(
        ["sample", "--steps", "x"],
        ["train", "--process", "ddmp"],
        ["train", "--process", "ddpm", "-o", "timesteps=abc"],
        ["sweep"],
        ["sample", "--steps", "0"],  # the values every command shares, checked by name before a command runs
        ["sample", "--n", "1000000000"],
        ["sample", "--solver", "eulr"],
        ["sample", "--grid", "lin"],
        ["sample", "--device", "tpu"],
        ["sample", "--seed", str(2**70)],
        ["eval", "--steps", "0"],
        ["eval", "--batch-size", "0"],
        ["sweep", "RUN", "--n", "0"],
        ["train", "--backbone", "dot"],
        ["info", "no-such-run"],  # a run that is not there, for every command that takes one
        ["export", "no-such-run", "out"],
        ["sample", "no-such-run"],
        ["sweep", "no-such-run"],
        ["reflow", "no-such-run", "--out", "student"],
    )
    assert codes == [2] * 19
    assert heavy == []


def test_the_library_imports_torch_only_when_used():
    script = (
        "import sys, genflow; genflow.make_process('ddpm'); print('torch' in sys.modules); "
        "genflow.make_process('ddpm').coefficients(0.5); print('torch' in sys.modules)"
    )
    probe = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert probe.stdout.split() == ["False", "True"], probe.stderr


@pytest.mark.parametrize("delay", [1.0, 2.0, 3.5])
def test_ctrl_c_while_genflow_starts_is_one_line_and_130(delay, tmp_path):
    """SIGINT at any moment of start-up (typer, torch, diffusers being imported) or of the
    training (a checkpoint is saved): exit 130 and a last line that says so, no traceback. The
    child gets SIGINT's default action, as in a terminal (a CI runner or a shell's background
    job may pass SIGINT down ignored, and Python keeps ignoring it then)."""
    command = [sys.executable, "-m", "genflow", "train", "--steps", "1000", "--out", str(tmp_path / "run")]
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)  # a handler, not SIG_IGN, is reset by exec
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    finally:
        signal.signal(signal.SIGINT, ignored)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("genflow: "), stderr


def test_help_in_a_pipe_keeps_every_option_name_whole():
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    shown = subprocess.run(["genflow", "train", "--help"], capture_output=True, text=True, timeout=60, env=env, check=True).stdout
    for flag in ("--grad-accumulation", "--gradient-checkpointing", "--no-gradient-checkpointing", "--checkpoint-every"):
        assert flag in shown, shown
    options = [line for line in shown.splitlines() if line.startswith("│ --")]
    assert options and not any("…" in line[:64] for line in options)  # the name and negation columns
