"""Training checkpoints: ``checkpoints/step-NNNNNNNN/`` in a run directory.

A checkpoint is a directory of safetensors files (one per group of tensors) and
``manifest.json`` (the format tag, the step, the non-tensor state, and the sha256 of every
file). It is written into a hidden temporary directory, fsynced, and renamed into place; then
``checkpoints/latest`` (a one-line file naming it) is replaced the same way, and only then are
old checkpoints pruned. A crash at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genflow.errors import GenflowError
from genflow.runs.location import LATEST
from genflow.storage import (
    TEMPORARY_SUFFIX,
    atomic_write,
    fsync_path,
    load_weights,
    make_shareable,
    save_safetensors,
    sha256_file,
)

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
CHECKPOINT_FORMAT = "genflow-checkpoint/1"
CHECKPOINT_NAME = re.compile(r"step-(\d+)")


@dataclass
class Checkpoint:
    """A checkpoint directory whose manifest parsed and whose files match their sha256."""

    path: Path
    step: int
    state: dict[str, Any]

    def tensors(self, group: str) -> dict[str, torch.Tensor]:
        return load_weights(self.path / f"{group}.safetensors")


def write_checkpoint(
    run_dir: Path, step: int, groups: dict[str, dict[str, torch.Tensor]], state: dict[str, Any], keep: int
) -> Path:
    """Commit ``checkpoints/step-NNNNNNNN/`` (each group as ``<group>.safetensors``, and a
    manifest with ``state`` and every file's sha256), point ``checkpoints/latest`` at it, then
    prune all but the newest ``keep``. An error leaves the previous checkpoints as they were."""
    directory = run_dir / CHECKPOINTS
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TEMPORARY_SUFFIX, dir=directory))
    try:
        files = {}
        for group, tensors in groups.items():
            file = tmp / f"{group}.safetensors"
            save_safetensors(tensors, file)
            fsync_path(file)
            make_shareable(file)
            files[file.name] = sha256_file(file)
        manifest = {"format": CHECKPOINT_FORMAT, "step": step, "files": files, "state": state}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        fsync_path(tmp / MANIFEST)
        make_shareable(tmp)
        fsync_path(tmp)
        replace_directory(tmp, final)
        fsync_path(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write(directory / LATEST, lambda path: path.write_text(final.name + "\n"))
    prune_checkpoints(run_dir, keep)
    return final


def replace_directory(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; an existing ``target`` (the same step saved again) is
    first moved aside, so at every moment one whole copy exists."""
    if not target.exists():
        os.replace(source, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", suffix=TEMPORARY_SUFFIX, dir=target.parent))
    os.replace(target, aside / target.name)
    os.replace(source, target)
    shutil.rmtree(aside, ignore_errors=True)


def checkpoint_step(path: Path) -> int | None:
    match = CHECKPOINT_NAME.fullmatch(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories, newest first. A directory newer than the one ``latest`` names
    is whole too (a kill between its rename and the pointer's update left it so)."""
    directory = run_dir / CHECKPOINTS
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if checkpoint_step(p) is not None), key=checkpoint_step, reverse=True)


def latest_name(run_dir: Path) -> str | None:
    try:
        return (run_dir / CHECKPOINTS / LATEST).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def describe_latest(run_dir: Path) -> str:
    """Where the last checkpoint is, for messages after a failure."""
    name = latest_name(run_dir)
    return f"the last checkpoint is {run_dir / CHECKPOINTS / name}" if name else "no checkpoint was saved"


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints (never the one ``latest`` names)."""
    named = latest_name(run_dir)
    for path in list_checkpoints(run_dir)[keep:]:
        if path.name != named:
            shutil.rmtree(path, ignore_errors=True)


def read_checkpoint(path: Path) -> Checkpoint:
    """Parse and verify a checkpoint: its manifest, and every file against its sha256."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise GenflowError(f"{path.name} has no {MANIFEST}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GenflowError(f"{path.name}/{MANIFEST} is unreadable ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise GenflowError(f"{path.name} is not a {CHECKPOINT_FORMAT} checkpoint")
    try:
        files, step, state = dict(manifest["files"]), int(manifest["step"]), dict(manifest["state"])
    except (KeyError, TypeError, ValueError) as error:
        raise GenflowError(f"{path.name}/{MANIFEST} is incomplete ({error!r})") from None
    for name, digest in files.items():
        file = path / name
        if Path(name).name != name or not name.endswith(".safetensors"):
            raise GenflowError(f"{path.name}/{MANIFEST} names a file {name!r} that is not a safetensors file of the checkpoint")
        if not file.is_file():
            raise GenflowError(f"{path.name} lacks {name}")
        if sha256_file(file) != digest:
            raise GenflowError(f"{path.name}/{name} is corrupt or truncated (sha256 differs from the manifest)")
    return Checkpoint(path, step, state)


def newest_valid_checkpoint(run_dir: Path, report: Callable[[str], None]) -> Checkpoint | None:
    """The newest checkpoint that verifies; each one skipped is reported. ``None`` when the
    run has no checkpoint; an error when it has some and none verifies."""
    candidates, skipped = list_checkpoints(run_dir), []
    for path in candidates:
        try:
            checkpoint = read_checkpoint(path)
        except GenflowError as error:
            skipped.append(str(error))
            continue
        for reason in skipped:
            report(f"skipping checkpoint {reason}")
        return checkpoint
    if candidates:
        raise GenflowError(f"no checkpoint in {run_dir / CHECKPOINTS} verifies ({'; '.join(skipped)}); start a new run")
    return None
