"""Shared fixtures: closed-form data and the processes every test runs over."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from genflow import make_process
from genflow.toy import GaussianMixture


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker (and every process it starts: torchrun's, the CLI's) gets
    its share of the cores, so that workers never oversubscribe them: two workers of two
    threads each on two cores run several times slower than one after the other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


SLOW_FIXTURES = {"conditional_run", "trained_runs", "reference"}
"""Trained runs that take seconds to make: a test that needs one is slow (``-m 'not slow'`` skips it)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def made_once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], Path]) -> Path:
    """``make(folder)`` once per test session, shared by the pytest-xdist workers (pytest-xdist's
    recipe: the first worker makes it under a file lock in the session's shared temporary folder,
    the others wait for it and reuse it)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return make(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent / name
    shared.mkdir(exist_ok=True)
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = shared / ".done"
        if not done.exists():
            made = make(shared)
            done.write_text(str(made))
        return Path(done.read_text())


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch, tmp_path_factory):
    """No test reads the user's Inception weights variable or writes to their cache."""
    monkeypatch.delenv("GENFLOW_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("GENFLOW_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "genflow-cache"))

PROCESS_CONFIGS = [
    ("ddpm", {}),
    ("ddpm", {"beta_schedule": "cosine"}),
    ("ddim", {}),
    ("sde", {"sde": "vp"}),
    ("sde", {"sde": "ve"}),
    ("sde", {"sde": "subvp"}),
    ("rectified-flow", {}),
    ("cnf", {}),
]
PROCESS_IDS = [name + "".join(f"-{v}" for v in options.values()) for name, options in PROCESS_CONFIGS]


@pytest.fixture(params=PROCESS_CONFIGS, ids=PROCESS_IDS)
def process(request):
    name, options = request.param
    return make_process(name, **options)


def four_blobs() -> GaussianMixture:
    """Four well-separated 2-D Gaussians: a multimodal target with an exact denoiser."""
    return GaussianMixture([[2.0, 2.0], [-2.0, 2.0], [2.0, -2.0], [-2.0, -2.0]], std=0.3)


BLOB_SAMPLES = 2000


@pytest.fixture
def one_thread():
    """Small samples gain nothing from threads, and test machines are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def blobs_floor():
    """``BLOB_SAMPLES`` samples of the four blobs and the mean energy distance between
    independent samples of them: the sample-size floor (single draws range over 0.6x to 2x
    this mean at 2000 points)."""
    blobs = four_blobs()
    data = blobs.sample(BLOB_SAMPLES, torch.Generator().manual_seed(1))
    floors = [energy_distance(data, blobs.sample(BLOB_SAMPLES, torch.Generator().manual_seed(s))) for s in range(2, 7)]
    return data, sum(floors) / len(floors)


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Szekely's energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` between two samples."""
    a, b = a.double(), b.double()
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def invoke(*args: object):
    """Run the genflow command in this process (Typer's runner; a traceback fails the test)."""
    from typer.testing import CliRunner

    from genflow.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def expect_usage_error(result, *fragments: str) -> None:
    """Exit code 2 and one line on stderr containing every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "Traceback" not in result.output and len(message.splitlines()) == 1, message
    assert message.startswith("genflow: error: "), message
    for fragment in fragments:
        assert fragment in message, message


TINY_MODEL = {"block_channels": [16, 32], "attention": [False, False], "norm_groups": 8}  # 0.16M parameters
TINY_DIT = {"backbone": "dit", "patch_size": 2, "width": 32, "depth": 2, "heads": 2}  # 0.06M parameters


def tiny_preset(path: Path, model: dict = TINY_MODEL, **values: object) -> Path:
    """Write a TOML preset with these training keys and the tiny backbone; returns ``path``."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    lines += ["", "[model]", *(f"{key} = {json.dumps(value)}" for key, value in model.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def conditional_run(tmp_path_factory) -> Path:
    """A class-conditional rectified-flow run on the digits, trained once per session (150 steps
    of batch 64, about 30 s on two cores): at 10 Euler steps about 92% of its samples of class k
    are called k by the shipped classifier at guidance 1, and all of them at guidance 2."""
    from genflow import api
    from genflow.config import TrainConfig

    config = TrainConfig(
        conditional=True, steps=150, batch_size=64, warmup_steps=15, sample_every=0, final_grid=False, device="cpu"
    )
    return made_once(tmp_path_factory, "conditional", lambda folder: api.train(config, folder / "run"))
