"""What the command line calls: train a run, load it, sample it, save samples."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import genflow
from genflow.checkpoint import (
    CONFIG,
    EMA_WEIGHTS,
    LATEST,
    METRICS,
    Checkpoint,
    atomic_write,
    clear_run,
    exclusive_run,
    load_matching,
    load_weights,
    newest_valid_checkpoint,
    point_latest,
    read_run,
    remove_temporaries,
    write_json,
)
from genflow.config import TrainConfig
from genflow.data import load_dataset, to_uint8
from genflow.errors import GenflowError
from genflow.nn import UNet, UNetConfig, preset_for
from genflow.processes import GaussianProcess, make_process
from genflow.progress import SilentReporter
from genflow.sampling import SamplingStats
from genflow.train_state import check_batch_size
from genflow.training import GRID_SAMPLES, Reporter, TrainingState, pick_device, train_loop

DEFAULT_RUNS = Path("runs")


def backbone_config(config: TrainConfig, data: Tensor) -> UNetConfig:
    """The preset for the data's shape with the run's ``model`` overrides."""
    _, channels, height, width = data.shape
    if height != width:
        raise GenflowError(f"images must be square, not {height}x{width}")
    return UNetConfig.from_dict(
        {**preset_for(channels, height).to_dict(), **config.model, "channels": channels, "resolution": height}
    )


def new_run_dir(out: Path | None, process: str, overwrite: bool) -> Path:
    """``out``, or ``runs/<time>-<process>``; an existing non-empty ``out`` is refused
    unless ``overwrite`` (then the previous run's files in it are replaced)."""
    run_dir = out or DEFAULT_RUNS / f"{time.strftime('%Y%m%d-%H%M%S')}-{process}"
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise GenflowError(f"{run_dir} exists and is not empty; choose another --out or pass --overwrite")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GenflowError(f"cannot create run directory {run_dir}: {error.strerror}") from None
    return run_dir


@dataclass
class TrainingSetup:
    """What a config resolves to before any file is written: the process, the device, the
    data, the backbone's shape and the optional periodic evaluation."""

    process: GaussianProcess
    device: torch.device
    data: Tensor
    unet_config: UNetConfig
    evaluate: Callable[[torch.nn.Module], dict] | None


def prepare(config: TrainConfig) -> TrainingSetup:
    """Validate ``config`` and load what it names; every input error surfaces here."""
    config.validate()
    process = make_process(config.process, **config.process_options)
    device = pick_device(config.device)
    data = load_dataset(config.dataset, config.data_dir)
    check_batch_size(config.batch_size, len(data))
    evaluate = training_evaluator(config, process, data, device) if config.eval_every else None
    return TrainingSetup(process, device, data, backbone_config(config, data), evaluate)


def train(config: TrainConfig, out: Path | None = None, overwrite: bool = False, reporter: Reporter | None = None) -> Path:
    """Train a run as ``config`` says and return its directory."""
    setup = prepare(config)
    run_dir = new_run_dir(out, config.process, overwrite)
    with exclusive_run(run_dir):
        clear_run(run_dir)
        (run_dir / "samples").mkdir()
        write_json(run_dir / CONFIG, run_record(config, setup, genflow.__version__))
        if out is None or run_dir.parent == DEFAULT_RUNS:
            point_latest(run_dir.parent, run_dir)  # now, so that 'genflow train --resume runs/latest' finds it
        run_training(config, setup, run_dir, reporter or SilentReporter())
    return run_dir


def run_training(
    config: TrainConfig,
    setup: TrainingSetup,
    run_dir: Path,
    reporter: Reporter,
    checkpoint: Checkpoint | None = None,
    resuming: bool = False,
) -> None:
    """Build the model (seeded by ``config.seed``), restore ``checkpoint`` if given, and train."""
    torch.manual_seed(config.seed)
    model = UNet(setup.unet_config, setup.process).to(setup.device)
    ema = copy.deepcopy(model).requires_grad_(False)
    state = TrainingState.fresh(config, model, ema, setup.data.to(setup.device))
    if checkpoint is not None:
        state.restore(checkpoint, reporter.note)
        reporter.note(f"resuming {run_dir} from {checkpoint.path.name} (step {checkpoint.step} of {config.steps})")
    elif resuming:
        reporter.note(f"{run_dir} has no checkpoint yet: training from step 0")
    shape = (GRID_SAMPLES, *setup.data.shape[1:])

    def sample_grid(ema: torch.nn.Module, step: int) -> None:
        images = genflow.sample(ema, setup.process, shape=shape, steps=config.sample_steps, seed=0, device=setup.device)
        save_samples(images, run_dir / "samples" / f"step-{step:06d}.png", overwrite=True)

    train_loop(config, setup.process, state, run_dir, reporter, sample_grid, setup.evaluate)


# What a resume may change: the step budget and settings that do not alter the model or its updates.
RESUMABLE = frozenset({"steps", "device", "precision", "data_dir", "log_every", "sample_every", "sample_steps",
                       "eval_every", "eval_n", "checkpoint_every", "keep_checkpoints", "max_nonfinite"})  # fmt: skip


def resume(run: str | Path, overrides: dict | None = None, reporter: Reporter | None = None) -> Path:
    """Continue a run from its newest checkpoint that verifies (a corrupt one is reported and
    skipped) to its step budget. ``overrides`` are config values as in :func:`train`; one that
    changes the process, the model, the data or the optimization is refused, naming the key."""
    reporter = reporter or SilentReporter()
    files = read_run(run)
    saved = TrainConfig.from_dict(files.config["train"], source=str(files.path / CONFIG))
    config = resumed_config(saved, overrides or {})
    setup = prepare(config)
    check_same_run(files.config, saved, config, setup)
    with exclusive_run(files.path):
        checkpoint = newest_valid_checkpoint(files.path, reporter.note)
        if checkpoint is None and (files.path / EMA_WEIGHTS).exists():
            raise GenflowError(f"{files.path} has final weights but no checkpoint to resume from (it predates checkpoints); train a new run")
        done = checkpoint.step if checkpoint else 0
        if config.steps < done:
            raise GenflowError(f"{files.path} is already at step {done}; --steps must be at least {done}")
        remove_temporaries(files.path)
        before, after = saved.to_dict(), config.to_dict()
        changes = {key: [before[key], value] for key, value in after.items() if before[key] != value}
        if changes:
            reporter.note("resume changes " + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()))
            write_json(files.path / CONFIG, {**files.config, "train": after})
        resumed_from = checkpoint.path.name if checkpoint else None
        keep_metrics_through(files.path / METRICS, done, {"step": done, "resumed_from": resumed_from, "changes": changes})
        (files.path / "samples").mkdir(exist_ok=True)
        run_training(config, setup, files.path, reporter, checkpoint, resuming=True)
    return files.path


def resumed_config(saved: TrainConfig, overrides: dict) -> TrainConfig:
    values = saved.to_dict() | {k: v for k, v in overrides.items() if v is not None and k != "process_options"}
    values["process_options"] = saved.process_options | (overrides.get("process_options") or {})
    return TrainConfig.from_dict(values, source="--resume").validate()


def check_same_run(record: dict, saved: TrainConfig, config: TrainConfig, setup: TrainingSetup) -> None:
    """Refuse a resume that would make a different run, naming the first key that differs."""
    candidates = [
        ({"process": record["process"]["name"]}, {"process": setup.process.name}),
        ({f"process option {k}": v for k, v in record["process"]["options"].items()}, {f"process option {k}": v for k, v in setup.process.options().items()}),
        ({f"model.{k}": v for k, v in record["model"].items()}, {f"model.{k}": v for k, v in setup.unet_config.to_dict().items()}),
        (fixed_keys(saved), fixed_keys(config)),
    ]
    if "data" in record:
        candidates.append(({"data sha256": record["data"]["sha256"][:16]}, {"data sha256": data_fingerprint(setup.data)[:16]}))
    for before, after in candidates:
        for key in before.keys() | after.keys():
            if before.get(key) != after.get(key):
                raise GenflowError(
                    f"cannot resume: this run's {key} is {before.get(key)!r}, not {after.get(key)!r}; a resume continues the same "
                    "run (only --steps and run-time settings such as --device may change); start a new run with --out instead"
                )


def fixed_keys(config: TrainConfig) -> dict:
    """The training keys a resume must keep, beyond the process and model compared above."""
    return {k: v for k, v in config.to_dict().items() if k not in RESUMABLE | {"process", "process_options", "model"}}


def keep_metrics_through(path: Path, step: int, resumed: dict) -> None:
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


def training_evaluator(config: TrainConfig, process: GaussianProcess, data: Tensor, device: torch.device):
    """Frechet distance (and its floor) of ``eval_n`` EMA samples with the process's default
    solver at ``sample_steps``, for ``--eval-every``."""
    from genflow.metrics import evaluate

    classifier = feature_classifier(config.dataset)
    if 2 * config.eval_n > len(data):
        raise GenflowError(f"eval_n must be at most {len(data) // 2} (half the real data) for --eval-every")

    def scores(ema: torch.nn.Module) -> dict:
        images = genflow.sample(
            ema, process, shape=(config.eval_n, *data.shape[1:]), steps=config.sample_steps, seed=0, device=device
        )
        report = evaluate(images.cpu(), data, classifier)
        return {"fd": report.fd, "fd_floor": report.fd_floor, "kid": report.kid}

    return scores


def run_record(config: TrainConfig, setup: TrainingSetup, version: str) -> dict:
    return {
        "genflow_version": version,
        "train": config.to_dict(),
        "process": {"name": setup.process.name, "options": setup.process.options()},
        "model": setup.unet_config.to_dict(),
        "data": {"images": len(setup.data), "sha256": data_fingerprint(setup.data)},
    }


def data_fingerprint(data: Tensor) -> str:
    """sha256 of the training images as float32, to tell on resume whether the data changed."""
    return hashlib.sha256(data.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


@dataclass
class LoadedRun:
    """A trained run ready to sample: its directory, process, EMA model and config record."""

    path: Path
    process: GaussianProcess
    model: UNet
    config: dict


def resolve_run(run: str | Path | None) -> Path:
    """The run named, or ``runs/latest``."""
    if run is not None:
        return Path(run)
    latest = DEFAULT_RUNS / LATEST
    if not latest.exists():
        raise GenflowError("no run given and no runs/latest; train one with 'genflow train' or pass RUN")
    return latest


def load(run: str | Path | None = None, device: str = "auto") -> LoadedRun:
    """Load a run's EMA weights into its backbone, bound to its process."""
    files = read_run(resolve_run(run))
    record = files.config
    try:
        process = make_process(record["process"]["name"], **record["process"]["options"])
        unet_config = UNetConfig.from_dict(record["model"])
    except (GenflowError, KeyError, TypeError) as error:
        raise GenflowError(f"{files.path / CONFIG} does not describe a genflow model: {error}") from None
    model = UNet(unet_config, process)
    weights, source = ema_weights(files.path)
    load_matching(model.unet, weights, source)
    return LoadedRun(files.path, process, model.to(pick_device(device)).eval(), record)


def ema_weights(run_dir: Path) -> tuple[dict[str, Tensor], Path]:
    """The final EMA weights, or those of the newest checkpoint that verifies while the run
    is unfinished (interrupted or still training)."""
    final = run_dir / EMA_WEIGHTS
    if final.exists():
        return load_weights(final), final
    checkpoint = newest_valid_checkpoint(run_dir, report=lambda message: None)
    if checkpoint is None:
        raise GenflowError(
            f"{run_dir} has no weights yet (no {EMA_WEIGHTS}, no checkpoint); let it train or resume it with 'genflow train --resume {run_dir}'"
        )
    return {k.removeprefix("unet."): v for k, v in checkpoint.tensors("ema").items()}, checkpoint.path / "ema.safetensors"


def checkpoint_status(run_dir: Path, steps: int) -> str:
    """The newest checkpoint that verifies, and whether the run is finished."""
    checkpoint = newest_valid_checkpoint(run_dir, report=lambda message: None)
    if checkpoint is None:
        return "none"
    if checkpoint.step >= steps and (run_dir / EMA_WEIGHTS).is_file():
        return f"{checkpoint.path.name} (finished)"
    return f"{checkpoint.path.name} ({checkpoint.step} of {steps} steps; continue with 'genflow train --resume {run_dir}')"


def sample_run(
    loaded: LoadedRun,
    n: int,
    solver: str | None = None,
    steps: int | None = None,
    grid: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    **solver_options: float,
) -> tuple[Tensor, SamplingStats]:
    """``n`` samples of a loaded run, with the stats of how they were made."""
    if n < 1:
        raise GenflowError(f"n must be >= 1, not {n}")
    config = loaded.model.config
    stats = SamplingStats()
    images = genflow.sample(
        loaded.model,
        loaded.process,
        shape=(n, config.channels, config.resolution, config.resolution),
        solver=solver,
        steps=steps,
        grid=grid,
        seed=seed,
        batch_size=batch_size,
        stats=stats,
        **solver_options,
    )
    return images, stats


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output of unknown kind, or one that exists, unless ``overwrite``."""
    if out.suffix.lower() not in ("", ".png", ".npz"):
        raise GenflowError(f"unsupported output {out}: use a .png (grid), a .npz (array) or a directory")
    if out.exists() and not overwrite and (out.is_file() or any(out.iterdir())):
        raise GenflowError(f"{out} exists; choose another --out or pass --overwrite")


def save_samples(images: Tensor, out: Path, overwrite: bool = False) -> Path:
    """By the path: ``.png`` a grid, ``.npz`` uint8 NHWC under ``arr_0``, otherwise a
    directory of one PNG per sample. An existing output is refused unless ``overwrite``."""
    from torchvision.utils import save_image

    check_output(out, overwrite)
    suffix = out.suffix.lower()
    images = images.detach().float().cpu()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".png":  # files are written whole under a temporary name, then renamed
            nrow = max(1, int(np.ceil(np.sqrt(len(images)))))
            grid = (images.clamp(-1, 1) + 1) / 2
            atomic_write(out, lambda tmp: save_image(grid, tmp, format="png", nrow=nrow, padding=1))
        elif suffix == ".npz":
            array = to_uint8(images).permute(0, 2, 3, 1).numpy()
            atomic_write(out, lambda tmp: write_npz(tmp, array))
        else:
            out.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images):
                save_image((image.clamp(-1, 1) + 1) / 2, out / f"{i:06d}.png")
    except OSError as error:
        raise GenflowError(f"cannot write {out}: {error.strerror or error}") from None
    return out


def write_npz(path: Path, array: np.ndarray) -> None:
    """``arr_0`` in an .npz at exactly ``path`` (np.savez would append .npz to a bare name)."""
    with path.open("wb") as file:
        np.savez(file, array)


def real_data(loaded: LoadedRun) -> Tensor:
    train_config = loaded.config["train"]
    return load_dataset(train_config["dataset"], train_config.get("data_dir"))


def feature_classifier(dataset: str) -> torch.nn.Module:
    """The shipped digits classifier; other datasets have none yet."""
    from genflow.metrics import load_digits_classifier

    if dataset != "digits":
        raise GenflowError("genflow eval ships a feature classifier for the digits only; other datasets are not supported yet")
    return load_digits_classifier()


def evaluate_run(loaded: LoadedRun, n: int, solver: str | None = None, steps: int | None = None, grid: str | None = None,
                 seed: int = 0, batch_size: int | None = None, **solver_options: float) -> dict:  # fmt: skip
    """Sample ``n`` images and score them against the real data, floors included."""
    from genflow.metrics import evaluate

    classifier, real = feature_classifier(loaded.config["train"]["dataset"]), real_data(loaded)
    images, stats = sample_run(loaded, n, solver, steps, grid, seed, batch_size, **solver_options)
    report = evaluate(images, real, classifier, seed=seed)
    return {"solver": stats.solver, "grid": stats.grid, "steps": stats.steps, "nfe": stats.nfe,
            "seconds": round(stats.seconds, 4), **report.to_dict()}  # fmt: skip


def negative_log_likelihood(loaded: LoadedRun, n: int, seed: int = 0, steps: int = 0) -> dict:
    """Bits per dimension of ``n`` real images, uniformly dequantized at the data's levels;
    adaptive dopri5 when ``steps`` is 0, else ``steps`` Heun steps."""
    from genflow.likelihood import bits_per_dim, dequantize, log_likelihood

    real = real_data(loaded)
    levels = 17 if loaded.config["train"]["dataset"] == "digits" else 256
    generator = torch.Generator().manual_seed(seed)
    chosen = real[torch.randperm(len(real), generator=generator)[:n]]
    x, width = dequantize(chosen, levels, generator)
    device = next(loaded.model.parameters()).device
    method = "heun" if steps else "dopri5"
    log_px = log_likelihood(loaded.model, loaded.process, x.to(device), method=method, steps=steps, seed=seed).cpu()
    bpd = bits_per_dim(log_px, x[0].numel(), width)
    return {"nll_bits_per_dim": float(bpd.mean()), "nll_n": n, "nll_levels": levels, "nll_method": method}


def read_samples_file(path: Path) -> Tensor:
    """Images from an ``.npz`` holding uint8 NHWC under ``arr_0``, as NCHW floats in [-1, 1]."""
    if not path.is_file():
        raise GenflowError(f"samples file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            array = archive["arr_0"]
    except (OSError, ValueError, KeyError) as error:
        raise GenflowError(f"{path} is not an .npz with uint8 NHWC images under arr_0 ({error})") from None
    if array.dtype != np.uint8 or array.ndim != 4:
        raise GenflowError(f"{path}: arr_0 must be uint8 of shape (N, H, W, C), not {array.dtype} {array.shape}")
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 127.5 - 1


def evaluate_samples_file(path: Path, dataset: str = "digits", seed: int = 0) -> dict:
    """Score images made by any program against ``dataset``, floors included."""
    from genflow.metrics import evaluate

    classifier, real = feature_classifier(dataset), load_dataset(dataset)
    images = read_samples_file(path)
    if images.shape[1:] != real.shape[1:]:
        raise GenflowError(f"{path} holds images of shape {tuple(images.shape[1:])}, {dataset} has {tuple(real.shape[1:])}")
    return evaluate(images, real, classifier, seed=seed).to_dict()
