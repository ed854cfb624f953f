"""The verbs the command line calls, each a few lines wiring the parts: train a run, resume
it, load it, sample it, score it. Run files live in :mod:`genflow.runs`, the loop in
:mod:`genflow.train`, scoring in :mod:`genflow.evaluation`."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

import genflow
from genflow.config import TrainConfig
from genflow.data import DATASETS, Dataset, as_unit_range, load_labelled_dataset, load_pixels
from genflow.errors import GenflowError
from genflow.evaluation import (
    evaluate_samples_file,
    feature_classifier,
    negative_log_likelihood,
    run_dataset,
    score,
    training_evaluator,
)
from genflow.folders import ImageFiles
from genflow.image_files import check_output, check_scale, save_samples
from genflow.nn import Preconditioner, UNetConfig, preset_for
from genflow.pairs import read_pairs
from genflow.processes import GaussianProcess, make_process
from genflow.progress import Reporter, SilentReporter
from genflow.runs import files
from genflow.runs import resume as resume_rules
from genflow.runs.checkpoint import Checkpoint, newest_valid_checkpoint
from genflow.runs.files import CONFIG, EMA_WEIGHTS, SAMPLES, checkpoint_status, read_run
from genflow.sampling import SamplingStats, per_sample_seeds
from genflow.solvers.guidance import FULL_INTERVAL, check_guidance, class_rows, parse_classes
from genflow.storage import load_matching, write_json
from genflow.train import Trainer, TrainingSetup
from genflow.train.batches import TrainingData, check_batch_size
from genflow.train.objective import make_objective
from genflow.train.runtime import Runtime, SingleProcess, pick_device, runtime_for

__all__ = [
    "ClassRequest",
    "LoadedRun",
    "check_output",
    "check_scale",
    "checkpoint_status",
    "evaluate_run",
    "evaluate_samples_file",
    "load",
    "negative_log_likelihood",
    "prepare",
    "read_run",
    "resume",
    "sample_run",
    "samples_folder",
    "save_samples",
    "train",
]


def backbone_config(config: TrainConfig, image_shape: Sequence[int], num_classes: int = 0) -> UNetConfig:
    """The preset for the data's image shape ``(C, H, W)`` with the run's ``model`` overrides;
    ``num_classes`` (from the data, 0 for an unconditional run) sizes the class embedding."""
    channels, height, width = image_shape
    if height != width:
        raise GenflowError(f"images must be square, not {height}x{width}")
    shape = {"channels": channels, "resolution": height, "num_classes": num_classes}
    return UNetConfig.from_dict({**preset_for(channels, height).to_dict(), **config.model, **shape})


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
    from genflow.folders import describe_skipped, files_in_memory, scan_folder

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
        load = functools.partial(initial_weights, config.init_from, unet)
        initial = load if resuming else functools.partial(dict, load())
    return TrainingSetup(resolved, process, objective, data, runtime, evaluate, classes, initial)


def real_images(config: TrainConfig, data: TrainingData) -> Tensor:
    """The real images (floats in [-1, 1]) a run is scored against: its training images, or for a
    run on reflow pairs (a teacher's samples) or on streamed files those of its dataset."""
    if config.pairs or data.files is not None:
        return load_labelled_dataset(config.dataset, config.data_dir, config.resolution).images
    return as_unit_range(data.tensors["images"])


def initial_weights(run: str, backbone: UNetConfig) -> dict[str, Tensor]:
    """The EMA backbone weights of ``run``, which a new run starts from (``init_from``), checked
    against this run's backbone."""
    from genflow.nn.unet import build_unet

    run_files = read_run(run)
    weights, source, _ = files.ema_weights(run_files.path, run_files.config["train"]["steps"])
    expected = {name: tuple(value.shape) for name, value in build_unet(backbone).state_dict().items()}
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
    write_json(run_dir / CONFIG, files.run_record(setup.config, genflow.__version__, data_record(setup)))
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
        changes = resume_rules.changes(saved, setup.config)
        if changes:
            reporter.note("resume changes " + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()))
        runtime.decide(lambda: record_resume(run_files, setup, checkpoint, changes))
        if checkpoint is not None:
            setup = dataclasses.replace(setup, initial_weights=None)  # the checkpoint's weights replace them
        trainer = Trainer(setup, path, reporter)
        trainer.resume_from(checkpoint)
        trainer.run()
    return path


def record_resume(run_files: files.RunFiles, setup: TrainingSetup, checkpoint: Checkpoint | None, changes: dict) -> None:
    """Clear what a kill left half-written, record the changed config, drop the metrics lines
    past the checkpoint and note the resume there."""
    path, done = run_files.path, checkpoint.step if checkpoint else 0
    files.remove_run_temporaries(path)
    if changes:
        version = run_files.config.get("genflow_version", genflow.__version__)
        data = run_files.config.get("data") or data_record(setup)  # verified equal on resume
        write_json(path / CONFIG, files.run_record(setup.config, version, data))
    resumed_from = checkpoint.path.name if checkpoint else None
    files.keep_metrics_through(path / files.METRICS, done, {"step": done, "resumed_from": resumed_from, "changes": changes})
    (path / SAMPLES).mkdir(exist_ok=True)


@dataclass
class LoadedRun:
    """A trained run ready to sample: its directory, process, EMA model and config record."""

    path: Path
    process: GaussianProcess
    model: Preconditioner
    config: dict
    checkpoint_step: int | None = None
    """The step of the checkpoint whose weights were loaded, for an unfinished run; ``None``
    when the run finished and its final weights were loaded."""

    @property
    def classes(self) -> tuple[str, ...] | None:
        """The class names of a conditional run (label ``k`` is ``classes[k]``); ``None`` for an
        unconditional one."""
        if not self.model.config.num_classes:
            return None
        names = self.config.get("data", {}).get("classes") or range(self.model.config.num_classes)
        return tuple(str(name) for name in names)

    def describe(self) -> str:
        """The run, and for an unfinished one which weights sample it."""
        if self.checkpoint_step is None:
            return str(self.path)
        return f"{self.path} (unfinished: checkpoint of step {self.checkpoint_step} of {self.config['train']['steps']})"


def load(run: str | Path | None = None, device: str = "auto") -> LoadedRun:
    """Load a run's EMA weights into its backbone, behind the preconditioner of its process."""
    run_files = read_run(files.resolve_run(run))  # runs/latest: the run it points at
    record = run_files.config
    try:
        process = make_process(record["process"]["name"], **record["process"]["options"])
        unet_config = UNetConfig.from_dict(record["model"])
    except (GenflowError, KeyError, TypeError) as error:
        raise GenflowError(f"{run_files.path / CONFIG} does not describe a genflow model: {error}") from None
    model = Preconditioner(unet_config, process.schedule, process.discrete_steps)
    weights, source, step = files.ema_weights(run_files.path, record["train"]["steps"])
    load_matching(model.unet, weights, source)
    return LoadedRun(run_files.path, process, model.to(pick_device(device)).eval(), record, step)


def samples_folder(loaded: LoadedRun) -> Path:
    """The run's ``samples`` folder, where sampling without ``--out`` writes; created if the
    run lacks it (genflow's own folder, so making it is allowed)."""
    folder = loaded.path / SAMPLES
    try:
        folder.mkdir(exist_ok=True)
    except OSError as error:
        raise GenflowError(f"cannot write in {folder}: {error.strerror or error}; pass --out") from None
    return folder


def sample_run(
    loaded: LoadedRun,
    n: int,
    solver: str | None = None,
    steps: int | None = None,
    grid: str | None = None,
    seed: int | Sequence[int] = 0,
    batch_size: int | None = None,
    labels: Sequence[int] | None = None,
    guidance: float = 1.0,
    guidance_interval: Sequence[float] = FULL_INTERVAL,
    runtime: Runtime | None = None,
    **solver_options: float | str,
) -> tuple[Tensor | None, SamplingStats]:
    """``n`` samples of a loaded run, with the stats of how they were made; ``labels`` (one per
    sample, or ``None``), ``guidance`` and ``seed`` (one, or one per sample) as in :func:`genflow.sample`.

    Under a distributed ``runtime`` each process samples a contiguous share of the per-sample
    seeds and the main process gathers them in order: the samples are those of one process
    (per-sample seeds make them independent of the batch); the others get ``None``."""
    if n < 1:
        raise GenflowError(f"n must be >= 1, not {n}")
    check_conditioning(loaded, labels, guidance, guidance_interval)
    solver, steps = sampling_defaults(loaded, solver, steps)
    check_fixed_steps(solver, steps)
    check_student_solver(loaded, solver, solver_options)
    runtime = runtime or SingleProcess(next(loaded.model.parameters()).device)
    share = process_share(n, runtime)
    config, stats = loaded.model.config, SamplingStats()
    shape = (len(share), config.channels, config.resolution, config.resolution)
    seeds = per_sample_seeds(seed, n)[share.start : share.stop]
    shared_labels = None if labels is None else list(labels)[share.start : share.stop]
    images = genflow.sample(loaded.model, loaded.process, shape=shape, solver=solver, steps=steps, grid=grid, seed=seeds,
                            batch_size=batch_size, stats=stats, labels=shared_labels, guidance=guidance,
                            guidance_interval=guidance_interval, **solver_options) if share else \
        torch.empty((0, *shape[1:]), device=runtime.device)  # fmt: skip
    return runtime.gather_rows(images), stats


def process_share(n: int, runtime: Runtime) -> range:
    """The sample indices this process draws: ``n`` split into ``world_size`` contiguous parts
    that differ in size by at most one."""
    base, extra = divmod(n, runtime.world_size)
    start = runtime.rank * base + min(runtime.rank, extra)
    return range(start, start + base + (runtime.rank < extra))


def check_conditioning(loaded: LoadedRun, labels: Sequence[int] | None, guidance: float, interval: Sequence[float]) -> None:
    """Refuse, before sampling, guidance that is not a finite number >= 0 or an interval outside
    [0, 1], classes for an unconditional run, and guidance without classes."""
    check_guidance(guidance, interval)
    if loaded.classes is None and (labels is not None or guidance != 1):
        raise GenflowError(
            f"{loaded.path} is unconditional: --class and --guidance need a run trained with --conditional"
        )
    if labels is None and guidance != 1:
        raise GenflowError("--guidance needs --class: guidance pushes samples towards the classes given")


@dataclass(frozen=True)
class ClassRequest:
    """What ``--class`` asks of a run: per-sample labels and seeds (``per_class`` samples of each
    class in turn, the same seeds in every class) and the grid width that puts one class per
    row; for no ``--class``, unlabelled samples with seeds ``seed + i``."""

    n: int
    labels: list[int] | None
    seeds: int | list[int]
    columns: int | None = None

    @classmethod
    def of(cls, loaded: LoadedRun, spec: str | None, n: int | None, seed: int) -> ClassRequest:
        """``n`` is per class (default 64 for one class or none, 8 each for several)."""
        if spec is None:
            return cls(DEFAULT_SAMPLES if n is None else n, None, seed)
        if loaded.classes is None:
            raise GenflowError(f"{loaded.path} is unconditional: --class needs a run trained with --conditional")
        classes = parse_classes(spec, loaded.classes)
        per_class = n if n is not None else DEFAULT_SAMPLES if len(classes) == 1 else PER_CLASS_IN_A_GRID
        if per_class < 1:
            raise GenflowError(f"n must be >= 1, not {per_class}")
        labels, seeds = class_rows(classes, per_class, seed)
        return cls(len(labels), labels, seeds, per_class if len(classes) > 1 else None)

    def describe(self, loaded: LoadedRun, guidance: float) -> str:
        """``classes 3, 5 (guidance 2)``, or what an unlabelled request of a conditional run samples."""
        if self.labels is None:
            return "unconditional (the null label; --class all gives one row per class)" if loaded.classes else ""
        names = list(dict.fromkeys(loaded.classes[label] for label in self.labels))
        return f"{'class' if len(names) == 1 else 'classes'} {', '.join(names)} (guidance {guidance:g})"


DEFAULT_SAMPLES = 64
PER_CLASS_IN_A_GRID = 8


def sampling_defaults(loaded: LoadedRun, solver: str | None, steps: int | None) -> tuple[str, int | None]:
    """The solver and steps to sample with: those given, else the process's default solver; a
    distilled K-step student's default is the Euler grid it was trained for (``steps_out`` steps)."""
    train = loaded.config["train"]
    if train.get("objective") == "distill" and solver in (None, "euler"):
        return "euler", steps if steps is not None else train.get("steps_out", 1)
    return solver or loaded.process.default_solver, steps


def check_student_solver(loaded: LoadedRun, solver: str, solver_options: dict) -> None:
    """A run trained on reflow pairs has no Gaussian conditionals ``x_t | x0`` (its noise was
    paired with each image by a teacher), which stochastic samplers assume."""
    spec = genflow.SOLVERS.get(solver)
    if loaded.config["train"].get("objective", "denoising") != "denoising" and spec.injects_noise(spec.resolve_options(solver_options)):
        raise GenflowError(
            f"solver {solver} adds noise, which assumes x_t | x0 is Gaussian; a run trained on reflow pairs learns only the ODE: "
            "choose an ODE solver (euler, heun, dpm++2m, unipc, dopri5)"
        )


def check_fixed_steps(solver: str, steps: int | None) -> None:
    """Refuse a step count for an adaptive solver: it picks its own steps (a count would only
    add points it must pass through, costing more, not less)."""
    spec = genflow.SOLVERS.get(solver)
    if steps is not None and spec.fixed_steps(steps) is None:
        accuracy = ", ".join(f"--{name} (default {option.default:g})" for name, option in spec.options.items())
        raise GenflowError(
            f"{solver} is adaptive: it picks its own steps, so --steps does not apply; set its accuracy with {accuracy}, "
            f"or choose a fixed-step solver (--solver heun --steps {steps})"
        )


def check_data_shape(loaded: LoadedRun, dataset: str, images: Tensor) -> None:
    """Refuse to score a run against data of another shape (an imported model's, for one)."""
    config = loaded.model.config
    made, real = (config.channels, config.resolution, config.resolution), tuple(images.shape[1:])
    if made != real:
        made_text, real_text = ("x".join(map(str, dims)) for dims in (made, real))
        raise GenflowError(
            f"{loaded.path} makes {made_text} images and {dataset} holds {real_text}; score its samples against data of "
            "their shape with 'genflow sample RUN --out FILE.npz' and 'genflow eval --samples FILE.npz --dataset NAME'"
        )


def evaluate_run(loaded: LoadedRun, n: int | None = None, solver: str | None = None, steps: int | None = None,
                 grid: str | None = None, seed: int = 0, batch_size: int | None = None,
                 classes: str | Sequence[int] | None = None, guidance: float = 1.0,
                 guidance_interval: Sequence[float] = FULL_INTERVAL, runtime: Runtime | None = None,
                 metric: str | None = None, inception_weights: str | Path | None = None,
                 **solver_options: float | str) -> dict | None:  # fmt: skip
    """Sample ``n`` images and score them against the real data, floors included (``n``
    defaults to the most the data allows). A conditional run's samples cover ``classes``
    (``--class`` text or labels; default all) evenly at ``guidance``, and are scored against
    the real images of those classes, with class agreement and per-class Frechet distance
    beside per-class floors added (:func:`genflow.evaluation.plan_evaluation`). Classes or
    guidance for an unconditional run, and counts the scores cannot use, are refused before
    the real data is loaded or anything sampled. Under a distributed ``runtime`` every process
    samples its share and the main process scores them; the others get ``None``.

    ``metric`` ``fid`` (:func:`genflow.evaluation.choose_metric` picks when ``None``) scores FID
    and KID in Inception-v3 features instead, with the weights file ``inception_weights``
    (:func:`genflow.evaluation.fid_of_run`)."""
    from genflow.evaluation import choose_metric, class_scores, fid_of_run, plan_evaluation, sampling_fields

    conditional = loaded.classes is not None
    labelled = [] if conditional or classes is not None else None  # eval labels every sample of a conditional run
    check_conditioning(loaded, labelled, guidance, guidance_interval)
    guided = {"guidance": guidance, "guidance_interval": list(guidance_interval)} if conditional else {}
    if choose_metric(metric, loaded.config["train"]["dataset"], inception_weights) == "fid":
        sample = functools.partial(sample_run, loaded, solver=solver, steps=steps, grid=grid, seed=seed, batch_size=batch_size,
                                   guidance=guidance, guidance_interval=guidance_interval, runtime=runtime, **solver_options)  # fmt: skip
        result = fid_of_run(loaded, n, classes, seed, inception_weights, sample)
        return None if result is None else result | guided
    feature_classifier(loaded.config["train"]["dataset"])  # refuses a dataset without one before loading or sampling
    dataset, data = run_dataset(loaded)
    check_data_shape(loaded, dataset, data.images)
    plan = plan_evaluation(data, loaded.classes, n, classes)
    images, stats = sample_run(loaded, plan.n, solver, steps, grid, seed, batch_size, plan.labels, guidance, guidance_interval,
                               runtime, **solver_options)  # fmt: skip
    if images is None:
        return None
    result = sampling_fields(stats) | score(images, plan.real, dataset, seed)
    if conditional:
        result |= guided | class_scores(images, plan, dataset, seed)
    return result
