"""genflow's discrete DDPM process and diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` configs,
in both directions. The discrete schedule is the same object in both: ``T`` betas (linear,
scaled-linear, or squared-cosine capped at 0.999; Ho et al. 2020, Rombach et al. 2022, Nichol &
Dhariwal 2021), ``alpha_bar_k = prod_{j<=k} (1 - beta_j)`` at diffusers' step ``k = 0..T-1``,
which is genflow's step ``i = k + 1`` at ``t = i / T``."""

from __future__ import annotations

from typing import Any

from genflow.errors import GenflowError
from genflow.processes import DDPM, GaussianProcess, make_process

BETA_SCHEDULES = {"linear": "linear", "scaled-linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
"""genflow's ``beta_schedule`` -> diffusers' ``beta_schedule``."""
PREDICTIONS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
"""genflow's ``prediction`` -> diffusers' ``prediction_type`` (both ``v = alpha eps - sigma x0``)."""
DISCRETE_SCHEDULERS = {"DDPMScheduler": "ddpm", "DDIMScheduler": "ddim"}
"""The diffusers schedulers whose config an import reads -> the genflow process it becomes."""
DIFFUSERS_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                      "prediction_type": "epsilon", "clip_sample": True, "thresholding": False}  # fmt: skip


def scheduler_config(process: DDPM) -> dict[str, Any]:
    """The diffusers scheduler config (for ``DDPMScheduler`` and ``DDIMScheduler`` alike) of a
    ddpm/ddim process. ``trailing`` spacing puts ``n`` inference steps at diffusers' steps
    ``T - 1, T - 1 - T/n, ..., T/n - 1``, genflow's uniform grid ``t = 1, 1 - 1/n, ..., 1/n``
    (Lin et al. 2024, table 2); ``clip_sample`` is off because genflow's solvers never clip."""
    if process.prediction not in PREDICTIONS:
        raise GenflowError(
            f"diffusers' DDPM schedulers take eps, x0 or v predictions, and this run predicts {process.prediction}; it cannot be exported"
        )
    config = {
        "num_train_timesteps": process.timesteps,
        "beta_schedule": BETA_SCHEDULES[process.beta_schedule],
        "prediction_type": PREDICTIONS[process.prediction],
        "clip_sample": False,
        "timestep_spacing": "trailing",
    }
    if process.beta_schedule != "cosine":
        config |= {"beta_start": process.beta_start, "beta_end": process.beta_end}
    return config


def inverse(mapping: dict[str, str], key: str, value: object, source: str) -> str:
    """The genflow name of a diffusers ``key`` value, or one line naming those that import."""
    for ours, theirs in mapping.items():
        if theirs == value:
            return ours
    raise GenflowError(f"{source}: {key} {value!r} cannot be imported; genflow reads {', '.join(mapping.values())}")


def process_from_scheduler(config: dict[str, Any], source: str) -> GaussianProcess:
    """The genflow process whose schedule is the scheduler's (``ddpm`` for a DDPMScheduler,
    ``ddim`` for a DDIMScheduler); what it cannot reproduce exactly is refused."""
    kind = config.get("_class_name")
    if kind not in DISCRETE_SCHEDULERS:
        raise GenflowError(
            f"{source}: scheduler {kind!r} cannot be imported; genflow reads {' and '.join(DISCRETE_SCHEDULERS)} configs"
        )
    config = DIFFUSERS_DEFAULTS | {k: v for k, v in config.items() if v is not None}
    if config.get("trained_betas") is not None:
        raise GenflowError(
            f"{source}: explicit trained_betas cannot be imported; genflow reads {', '.join(BETA_SCHEDULES.values())} schedules"
        )
    if config.get("rescale_betas_zero_snr"):
        raise GenflowError(
            f"{source}: rescale_betas_zero_snr cannot be imported (its last step has alpha_bar = 0, which genflow's DDPM excludes)"
        )
    if str(config.get("variance_type", "fixed_small")).startswith("learned"):
        raise GenflowError(f"{source}: a learned variance (variance_type {config['variance_type']!r}) cannot be imported")
    beta_schedule = inverse(BETA_SCHEDULES, "beta_schedule", config["beta_schedule"], source)
    options: dict[str, object] = {
        "timesteps": config["num_train_timesteps"],
        "beta_schedule": beta_schedule,
        "prediction": inverse(PREDICTIONS, "prediction_type", config["prediction_type"], source),
    }
    if beta_schedule != "cosine":
        options |= {"beta_start": config["beta_start"], "beta_end": config["beta_end"]}
    try:
        return make_process(DISCRETE_SCHEDULERS[kind], **options)
    except GenflowError as error:
        raise GenflowError(f"{source}: {error}") from None


def sampling_differences(config: dict[str, Any]) -> list[str]:
    """What the scheduler does when sampling that genflow's solvers do not (they never clip)."""
    config = DIFFUSERS_DEFAULTS | {k: v for k, v in config.items() if v is not None}
    notes = []
    if config["clip_sample"]:
        notes.append("the scheduler clips its x0 estimate to [-1, 1] (clip_sample); genflow's solvers do not clip")
    if config["thresholding"]:
        notes.append("the scheduler thresholds its x0 estimate (thresholding); genflow's solvers do not")
    return notes
