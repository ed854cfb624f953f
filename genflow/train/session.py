"""A training run from its config to its files: validate and load everything first (:func:`prepare`),
then create the run directory, take its lock and train (:func:`train`), or continue from the newest
checkpoint that verifies (:func:`resume`)."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from torch import Tensor

from genflow.config import TrainConfig
from genflow.data.datasets import DATASETS, load_labelled_dataset, load_pixels
from genflow.data.folders import ImageFiles, describe_skipped, files_in_memory, scan_folder
from genflow.data.pairs import read_pairs
from genflow.data.pixels import Dataset, as_unit_range
from genflow.errors import GenflowError
from genflow.eval.scoring import (
    training_evaluator,
)
from genflow.nn import BackboneConfig, backbone_for_data
from genflow.processes import GaussianProcess, make_process
from genflow.progress import Reporter, SilentReporter
from genflow.runs import files
from genflow.runs import resume as resume_rules
from genflow.runs.checkpoint import Checkpoint, newest_valid_checkpoint
from genflow.runs.files import CONFIG, EMA_WEIGHTS, SAMPLES, read_run
from genflow.runtime.base import Runtime
from genflow.runtime.launch import runtime_for
from genflow.storage import write_json
from genflow.train import Trainer, TrainingSetup
from genflow.train.batches import TrainingData, check_batch_size
from genflow.train.objective import make_objective
from genflow.version import __version__


def backbone_config(config: TrainConfig, image_shape: Sequence[int], num_classes: int = 0) -> BackboneConfig:
    """The run's backbone (``model.backbone``, the UNet by default) at its default for the data's
    image shape ``(C, H, W)``, with the run's ``model`` overrides; ``num_classes`` (from the data,
    0 for an unconditional run) sizes the class embedding."""
    channels, height, width = image_shape
    if height != width:
        raise GenflowError(f"images must be square, not {height}x{width}")
    return backbone_for_data(config.model, channels, height, num_classes)


def training_data(config: TrainConfig) -> tuple[TrainingData, tuple[str, ...] | None]:
    """What a run trains on (``images``, and ``labels`` when conditional; ``images`` and their
    paired ``noise`` for a run on reflow pairs) and its class names; an image folder larger
    than ``data_in_memory_mb`` streams from its files. A conditional run on data without labels
    is refused."""
    if config.pairs:
        if config.conditional:
            raise GenflowError("reflow pairs carry no labels; train on them without --conditional")
        return TrainingData(read_pairs(Path(config.pairs))), None
    dataset, files, notes = training_images(config)
    labels = files.labels if files is not None else dataset.labels
    classes = files.classes if files is not None else dataset.classes
    if config.conditional and labels is None:
        raise GenflowError(
            f"--conditional needs labelled data, and {config.dataset} has no labels; put an image folder's images in "
            "one subfolder per class, or train without --conditional"
        )
    tensors = {} if files is not None else {"images": dataset.images}
    if not config.conditional:
        return TrainingData(tensors, files, notes), None
    return TrainingData(tensors | {"labels": labels}, files, notes), classes


def training_images(config: TrainConfig) -> tuple[Dataset | None, ImageFiles | None, tuple[str, ...]]:
    """The run's images: in memory as uint8 (the digits as floats), or, for an image folder whose
    pixels exceed ``data_in_memory_mb``, its files; and a note of what a folder's scan left out."""
    if config.dataset in DATASETS or not Path(config.dataset).is_dir():
        return load_pixels(config.dataset, config.data_dir, config.resolution), None, ()
    files = scan_folder(Path(config.dataset), config.resolution, config.bad_images)
    notes = (describe_skipped(files),) if files.skipped else ()
    if len(files) * math.prod(files.shape) > config.data_in_memory_mb * 2**20:
        return None, files, notes
    dataset = files_in_memory(files, config.bad_images)
    undecodable = len(files) - len(dataset.images)
    return dataset, None, notes + ((f"left out {undecodable} images under {files.root} whose pixels cannot be decoded (bad_images=skip)",) if undecodable else ())


def prepare(config: TrainConfig, runtime: Runtime | None = None, resuming: bool = False) -> TrainingSetup:
    """Validate ``config`` and load what it names; every input error surfaces here, before any
    file is written. The setup's config has its process options and backbone resolved."""
    config.validate()
    process = make_process(config.process, **config.process_options)
    runtime = runtime or runtime_for(config.device)
    config.check_divides(runtime.world_size)
    data, classes = training_data(config)
    check_batch_size(config.batch_size, data.count)
    unet = backbone_config(config, data.image_shape, len(classes or ()))
    real = functools.partial(real_images, config, data)
    evaluate = training_evaluator(config, process, real, data.image_shape, runtime.device, unet.num_classes) if config.eval_every else None
    resolved = config.with_resolved(process.options(), unet.to_dict())
    objective = make_objective(config.objective, process, config.steps_out, config.label_dropout, unet.null_label)
    initial = None
    if config.init_from:  # a new run checks the weights now, before writing; a resume reads them if it starts afresh
        load = functools.partial(initial_weights, config.init_from, unet, process)
        initial = load if resuming else functools.partial(dict, load())
    return TrainingSetup(resolved, process, objective, data, runtime, evaluate, classes, initial)


def real_images(config: TrainConfig, data: TrainingData) -> Tensor:
    """The real images (floats in [-1, 1]) a run is scored against: its training images, or for a
    run on reflow pairs (a teacher's samples) or on streamed files those of its dataset."""
    if config.pairs or data.files is not None:
        return load_labelled_dataset(config.dataset, config.data_dir, config.resolution).images
    return as_unit_range(data.tensors["images"])


def initial_weights(run: str, backbone: BackboneConfig, process: GaussianProcess) -> dict[str, Tensor]:
    """The EMA backbone weights of ``run``, which a new run starts from (``init_from``), checked
    against this run's backbone, and against its process and prediction: the same weights mean
    another function under another process's time map or another prediction."""
    run_files = read_run(run)
    saved = run_files.config.get("process", {})
    theirs = (saved.get("name"), saved.get("options", {}).get("prediction"))
    if theirs != (process.name, process.prediction):
        raise GenflowError(
            f"{run_files.path} is a {theirs[0]} run predicting {theirs[1]}, and this run is {process.name} predicting "
            f"{process.prediction}: its weights would compute something else here; train with its process and prediction, "
            "or start from scratch (--init scratch)"
        )
    weights, source, _ = files.ema_weights(run_files.path, run_files.config["train"]["steps"])
    expected = {name: tuple(value.shape) for name, value in backbone.build().state_dict().items()}
    found = {name: tuple(value.shape) for name, value in weights.items()}
    if found != expected:
        name = next(k for k in sorted(expected.keys() | found.keys()) if expected.get(k) != found.get(k))
        raise GenflowError(
            f"the weights of {run_files.path} ({source.name}) do not fit this run's backbone ({name}: {found.get(name)} there, "
            f"{expected.get(name)} here); keep the teacher's model settings, or start from scratch (--init scratch)"
        )
    return weights


def data_record(setup: TrainingSetup) -> dict:
    """The data part of ``config.json`` for a run trained as ``setup`` says."""
    data = setup.data
    if data.files is not None:
        return files.data_record(data.count, data.files.fingerprint(), data.tensors.get("labels"), setup.classes)
    images = data.tensors["images"]
    return files.data_record(len(images), files.data_fingerprint(images), data.tensors.get("labels"), setup.classes)


def train(
    config: TrainConfig,
    out: Path | None = None,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    runtime: Runtime | None = None,
) -> Path:
    """Train a run as ``config`` says and return its directory (``runtime``: a single process
    on ``config.device`` unless given). The config is trained as given (a v0.1 run's config
    trains the same run today); the command line caps the warm-up (:func:`genflow.config.resolve_config`)."""
    setup = prepare(config, runtime)
    runtime = setup.runtime
    run_dir = runtime.decide(lambda: files.new_run_dir(out, config.process, overwrite))
    with run_lock(run_dir, runtime):
        runtime.decide(lambda: start_run_files(setup, run_dir, out))
        Trainer(setup, run_dir, reporter).run()
    return run_dir


def start_run_files(setup: TrainingSetup, run_dir: Path, out: Path | None) -> None:
    """A new run's directory emptied, with its ``samples`` folder and ``config.json``; a run in
    the default location becomes ``runs/latest`` now, so that an interrupted one is found."""
    files.clear_run(run_dir)
    (run_dir / SAMPLES).mkdir()
    write_json(run_dir / CONFIG, files.run_record(setup.config, __version__, data_record(setup)))
    if files.is_default_location(out, run_dir):
        files.point_latest(run_dir.parent, run_dir)


@contextmanager
def run_lock(run_dir: Path, runtime: Runtime) -> Iterator[None]:
    """The run directory's lock, held by the process that writes; a run that another training
    holds is refused in every process."""
    with ExitStack() as held:
        runtime.decide(lambda: held.enter_context(files.exclusive_run(run_dir)) and None)
        yield


def resume(
    run: str | Path, overrides: dict | None = None, reporter: Reporter | None = None, runtime: Runtime | None = None
) -> Path:
    """Continue a run from its newest checkpoint that verifies (a corrupt one is reported and
    skipped) to its step budget. ``overrides`` are config values as in :func:`train`; one that
    changes the process, the model, the data or the optimization is refused, naming the key."""
    run_files = read_run(run)
    if run_files.config.get("imported"):
        raise GenflowError(f"{run_files.path} was imported from diffusers, not trained by genflow: there is no training to resume")
    saved = run_files.train_config()
    setup = prepare(resume_rules.resumed_config(saved, overrides or {}), runtime, resuming=True)
    saved_data = run_files.config.get("data", {})  # its fingerprint is absent in runs from before it
    data = data_record(setup) if saved_data.get("sha256") else {}
    resume_rules.check_same_run(resume_rules.identity(saved, saved_data), resume_rules.identity(setup.config, data))
    path, reporter, runtime = run_files.path, reporter or SilentReporter(), setup.runtime
    with run_lock(path, runtime):
        checkpoint = runtime.decide(lambda: newest_valid_checkpoint(path, reporter.note))
        if checkpoint is None and (path / EMA_WEIGHTS).exists():
            raise GenflowError(
                f"{path} has final weights but no checkpoint to resume from (it predates checkpoints); train a new run"
            )
        done = checkpoint.step if checkpoint else 0
        if setup.config.steps < done:
            raise GenflowError(f"{path} is already at step {done}; --steps must be at least {done}")
        if checkpoint is not None:
            setup = dataclasses.replace(setup, initial_weights=None)  # the checkpoint's weights replace them
        trainer = Trainer(setup, path, reporter)
        trainer.resume_from(checkpoint)  # its weights checked (fitting, finite) before anything in the run is rewritten
        changes = resume_rules.changes(saved, setup.config)
        if changes:
            reporter.note("resume changes " + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()))
        runtime.decide(lambda: record_resume(run_files, setup, checkpoint, changes))
        trainer.run()
    return path


def record_resume(run_files: files.RunFiles, setup: TrainingSetup, checkpoint: Checkpoint | None, changes: dict) -> None:
    """Clear what a kill left half-written, record the changed config, drop the metrics lines
    past the checkpoint and note the resume there."""
    path, done = run_files.path, checkpoint.step if checkpoint else 0
    files.remove_run_temporaries(path)
    if changes:
        version = run_files.config.get("genflow_version", __version__)
        data = run_files.config.get("data") or data_record(setup)  # verified equal on resume
        write_json(path / CONFIG, files.run_record(setup.config, version, data))
    resumed_from = checkpoint.path.name if checkpoint else None
    files.keep_metrics_through(path / files.METRICS, done, {"step": done, "resumed_from": resumed_from, "changes": changes})
    (path / SAMPLES).mkdir(exist_ok=True)
