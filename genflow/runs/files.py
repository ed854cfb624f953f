"""Run directories: what a training run leaves on disk, and how it is found, locked and read.

A run directory holds ``config.json`` (the run's record: the resolved training config, the
process with its options, the backbone config and a fingerprint of the training images),
``ema.safetensors`` and ``model.safetensors`` (final EMA and raw weights), ``metrics.jsonl``
(one JSON object per line), ``samples/`` and ``checkpoints/`` (:mod:`genflow.runs.checkpoint`).
``runs/latest`` points at the newest run made under ``runs/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genflow.config import TrainConfig
from genflow.errors import GenflowError
from genflow.runs.checkpoint import CHECKPOINTS, newest_valid_checkpoint
from genflow.runs.location import CONFIG, DEFAULT_RUNS, LATEST, run_folder
from genflow.storage import TEMPORARY_SUFFIX, atomic_write, load_weights, remove_temporaries

EMA_WEIGHTS = "ema.safetensors"
RAW_WEIGHTS = "model.safetensors"
METRICS = "metrics.jsonl"
SAMPLES = "samples"
RUN_FILES = (CONFIG, EMA_WEIGHTS, RAW_WEIGHTS, METRICS, SAMPLES, CHECKPOINTS)
RUN_FORMAT = "genflow-run/3"
RECORDED_APART = ("process", "process_options", "model")
"""Training keys that config.json records once, resolved, under ``process`` and ``model``."""


@dataclass
class RunFiles:
    """A run directory and its parsed ``config.json`` (in today's form, whatever wrote it)."""

    path: Path
    config: dict[str, Any]

    def train_config(self) -> TrainConfig:
        """The run's resolved training config."""
        return config_from_record(self.config, source=str(self.path / CONFIG))


def data_record(count: int, fingerprint: str, labels: Tensor | None = None, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """How many training images there are and their fingerprint (:func:`data_fingerprint` of
    images in memory, :meth:`genflow.data.folders.ImageFiles.fingerprint` of streamed files); for a
    conditional run also the labels' fingerprint and the class names (index = label)."""
    record: dict[str, Any] = {"images": count, "sha256": fingerprint}
    if labels is not None:
        record |= {"labels_sha256": data_fingerprint(labels), "classes": list(classes or [])}
    return record


def run_record(config: TrainConfig, version: str, data: dict[str, Any]) -> dict[str, Any]:
    """What ``config.json`` holds for a run trained with the resolved ``config`` on ``data``
    (a :func:`data_record`): each key once."""
    values = config.to_dict()
    return {
        "format": RUN_FORMAT,
        "genflow_version": version,
        "train": {k: v for k, v in values.items() if k not in RECORDED_APART},
        "process": {"name": config.process, "options": config.process_options},
        "model": config.model,
        "data": data,
    }


def config_from_record(record: dict[str, Any], source: str) -> TrainConfig:
    train = {k: v for k, v in record["train"].items() if k not in RECORDED_APART}
    process = {"process": record["process"]["name"], "process_options": record["process"]["options"]}
    return TrainConfig.from_dict({**train, **process, "model": record["model"]}, source=source)


def upgraded(record: dict[str, Any]) -> dict[str, Any]:
    """A record in today's form, whatever genflow wrote it. genflow 0.1 also kept the process,
    its options as given and the model overrides inside ``train``: the resolved ``process`` and
    ``model`` stay, the copies go. Before genflow-run/3 every backbone was fed ``999 t``: the
    record says so (``model.time_embedding``), so those weights keep their input."""
    if record.get("format") == RUN_FORMAT:
        return record
    train = {k: v for k, v in record["train"].items() if k not in RECORDED_APART}
    model = {"time_embedding": "999t", **record["model"]}
    return {**record, "format": RUN_FORMAT, "train": train, "model": model}


FINGERPRINT_ROWS = 4096
"""Rows hashed at a time, so a large dataset is never copied whole."""


def data_fingerprint(values: Tensor) -> str:
    """sha256 of the training images as floats in [-1, 1] in float32 (uint8 pixels mapped as
    training maps them; labels as int64), to tell on resume whether the data changed; hashed
    :data:`FINGERPRINT_ROWS` rows at a time (the digest is that of the whole array)."""
    from genflow.data.pixels import as_unit_range

    digest = hashlib.sha256()
    for rows in values.detach().cpu().split(FINGERPRINT_ROWS):
        rows = as_unit_range(rows) if rows.dtype == torch.uint8 and values.dim() == 4 else rows
        dtype = torch.int64 if not rows.dtype.is_floating_point else torch.float32
        digest.update(rows.to(dtype).contiguous().numpy().data)
    return digest.hexdigest()


def read_run(run: str | Path | None) -> RunFiles:
    path = run_folder(run)
    config_file = path / CONFIG
    try:
        record = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GenflowError(f"{config_file} is not valid JSON ({error})") from None
    for key in ("train", "process", "model"):
        if not isinstance(record, dict) or not isinstance(record.get(key), dict):
            raise GenflowError(f"{config_file} lacks {key!r}; it was not written by genflow train")
    return RunFiles(path, upgraded(record))


def new_run_dir(out: Path | None, process: str, overwrite: bool) -> Path:
    """``out``, or ``runs/<time>-<process>``; an existing non-empty ``out`` is refused
    unless ``overwrite`` (then the previous run's files in it are replaced)."""
    run_dir = out or DEFAULT_RUNS / f"{time.strftime('%Y%m%d-%H%M%S')}-{process}"
    if run_dir.exists() and not run_dir.is_dir():
        raise GenflowError(f"{run_dir} is a file, not a folder; choose another --out (a run is a folder)")
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise GenflowError(f"{run_dir} exists and is not empty; choose another --out or pass --overwrite")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GenflowError(f"cannot create run directory {run_dir}: {error.strerror}") from None
    return run_dir


def is_default_location(out: Path | None, run_dir: Path) -> bool:
    """Whether ``runs/latest`` should point at ``run_dir``."""
    return out is None or run_dir.parent == DEFAULT_RUNS


def point_latest(runs_root: Path, run_dir: Path) -> None:
    """Make ``runs_root/latest`` a symlink to ``run_dir``, replaced atomically."""
    link = runs_root / LATEST
    tmp = runs_root / f".{LATEST}{TEMPORARY_SUFFIX}"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(run_dir.resolve(), runs_root.resolve()), tmp)
    os.replace(tmp, link)


@contextmanager
def exclusive_run(run_dir: Path) -> Iterator[None]:
    """Hold an advisory lock on the run directory (``flock`` on the directory itself, so no
    file is made; the kernel drops it when the process dies, even by ``kill -9``). A second
    training of the same run is refused instead of interleaving checkpoints. Only the process
    that writes (``runtime.is_main``) takes it."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs are not guarded there
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GenflowError(
                f"{run_dir} is being trained by another genflow process; wait for it, or stop it (Ctrl-C saves a checkpoint)"
            ) from None
        yield
    finally:
        os.close(fd)


def clear_run(run_dir: Path) -> None:
    """Remove what a previous run left in ``run_dir`` (for ``--overwrite``), so none of its
    checkpoints, weights or metrics mix with the new run's; other files are left alone. A
    folder holding such names that is not a genflow run is refused, not cleared."""
    present = [name for name in RUN_FILES if (run_dir / name).exists() or (run_dir / name).is_symlink()]
    if present:
        try:
            read_run(run_dir)
        except GenflowError:
            raise GenflowError(
                f"{run_dir} holds {', '.join(present)} but is not a genflow run; --overwrite replaces only genflow runs, so choose another --out"
            ) from None
    for name in present:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def remove_run_temporaries(run_dir: Path) -> None:
    remove_temporaries((run_dir, run_dir / CHECKPOINTS, run_dir / SAMPLES))


class MetricsLog:
    """``metrics.jsonl``, opened for appending: one JSON object per line, flushed at once."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def keep_metrics_through(path: Path, step: int, resumed: dict[str, Any]) -> None:
    """Drop metrics.jsonl lines past ``step`` (they will be logged again) and any line a kill
    cut short, then note the resume."""
    kept = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    kept.append(json.dumps(resumed))
    atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))


def logged_losses(run_dir: Path) -> list[dict[str, Any]]:
    """The loss lines of metrics.jsonl (not evaluation or resume lines)."""
    path = run_dir / METRICS
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if '"loss"' in line]


def ema_weights(run_dir: Path, steps: int) -> tuple[dict[str, Tensor], Path, int | None]:
    """The final EMA weights of the backbone, or those of the newest checkpoint that verifies
    while the run is unfinished (interrupted, still training, or resumed with a larger
    ``steps`` budget, when the final weights are those of an earlier end), with their file
    and the checkpoint's step (``None`` for the final weights)."""
    final = run_dir / EMA_WEIGHTS
    checkpoint = newest_valid_checkpoint(run_dir, report=lambda message: None)
    if final.exists() and (checkpoint is None or checkpoint.step >= steps):
        return load_weights(final), final, None
    if checkpoint is None:
        raise GenflowError(
            f"{run_dir} has no weights yet (no {EMA_WEIGHTS}, no checkpoint); let it train or resume it with 'genflow train --resume {run_dir}'"
        )
    weights = {k.partition(".")[2]: v for k, v in checkpoint.tensors("ema").items()}  # backbone.* (unet.* before 0.3)
    return weights, checkpoint.path / EMA_WEIGHTS, checkpoint.step


def checkpoint_status(run_dir: Path, steps: int) -> str:
    """The newest checkpoint that verifies, and whether the run is finished."""
    checkpoint = newest_valid_checkpoint(run_dir, report=lambda message: None)
    if checkpoint is None:
        return "none"
    if checkpoint.step >= steps and (run_dir / EMA_WEIGHTS).is_file():
        return f"{checkpoint.path.name} (finished)"
    return f"{checkpoint.path.name} ({checkpoint.step} of {steps} steps; continue with 'genflow train --resume {run_dir}')"
