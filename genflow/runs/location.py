"""Where a run is, checked without torch: the command line refuses a run that is not there, or
not a genflow run, before it imports anything heavy (an argument error answers at once)."""

from __future__ import annotations

import os
from pathlib import Path

from genflow.errors import GenflowError

CONFIG = "config.json"
DEFAULT_RUNS = Path("runs")
LATEST = "latest"
"""The link to the newest: ``runs/latest`` among runs, ``checkpoints/latest`` among a run's checkpoints."""


def followed(path: Path) -> Path:
    """``path``, or where it points when it is a link such as ``runs/latest`` (through every
    link), so that output names the run itself; relative where the links are."""
    for _ in range(40):  # the kernel's own limit on a chain of links
        if not path.is_symlink():
            return path
        target = Path(os.readlink(path))
        path = target if target.is_absolute() else Path(os.path.relpath(path.parent.resolve() / target))
    return path


def resolve_run(run: str | Path | None) -> Path:
    """The run named, or ``runs/latest``."""
    if run is not None:
        return Path(run)
    latest = DEFAULT_RUNS / LATEST
    if not latest.exists():
        raise GenflowError("no run given and no runs/latest; train one with 'genflow train' or pass RUN")
    return latest


def run_folder(run: str | Path | None) -> Path:
    """The run's folder (``runs/latest`` when ``None``, links followed), refused in one line when it
    does not exist or holds no ``config.json``."""
    path = followed(resolve_run(run))
    if not path.exists():
        raise GenflowError(f"run {path} does not exist; train one with 'genflow train' or pass a run directory")
    if not (path / CONFIG).is_file():
        if (path / "model_index.json").is_file():
            raise GenflowError(f"{path} is a diffusers model, not a genflow run; import it first with 'genflow import {path} --out RUN'")
        raise GenflowError(f"{path} is not a genflow run (no {CONFIG}); pass a directory made by 'genflow train'")
    return path
