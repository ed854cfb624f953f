"""Training configuration: a dataclass, preset TOML files, overrides, validation.

A preset is a TOML file of ``TrainConfig`` keys, with ``[process_options]`` and ``[model]``
tables. ``genflow train`` starts from the preset of the chosen process (the ``configs/``
folder, installed as ``genflow.configs``)
or from ``--config FILE``; flags given on the command line override it. Unknown keys are
errors, never ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, get_type_hints

from genflow.errors import GenflowError
from genflow.processes import PROCESSES, make_process
from genflow.registry import did_you_mean
from genflow.values import MAX_SAMPLING_STEPS, check_count, check_seed, typed_value

PRESETS: Traversable = resources.files("genflow.configs")
DEVICES = ("auto", "cpu", "cuda", "mps")


def check_device_name(name: str) -> str:
    """``name`` if it is one of :data:`DEVICES`; else one line naming them."""
    if name not in DEVICES:
        raise GenflowError(f"device must be one of {', '.join(DEVICES)}, not {name!r}")
    return name


PRECISIONS = ("fp32", "bf16")
OBJECTIVES = ("denoising", "reflow", "distill")
BAD_IMAGES = ("error", "skip")
MAX_RESOLUTION = 4096
MAX_TRAINING_STEPS = 10**9
"""Far above any run's steps (DiT-XL/2 trained 7M); beyond it an eta is centuries."""
FLOAT32_MAX = 3.4028234663852886e38  # the optimizer's arithmetic is float32


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved resolved as ``config.json``."""

    process: str = "rectified-flow"
    process_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "digits"
    data_dir: str | None = None
    resolution: int | None = None
    """Resize (shorter side) and center-crop every training image to this square (``None``: as they are)."""
    random_flip: bool = False
    """Mirror each training image left-right with probability 1/2 (drawn with the data order, so resume is exact)."""
    bad_images: str = "error"
    """An image folder's unreadable or odd-sized file: ``error`` (stop, naming it) or ``skip`` (leave it out, counted)."""
    data_in_memory_mb: int = 4096
    """Image data whose pixels fit in this many MB is held in memory as uint8; larger folders stream from disk."""
    data_workers: int | None = None
    """Processes that decode streamed images (``None``: the cores less one, at most 8; 0: the training process)."""
    conditional: bool = False
    label_dropout: float = 0.1
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
    grad_accumulation: int = 1
    """Micro-batches per optimizer step in each process; ``batch_size`` stays the global batch."""
    gradient_checkpointing: bool = False
    """Recompute the backbone's activations in the backward pass (less memory, more compute)."""
    compile: bool = False
    """``torch.compile`` the backbone for training."""
    log_every: int = 50
    sample_every: int = 500
    sample_steps: int = 20
    eval_every: int = 0
    eval_n: int = 512
    inception_weights: str | None = None
    """The Inception-v3 FID weights file ``--eval-every`` scores with (FID and KID); without it the digits classifier."""
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    final_grid: bool = True
    max_nonfinite: int = 10
    objective: str = "denoising"
    """A step's loss: ``denoising`` (fresh noise), ``reflow`` (the noise paired with each image in
    ``pairs``) or ``distill`` (paired, at the times of a ``steps_out``-step Euler grid)."""
    pairs: str | None = None
    """A folder of (noise, sample) pairs made by ``genflow reflow``: the training data of a
    ``reflow`` or ``distill`` run, instead of ``dataset`` (which stays its reference data)."""
    steps_out: int = 1
    """The Euler steps a ``distill`` student is trained to sample in."""
    init_from: str | None = None
    """A run whose EMA weights start the model (a reflow student from its teacher)."""

    def validate(self) -> TrainConfig:
        for name in ("steps", "batch_size", "grad_accumulation", "log_every", "keep_checkpoints", "max_nonfinite"):
            check_count(name, getattr(self, name))
        if self.steps > MAX_TRAINING_STEPS:
            raise GenflowError(f"steps must be at most {MAX_TRAINING_STEPS} (decades at any speed), not {self.steps}")
        check_count("sample_steps", self.sample_steps, MAX_SAMPLING_STEPS)
        if min(self.sample_every, self.warmup_steps, self.eval_every, self.checkpoint_every) < 0:
            raise GenflowError("sample_every, eval_every, checkpoint_every and warmup_steps must be >= 0")
        if not 0 < self.lr < FLOAT32_MAX:
            raise GenflowError(f"lr must be a positive number (below {FLOAT32_MAX:.3g}), not {self.lr!r}")
        if not 0 < self.grad_clip < math.inf or not 0 <= self.weight_decay < math.inf:
            raise GenflowError(
                f"grad_clip must be positive and weight_decay >= 0, not {self.grad_clip!r} and {self.weight_decay!r}"
            )
        if not 0 <= self.label_dropout < 1:
            raise GenflowError(f"label_dropout must be in [0, 1) (the share of labels replaced by the null label), not {self.label_dropout!r}")
        if not 0 <= self.ema_decay < 1:
            raise GenflowError(f"ema_decay must be in [0, 1), not {self.ema_decay!r}")
        check_seed(self.seed)
        check_device_name(self.device)
        if self.precision not in PRECISIONS:
            raise GenflowError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        self.check_objective()
        self.check_data_options()
        return self

    def check_data_options(self) -> None:
        if self.data_dir is not None and self.dataset == "digits":
            raise GenflowError(
                f"the digits ship inside scikit-learn and read no --data-dir ({self.data_dir}); for a folder of images pass "
                "--dataset FOLDER, for MNIST, Fashion-MNIST or CIFAR-10 files --dataset NAME --data-dir DIR"
            )
        if self.resolution is not None and not (isinstance(self.resolution, int) and 1 <= self.resolution <= MAX_RESOLUTION):
            raise GenflowError(f"resolution must be a whole number of pixels from 1 to {MAX_RESOLUTION}, not {self.resolution!r}")
        if self.bad_images not in BAD_IMAGES:
            raise GenflowError(f"bad_images must be one of {', '.join(BAD_IMAGES)}, not {self.bad_images!r}")
        if self.data_workers is not None and self.data_workers < 0 or self.data_in_memory_mb < 0:
            raise GenflowError("data_workers and data_in_memory_mb must be >= 0")

    def check_objective(self) -> None:
        """A paired objective needs pairs, and a distilled student rectified flow's velocity."""
        if self.objective not in OBJECTIVES:
            raise GenflowError(f"objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")
        if self.objective != "denoising" and not self.pairs:
            raise GenflowError(f"objective {self.objective} trains on reflow pairs; make them with 'genflow reflow TEACHER --out RUN'")
        if self.pairs and self.random_flip:
            raise GenflowError(
                "reflow pairs fix the noise of each image, and a mirrored image would keep its unmirrored noise; "
                "train on pairs without random_flip"
            )
        if self.objective == "distill" and self.process != "rectified-flow":
            raise GenflowError(f"a distilled student is a rectified-flow run (it takes Euler steps on straight paths), not {self.process}")
        check_count("steps_out", self.steps_out)

    def own_sampler(self, default_solver: str) -> tuple[str, int]:
        """The solver and steps of the run's own samples (grids, ``--eval-every``): a distilled
        student's Euler grid of ``steps_out`` steps, else the process's default solver at ``sample_steps``."""
        if self.objective == "distill":
            return "euler", self.steps_out
        return default_solver, self.sample_steps

    def check_divides(self, world_size: int) -> TrainConfig:
        """Refuse a global batch that does not split evenly over ``world_size`` processes of
        ``grad_accumulation`` micro-batches each."""
        parts = world_size * self.grad_accumulation
        if self.batch_size % parts:
            raise GenflowError(
                f"batch_size {self.batch_size} does not divide into {world_size} processes x {self.grad_accumulation} "
                f"accumulation steps ({parts} equal parts); pick a batch size that is a multiple of {parts}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_resolved(self, process_options: dict[str, Any], model: dict[str, Any]) -> TrainConfig:
        """This config with the process options and the backbone it resolved to (every value
        spelled out, so that a run's record does not depend on today's defaults)."""
        return dataclasses.replace(self, process_options=process_options, model=model)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """The config of ``values``; an unknown key (with "did you mean") or a value of the
        wrong type is a one-line error naming the key."""
        hints = get_type_hints(cls)
        for key in values:
            if key not in hints:
                raise GenflowError(f"unknown key {key!r} in {source}; {did_you_mean(key, list(hints))}")
        return cls(**{key: typed_value(key, value, hints[key]) for key, value in values.items()})


SET_ELSEWHERE = ("process", "process_options", "model")
"""Config keys with a flag or table of their own rather than ``-o key=value``."""


def training_keys() -> list[str]:
    """The config keys ``-o key=value`` sets (``model.KEY`` sets a backbone key)."""
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name not in SET_ELSEWHERE]


def route_assignments(assignments: dict[str, Any]) -> dict[str, Any]:
    """``-o key=value`` pairs as config overrides: training keys at the top, ``model.KEY`` in
    ``model`` and every other key in ``process_options`` (the process checks its own names).
    A key that no process and no config knows is an error with the closest names of both."""
    process_option_names = {name for _, cls in PROCESSES.items() for name in cls.option_names()}
    routed: dict[str, Any] = {"model": {}, "process_options": {}}
    for key, value in assignments.items():
        if key in training_keys():
            routed[key] = value
        elif key.startswith("model."):
            routed["model"][key.removeprefix("model.")] = value
        elif key in process_option_names:
            routed["process_options"][key] = value
        else:
            choices = [*training_keys(), *sorted(process_option_names), "model.<key>"]
            raise GenflowError(f"unknown option {key!r} for -o; {did_you_mean(key, choices)}")
    return routed


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


TABLES = ("process_options", "model")


def merge_values(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``overrides`` on top: keys whose value is ``None`` were not given;
    the tables ``process_options`` and ``model`` merge key by key."""
    merged = values | {k: v for k, v in overrides.items() if v is not None and k not in TABLES}
    for table in TABLES:
        if values.get(table) or overrides.get(table):
            merged[table] = {**values.get(table, {}), **(overrides.get(table) or {})}
    return merged


def to_toml(config: TrainConfig) -> str:
    """``config`` as a preset file that ``genflow train --config FILE`` reads back: the
    training keys, then the ``[process_options]`` and ``[model]`` tables (``None`` omitted)."""
    values = {k: v for k, v in config.to_dict().items() if v is not None}
    lines = [f"{key} = {toml_value(value)}" for key, value in values.items() if key not in TABLES]
    for table in TABLES:
        lines += ["", f"[{table}]", *(f"{key} = {toml_value(value)}" for key, value in values[table].items() if value is not None)]
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    """A TOML scalar or array: strings quoted, booleans lower case, floats with repr's round trip."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return {math.inf: "inf", -math.inf: "-inf"}.get(value, "nan")
    return repr(value)


def resolve_config(config_file: str | None, process: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Preset (``config_file``, else the preset of ``process``, else rectified-flow's), then
    ``overrides`` (flags given on the command line; ``None`` values mean not given); the
    process options checked and the warm-up capped at a tenth of the run."""
    if process is not None and config_file is None:
        PROCESSES.get(process)  # an unknown name is "unknown process", not "no preset"
    values = merge_values(read_preset(config_file or process or "rectified-flow"), overrides | {"process": process})
    config = TrainConfig.from_dict(values, source=config_file or "preset").validate()
    make_process(config.process, **config.process_options)  # its options checked now, before torch is imported
    return capped_warmup(config)


WARMUP_SHARE = 10
"""A new run's warm-up takes at most ``1 / WARMUP_SHARE`` of its steps."""


def capped_warmup(config: TrainConfig) -> TrainConfig:
    """A new run's ``config`` with its warm-up capped at a tenth of the run, so that the cosine
    decay that follows has room (a warm-up as long as the run never lowers the learning rate).
    Resumed runs keep the warm-up they were created with."""
    return dataclasses.replace(config, warmup_steps=min(config.warmup_steps, config.steps // WARMUP_SHARE))
