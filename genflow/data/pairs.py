"""Reflow pairs: (noise, sample) pairs of a teacher's probability-flow ODE, stored as
safetensors shards with a manifest (Liu, Gong & Liu 2022, sec. 2.2, "reflow").

Pair ``i`` starts from the noise of per-sample seed ``seed + i`` (the first draw of its own
generator, as :func:`genflow.sample` draws it; the teacher starts from it times its prior's
standard deviation, 50 for a VE SDE, and the pair stores the unit noise a rectified-flow student
starts from), so a pair never depends on the shard it was made in (nor on the batch, for a
fixed-step solver; an adaptive one's step control spans its batch, which the manifest records),
and generation resumes exactly: a shard is written whole under a
temporary name and renamed, then the manifest records it with its sha256. A kill loses at
most the shard in flight; a shard whose file is missing or whose sha256 differs is redone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from genflow.errors import GenflowError
from genflow.solvers import NoiseSource
from genflow.storage import atomic_write, remove_temporaries, save_safetensors, sha256_file, write_json

MANIFEST = "manifest.json"
PAIRS_FORMAT = "genflow-pairs/1"
SHARD_SIZE = 1024


@dataclass
class Manifest:
    """What a pairs folder holds and how it was made."""

    count: int
    teacher: dict[str, Any]
    """The teacher run: its path, process (name and options) and the sha256 of its weights."""
    solver: str
    steps: int
    grid: str
    nfe: float
    seed: int
    shape: list[int]
    shard_size: int = SHARD_SIZE
    shards: dict[str, str] = field(default_factory=dict)
    """Shard file name -> sha256, for the shards written so far."""
    seconds: float = 0.0
    batch_size: int | None = None
    """Pairs per teacher call (``None``: a whole shard)."""
    format: str = PAIRS_FORMAT

    @property
    def shard_count(self) -> int:
        return math.ceil(self.count / self.shard_size)

    def shard_name(self, index: int) -> str:
        return f"pairs-{index:05d}.safetensors"

    def shard_range(self, index: int) -> range:
        return range(index * self.shard_size, min(self.count, (index + 1) * self.shard_size))

    @property
    def complete(self) -> bool:
        return len(self.shards) == self.shard_count

    def same_plan(self, other: Manifest) -> bool:
        """Whether ``other`` makes the same pairs (a resume may not change them)."""
        keys = ("count", "teacher", "solver", "steps", "grid", "seed", "shape", "shard_size", "batch_size", "format")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


def read_manifest(folder: Path) -> Manifest | None:
    """The manifest of a pairs folder; ``None`` where there is none yet."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
        return Manifest(**values)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as error:
        raise GenflowError(f"{path} is not a genflow pairs manifest ({error}); make the pairs again in a new folder") from None


def write_manifest(folder: Path, manifest: Manifest) -> None:
    write_json(folder / MANIFEST, asdict(manifest))


def verified_shards(folder: Path, manifest: Manifest) -> dict[str, str]:
    """The recorded shards whose file is there with its recorded sha256."""
    return {name: digest for name, digest in manifest.shards.items() if (folder / name).is_file() and sha256_file(folder / name) == digest}


def unit_noise(seeds: range, shape: tuple[int, ...]) -> Tensor:
    """The standard normal noise :func:`genflow.sample` starts from (times the prior's standard
    deviation) for these per-sample seeds."""
    return NoiseSource(list(seeds))(shape)


def check_plan(folder: Path, plan: Manifest) -> Manifest | None:
    """The manifest already in ``folder`` (``None`` if none), which must plan the same pairs."""
    existing = read_manifest(folder)
    if existing is not None and not existing.same_plan(plan):
        raise GenflowError(
            f"{folder} holds pairs made differently (teacher, its weights, solver, steps, count, seed or batch differ); "
            "resume with the same settings or start a new --out"
        )
    return existing


def generate(
    folder: Path,
    plan: Manifest,
    make: Callable[[range], Tensor],
    note: Callable[[str], None] = lambda message: None,
) -> Manifest:
    """Fill ``folder`` with the pairs ``plan`` describes, ``make(indices)`` integrating the
    teacher from the prior noise of those per-sample seeds. An existing manifest must describe
    the same pairs; its verified shards are kept and the rest made."""
    import time

    folder.mkdir(parents=True, exist_ok=True)
    remove_temporaries([folder])  # a shard that was being written when a kill came
    existing = check_plan(folder, plan)
    manifest = existing or plan
    kept = verified_shards(folder, manifest)
    if len(kept) < len(manifest.shards):
        note(f"redoing {len(manifest.shards) - len(kept)} pair shard(s) whose file is missing or does not match its sha256")
    manifest.shards = kept
    write_manifest(folder, manifest)
    shape = tuple(manifest.shape)
    for index in range(manifest.shard_count):
        name = manifest.shard_name(index)
        if name in manifest.shards:
            continue
        started = time.perf_counter()
        indices = manifest.shard_range(index)
        seeds = range(manifest.seed + indices.start, manifest.seed + indices.stop)
        tensors = {"noise": unit_noise(seeds, shape).cpu().contiguous(), "sample": make(seeds).cpu().contiguous()}
        write_shard(folder / name, tensors)
        manifest.shards[name] = sha256_file(folder / name)
        manifest.seconds += time.perf_counter() - started
        write_manifest(folder, manifest)
        note(f"pairs {indices.stop}/{manifest.count}")
    return manifest


def write_shard(path: Path, tensors: dict[str, Tensor]) -> None:
    """One shard, written whole under a temporary name and renamed."""
    atomic_write(path, lambda tmp: save_safetensors(tensors, tmp))


def read_pairs(folder: Path, teacher: dict[str, Any] | None = None) -> dict[str, Tensor]:
    """All pairs of a complete folder as ``{"noise", "images"}`` (``images`` the teacher's
    samples), every shard checked against the manifest; ``teacher``, when given, must be the
    manifest's teacher."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise GenflowError(f"{folder} holds no reflow pairs (no {MANIFEST}); make them with 'genflow reflow TEACHER --out RUN'")
    if teacher is not None and manifest.teacher != teacher:
        raise GenflowError(f"{folder} holds pairs of another teacher ({manifest.teacher.get('path')}); make this teacher's pairs in a new run")
    if not manifest.complete:
        raise GenflowError(f"{folder} holds {len(manifest.shards)} of {manifest.shard_count} pair shards; finish them with 'genflow reflow ... --resume'")
    noise, samples = [], []
    for index in range(manifest.shard_count):
        path = folder / manifest.shard_name(index)
        if not path.is_file() or sha256_file(path) != manifest.shards.get(path.name):
            raise GenflowError(f"pair shard {path} is missing or does not match its sha256 in {MANIFEST}; redo it with 'genflow reflow ... --resume'")
        tensors = load_file(str(path))
        noise.append(tensors["noise"])
        samples.append(tensors["sample"])
    return {"images": torch.cat(samples), "noise": torch.cat(noise)}
