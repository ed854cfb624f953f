"""Training configuration: a dataclass, preset TOML files, overrides, validation.

A preset is a TOML file of ``TrainConfig`` keys, with ``[process_options]`` and ``[model]``
tables. ``genflow train`` starts from the preset of the chosen process (the ``configs/``
folder, installed as ``genflow.configs``)
or from ``--config FILE``; flags given on the command line override it. Unknown keys are
errors, never ignored.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

from genflow.errors import GenflowError
from genflow.registry import did_you_mean

PRESETS: Traversable = resources.files("genflow.configs")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16")
FLOAT32_MAX = 3.4028234663852886e38  # the optimizer's arithmetic is float32


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved resolved as ``config.json``."""

    process: str = "rectified-flow"
    process_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "digits"
    data_dir: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    log_every: int = 50
    sample_every: int = 500
    sample_steps: int = 20
    eval_every: int = 0
    eval_n: int = 512
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    max_nonfinite: int = 10

    def validate(self) -> TrainConfig:
        for name in ("steps", "batch_size", "log_every", "sample_steps", "keep_checkpoints", "max_nonfinite"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise GenflowError(f"{name} must be a whole number >= 1, not {getattr(self, name)!r}")
        if min(self.sample_every, self.warmup_steps, self.eval_every, self.checkpoint_every) < 0:
            raise GenflowError("sample_every, eval_every, checkpoint_every and warmup_steps must be >= 0")
        if not 0 < self.lr < FLOAT32_MAX:
            raise GenflowError(f"lr must be a positive number (below {FLOAT32_MAX:.3g}), not {self.lr!r}")
        if not 0 < self.grad_clip < math.inf or not 0 <= self.weight_decay < math.inf:
            raise GenflowError(
                f"grad_clip must be positive and weight_decay >= 0, not {self.grad_clip!r} and {self.weight_decay!r}"
            )
        if not 0 <= self.ema_decay < 1:
            raise GenflowError(f"ema_decay must be in [0, 1), not {self.ema_decay!r}")
        if self.device not in DEVICES:
            raise GenflowError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.precision not in PRECISIONS:
            raise GenflowError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_resolved(self, process_options: dict[str, Any], model: dict[str, Any]) -> TrainConfig:
        """This config with the process options and the backbone it resolved to (every value
        spelled out, so that a run's record does not depend on today's defaults)."""
        return dataclasses.replace(self, process_options=process_options, model=model)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                raise GenflowError(f"unknown key {key!r} in {source}; {did_you_mean(key, known)}")
        return cls(**values)


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in PRESETS.iterdir() if p.name.endswith(".toml"))


def preset_path(name_or_path: str) -> Path | Traversable:
    """A preset by process name (``configs/<name>.toml``) or a TOML file path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise GenflowError(f"config file {path} does not exist")
        return path
    preset = PRESETS / f"{name_or_path}.toml"
    if not preset.is_file():
        raise GenflowError(f"no preset {name_or_path!r}; {did_you_mean(name_or_path, preset_names())}, or give a .toml path")
    return preset


def read_preset(name_or_path: str) -> dict[str, Any]:
    path = preset_path(name_or_path)
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise GenflowError(f"cannot read config {path}: {error}") from None


def merge_values(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``overrides`` on top: keys whose value is ``None`` were not given;
    ``process_options`` merge key by key."""
    merged = values | {k: v for k, v in overrides.items() if v is not None and k != "process_options"}
    merged["process_options"] = {**values.get("process_options", {}), **(overrides.get("process_options") or {})}
    return merged


def resolve_config(config_file: str | None, process: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Preset (``config_file``, else the preset of ``process``, else rectified-flow's), then
    ``overrides`` (flags given on the command line; ``None`` values mean not given)."""
    values = merge_values(read_preset(config_file or process or "rectified-flow"), overrides | {"process": process})
    return TrainConfig.from_dict(values, source=config_file or "preset").validate()
