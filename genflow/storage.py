"""Files written whole or not at all, and read only as safetensors or JSON, never a pickle.

Every file is written under a hidden temporary name, flushed to disk and renamed over its
final name, so a crash (even ``kill -9``) never leaves half a file where a whole one was.
Temporary names end in :data:`TEMPORARY_SUFFIX`; :func:`remove_temporaries` clears what a
killed process left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from genflow.errors import GenflowError

TEMPORARY_SUFFIX = ".tmp"
UMASK = os.umask(0o022)
os.umask(UMASK)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
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


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, value: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2) + "\n"))


def cpu_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """A module's parameters and buffers as contiguous CPU tensors (what safetensors stores)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def save_safetensors(tensors: dict[str, Tensor], path: Path) -> None:
    """safetensors' ``save_file``, its I/O failures raised as the ``OSError`` they are: it raises
    its own ``SafetensorError`` ("... No space left on device (os error 28)") for a full disk,
    which every caller's ``except OSError`` would miss."""
    try:
        save_file(tensors, str(path))
    except SafetensorError as error:
        code = re.search(r"\(os error (\d+)\)", str(error))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from error


def save_weights(path: Path, module: nn.Module) -> None:
    state = cpu_state_dict(module)
    atomic_write(path, lambda tmp: save_safetensors(state, tmp))


def load_weights(path: Path) -> dict[str, Tensor]:
    """Tensors from a safetensors file; anything else (a pickle, a truncated file) is refused."""
    if not path.is_file():
        raise GenflowError(f"missing weights file {path}; is this a finished genflow run?")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise GenflowError(f"{path} is not a valid safetensors file ({error}); genflow reads only safetensors weights") from None


def load_matching(module: nn.Module, tensors: dict[str, Tensor], source: Path) -> None:
    """Load ``tensors`` into ``module`` when every name and shape matches and every value is
    finite (NaN weights would sample black images and score nonsense); else one clear error."""
    expected = module.state_dict()
    broken = next((name for name in sorted(tensors) if tensors[name].is_floating_point() and not torch.isfinite(tensors[name]).all()), None)
    if broken is not None:
        raise GenflowError(
            f"{source} holds non-finite weights ({broken!r} has NaN or inf): it cannot be sampled, scored, exported or "
            "trained on; use an earlier checkpoint of the run, or train it again"
        )
    for name in sorted(expected.keys() | tensors.keys()):
        if name not in tensors or name not in expected or tensors[name].shape != expected[name].shape:
            found = tuple(tensors[name].shape) if name in tensors else "nothing"
            wanted = tuple(expected[name].shape) if name in expected else "nothing"
            raise GenflowError(
                f"{source} does not fit the model in config.json: {name!r} is {found}, the model needs {wanted}; was it copied from another run?"
            )
    module.load_state_dict(tensors)


def all_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def remove_temporaries(folders: Iterable[Path]) -> None:
    """Remove what a killed process left half-written (hidden ``*.tmp`` files and folders)."""
    for folder in folders:
        for path in folder.glob(f".*{TEMPORARY_SUFFIX}"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
