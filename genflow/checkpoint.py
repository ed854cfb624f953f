"""Run directories and checkpoints: JSON and safetensors only, never a pickle.

A run directory holds ``config.json`` (the resolved training config, the process options,
the backbone config and the data shape), ``ema.safetensors`` and ``model.safetensors``
(final EMA and raw weights), ``metrics.jsonl``, ``samples/`` and ``checkpoints/``.

A checkpoint is a directory ``checkpoints/step-NNNNNNNN/`` of safetensors files (one per
group of tensors) and ``manifest.json`` (the step, the non-tensor state, and the sha256 of
every file). It is written into a hidden temporary directory, fsynced, and renamed into
place; then ``checkpoints/latest`` (a one-line file naming it) is replaced the same way, and
only then are old checkpoints pruned. Every file is written under a temporary name, flushed
and renamed, so a crash (even ``kill -9``) never leaves half a file where a whole one was.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
CHECKPOINT_FORMAT = "genflow-checkpoint/1"
CHECKPOINT_NAME = re.compile(r"step-(\d+)")
TEMPORARY_SUFFIX = ".tmp"
UMASK = os.umask(0o022)
os.umask(UMASK)


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, fsync the file, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        fsync_path(Path(tmp))
        make_shareable(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_shareable(path: Path) -> None:
    """The permissions a plain ``open`` would give under the umask (temporary names are
    created private: 0600 files, 0700 folders)."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~UMASK)


def fsync_path(path: Path) -> None:
    """Flush a file or a directory (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


RUN_FILES = (CONFIG, EMA_WEIGHTS, RAW_WEIGHTS, METRICS, "samples", CHECKPOINTS)


@contextmanager
def exclusive_run(run_dir: Path) -> Iterator[None]:
    """Hold an advisory lock on the run directory (``flock`` on the directory itself, so no
    file is made; the kernel drops it when the process dies, even by ``kill -9``). A second
    process training the same run is refused instead of interleaving checkpoints."""
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
            raise GenflowError(f"{run_dir} is being trained by another genflow process; wait for it, or stop it (Ctrl-C saves a checkpoint)") from None
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
            raise GenflowError(f"{run_dir} holds {', '.join(present)} but is not a genflow run; --overwrite replaces only genflow runs, so choose another --out") from None
    for name in present:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


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
            save_file(tensors, str(file))
            fsync_path(file)
            make_shareable(file)
            files[file.name] = sha256(file)
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


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints (never the one ``latest`` names)."""
    named = latest_name(run_dir)
    for path in list_checkpoints(run_dir)[keep:]:
        if path.name != named:
            shutil.rmtree(path, ignore_errors=True)


def remove_temporaries(run_dir: Path) -> None:
    """Remove what a killed process left half-written (hidden ``*.tmp`` files and folders)."""
    for folder in (run_dir, run_dir / CHECKPOINTS, run_dir / "samples"):
        for path in folder.glob(f".*{TEMPORARY_SUFFIX}"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


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
        if sha256(file) != digest:
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


def load_matching(module: nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load ``tensors`` into ``module`` when every name and shape matches; else one clear error."""
    expected = module.state_dict()
    for name in sorted(expected.keys() | tensors.keys()):
        if name not in tensors or name not in expected or tensors[name].shape != expected[name].shape:
            found = tuple(tensors[name].shape) if name in tensors else "nothing"
            wanted = tuple(expected[name].shape) if name in expected else "nothing"
            raise GenflowError(f"{source} does not fit the model in {CONFIG}: {name!r} is {found}, the model needs {wanted}; was it copied from another run?")
    module.load_state_dict(tensors)
