"""Run directories: resolved config as JSON, weights as safetensors; no pickled objects.

A run directory holds ``config.json`` (the resolved training config, the process options,
the backbone config and the data shape), ``ema.safetensors`` and ``model.safetensors``
(EMA and raw weights), ``metrics.jsonl`` and ``samples/``. Files are written to a temporary
name, flushed to disk and renamed into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from genflow.errors import GenflowError

CONFIG = "config.json"
EMA_WEIGHTS = "ema.safetensors"
RAW_WEIGHTS = "model.safetensors"
LATEST = "latest"


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, fsync the file, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as file:
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2) + "\n"))


def save_weights(path: Path, module: nn.Module) -> None:
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file; anything else (a pickle, a truncated file) is refused."""
    if not path.is_file():
        raise GenflowError(f"missing weights file {path}; is this a finished genflow run?")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise GenflowError(f"{path} is not a valid safetensors file ({error}); genflow reads only safetensors weights") from None


def point_latest(runs_root: Path, run_dir: Path) -> None:
    """Make ``runs_root/latest`` a symlink to ``run_dir``, replaced atomically."""
    link = runs_root / LATEST
    tmp = runs_root / f".{LATEST}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(run_dir.resolve(), runs_root.resolve()), tmp)
    os.replace(tmp, link)


@dataclass
class RunFiles:
    """The parsed ``config.json`` of a run directory."""

    path: Path
    config: dict[str, Any]


def read_run(run: str | Path) -> RunFiles:
    path = Path(run)
    if not path.exists():
        raise GenflowError(f"run {path} does not exist; train one with 'genflow train' or pass a run directory")
    config_file = path / CONFIG
    if not config_file.is_file():
        raise GenflowError(f"{path} is not a genflow run (no {CONFIG}); pass a directory made by 'genflow train'")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GenflowError(f"{config_file} is not valid JSON ({error})") from None
    for key in ("train", "process", "model"):
        if key not in config:
            raise GenflowError(f"{config_file} lacks {key!r}; it was not written by genflow train")
    return RunFiles(path, config)
