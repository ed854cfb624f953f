"""What a resume may change: the step budget and settings that do not alter the model, the
data or its updates. Anything else would make a different run and is refused, naming the key."""

from __future__ import annotations

from typing import Any

from genflow.config import TrainConfig, merge_values
from genflow.errors import GenflowError
from genflow.nn.backbones import backbone_from_dict
from genflow.processes import PROCESSES
from genflow.runs.files import RECORDED_APART

RESUMABLE = frozenset({"steps", "device", "precision", "grad_accumulation", "gradient_checkpointing", "compile", "data_dir", "log_every", "sample_every", "sample_steps",
                       "eval_every", "eval_n", "checkpoint_every", "keep_checkpoints", "max_nonfinite", "final_grid",
                       "pairs", "init_from", "data_workers", "bad_images", "inception_weights"})  # fmt: skip
"""``pairs`` may move (the data's sha256 still has to match), and ``init_from`` is read only by a fresh start;
``bad_images`` may change because the data's fingerprint still has to match."""


def resumed_config(saved: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """The saved config with ``overrides`` (``None`` values: not given) merged in. The saved
    process options belong to the saved process, and the saved model keys to the saved backbone:
    asking for another process or backbone drops them, so that the refusal names the change."""
    values = saved.to_dict()
    if overrides.get("process") not in (None, saved.process):
        values["process_options"] = {}
    if (overrides.get("model") or {}).get("backbone") not in (None, backbone_from_dict(saved.model).name):
        values["model"] = {}
    merged = merge_values(values, overrides)
    given = overrides.get("process_options") or {}
    if merged["process"] in PROCESSES:  # saved options that a changed option makes moot go, so the refusal names the change
        moot = PROCESSES.get(merged["process"]).inapplicable_options(merged["process_options"])
        merged["process_options"] = {k: v for k, v in merged["process_options"].items() if k in given or k not in moot}
    return TrainConfig.from_dict(merged, source="--resume").validate()


def identity(config: TrainConfig, data: dict[str, Any]) -> dict[str, Any]:
    """What makes a run this run, flat and in the order differences are reported: the process,
    its options, the backbone, the other fixed training keys, the training images and labels
    (their fingerprints in ``data``, a run's data record; empty for runs from before them)."""
    values = config.to_dict()
    keys = {"process": config.process}
    keys |= {f"process option {k}": v for k, v in config.process_options.items()}
    keys |= {f"model.{k}": v for k, v in backbone_with_defaults(config.model).items()}
    keys |= {k: v for k, v in values.items() if k not in RESUMABLE | set(RECORDED_APART)}
    for key, name in (("sha256", "data sha256"), ("labels_sha256", "labels sha256")):
        if data.get(key):
            keys[name] = data[key][:16]
    return keys


def backbone_with_defaults(model: dict[str, Any]) -> dict[str, Any]:
    """A run's backbone config with the keys it predates at their defaults (``num_classes`` 0),
    so that an older run compares equal to itself resumed today."""
    try:
        return backbone_from_dict(model).to_dict()
    except GenflowError:
        return model  # the refusal then names the key that differs


def check_same_run(saved: dict[str, Any], resumed: dict[str, Any]) -> None:
    """Refuse a resume whose :func:`identity` differs from the saved one, naming the first key."""
    for key in list(saved) + [k for k in resumed if k not in saved]:
        if saved.get(key) != resumed.get(key):
            raise GenflowError(
                f"cannot resume: this run's {key} is {saved.get(key)!r}, not {resumed.get(key)!r}; a resume continues the same "
                "run (only --steps and run-time settings such as --device may change); start a new run with --out instead"
            )


def changes(saved: TrainConfig, resumed: TrainConfig) -> dict[str, list[Any]]:
    """The resumable keys that differ, as ``{key: [before, after]}``."""
    before, after = saved.to_dict(), resumed.to_dict()
    return {key: [before[key], value] for key, value in after.items() if before[key] != value}
