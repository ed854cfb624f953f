"""A trained run loaded to sample: its process, its EMA model behind the preconditioner and its
record (:class:`LoadedRun`), and sampling it as the command line does: defaults from the run, the
checks that refuse what cannot work before any sampling, and a share of the samples per process
under torchrun."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from genflow.errors import GenflowError
from genflow.nn import Preconditioner, backbone_from_dict
from genflow.processes import GaussianProcess, make_process
from genflow.runs import files
from genflow.runs.files import CONFIG, SAMPLES, read_run
from genflow.runtime.base import Runtime, SingleProcess, pick_device
from genflow.sampling.sample import SamplingStats, per_sample_seeds, sample
from genflow.solvers import SOLVERS
from genflow.solvers.guidance import FULL_INTERVAL, check_guidance, class_rows, parse_classes
from genflow.storage import load_matching
from genflow.values import MAX_SAMPLES, check_count


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
    run_files = read_run(run)  # None: runs/latest, the run it points at
    record = run_files.config
    try:
        process = make_process(record["process"]["name"], **record["process"]["options"])
        backbone = backbone_from_dict(record["model"])
    except (GenflowError, KeyError, TypeError) as error:
        raise GenflowError(f"{run_files.path / CONFIG} does not describe a genflow model: {error}") from None
    model = Preconditioner(backbone, process.schedule, process.discrete_steps)
    weights, source, step = files.ema_weights(run_files.path, record["train"]["steps"])
    load_matching(model.backbone, weights, source)
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


def check_fits_in_memory(n: int, loaded: LoadedRun) -> None:
    """Refuse ``n`` samples whose float32 images alone exceed this machine's memory (they are all
    held until written), naming the most that fit."""
    config = loaded.model.config
    image_bytes = 4 * config.channels * config.resolution**2
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # a platform without these names: nothing to check against
        return
    if n * image_bytes > memory:
        raise GenflowError(
            f"{n} samples of {config.channels}x{config.resolution}x{config.resolution} need {n * image_bytes / 2**30:.1f} GiB, "
            f"more than this machine's {memory / 2**30:.1f} GiB; ask for at most {memory // image_bytes} (or several runs of --seed)"
        )


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
    check_count("n", n, MAX_SAMPLES)
    check_fits_in_memory(n, loaded)
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
    images = sample(loaded.model, loaded.process, shape=shape, solver=solver, steps=steps, grid=grid, seed=seeds,
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
    spec = SOLVERS.get(solver)
    if loaded.config["train"].get("objective", "denoising") != "denoising" and spec.injects_noise(spec.resolve_options(solver_options)):
        raise GenflowError(
            f"solver {solver} adds noise, which assumes x_t | x0 is Gaussian; a run trained on reflow pairs learns only the ODE: "
            "choose an ODE solver (euler, heun, dpm++2m, unipc, dopri5)"
        )


def check_fixed_steps(solver: str, steps: int | None) -> None:
    """Refuse a step count for an adaptive solver: it picks its own steps (a count would only
    add points it must pass through, costing more, not less)."""
    spec = SOLVERS.get(solver)
    if steps is not None and spec.fixed_steps(steps) is None:
        accuracy = ", ".join(f"--{name} (default {option.default:g})" for name, option in spec.options.items())
        raise GenflowError(
            f"{solver} is adaptive: it picks its own steps, so --steps does not apply; set its accuracy with {accuracy}, "
            f"or choose a fixed-step solver (--solver heun --steps {steps})"
        )
