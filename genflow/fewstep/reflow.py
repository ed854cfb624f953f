"""Few-step generation from any trained run with a probability-flow ODE: reflow and
distillation (Liu, Gong & Liu 2022, "Flow straight and fast"), and the straightness that
shows them work.

- :func:`reflow`: integrate the teacher's ODE from N seeded noises, store the (noise, sample)
  pairs in the new run (:mod:`genflow.data.pairs`), and train a ``rectified-flow`` student on them
  (objective ``reflow``), from the teacher's weights when the teacher is rectified flow.
- :func:`distill`: a K-step student of a rectified-flow run (a k-rectified flow), trained on
  pairs of that run's own ODE (objective ``distill``, their sec. 2.3), from its weights.
- :func:`straightness`: ``E int_0^1 ||(x_1 - x_0) - dx/dt||^2 dt`` along the run's ODE
  (their sec. 2.3, eq. 9), per dimension.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genflow.config import TrainConfig, capped_warmup, merge_values
from genflow.data.pairs import Manifest, check_plan, generate, write_manifest
from genflow.errors import GenflowError
from genflow.processes.base import GaussianProcess, Model
from genflow.progress import Reporter, SilentReporter
from genflow.runs import files
from genflow.runs.loaded import LoadedRun, load
from genflow.sampling.grids import make_grid
from genflow.sampling.sample import SamplingStats, sample
from genflow.solvers import SOLVERS
from genflow.solvers.base import BoundModel, NoiseSource
from genflow.storage import sha256_file
from genflow.train.session import resume as resume_training
from genflow.train.session import train

PAIRS_FOLDER = "pairs"
STRAIGHTNESS_PATHS = 256
"""Paths ``genflow eval --straightness`` averages over (seeds ``seed .. seed + 255``)."""
DEFAULT_SOLVER, DEFAULT_STEPS = "dpm++2m", 40
"""Pairs must be accurate ODE endpoints: DPM-Solver++(2M) at 40 steps is within rounding of the
converged ODE on the digits' backbones (``benchmarks/results/solvers-*.md``)."""


def teacher_record(loaded: LoadedRun) -> dict[str, Any]:
    """What identifies a teacher in its pairs' manifest: its run, process, and the weights file
    it was loaded from (an unfinished teacher's newest checkpoint) with its sha256 and step."""
    _, source, step = files.ema_weights(loaded.path, loaded.config["train"]["steps"])
    return {
        "path": str(loaded.path.resolve()),
        "process": {"name": loaded.process.name, "options": loaded.process.options()},
        "weights": str(source.relative_to(loaded.path)),
        "weights_sha256": sha256_file(source),
        "checkpoint_step": step,
    }


def check_teacher(loaded: LoadedRun, solver: str, solver_options: dict) -> None:
    """A teacher needs an unconditional model and a solver of its probability-flow ODE."""
    if loaded.classes is not None:
        raise GenflowError("reflow of a class-conditional teacher is not supported yet; use an unconditional run")
    spec = SOLVERS.get(solver)
    options = spec.resolve_options(solver_options)
    spec.check_process(loaded.process, options)
    if spec.injects_noise(options):
        raise GenflowError(
            f"solver {solver} adds noise, so its samples are not a function of their starting noise; reflow pairs need a "
            "probability-flow ODE solver (dpm++2m, unipc, heun, euler, dopri5, ...)"
        )


def pair_plan(loaded: LoadedRun, count: int, solver: str, steps: int | None, seed: int, batch_size: int | None) -> Manifest:
    """The pairs to make, every setting checked (the solver's grid included) before any file is written."""
    spec = SOLVERS.get(solver)
    steps = spec.fixed_steps(steps if steps is not None else DEFAULT_STEPS)
    if steps is not None:
        make_grid(loaded.process.default_grid, steps, loaded.process)
    if batch_size is not None and batch_size < 1:
        raise GenflowError(f"--sample-batch-size must be >= 1, not {batch_size}")
    config = loaded.model.config
    return Manifest(count=count, teacher=teacher_record(loaded), solver=solver, steps=steps or 0,
                    grid=loaded.process.default_grid if steps is not None else "adaptive", nfe=0.0, seed=seed,
                    shape=[config.channels, config.resolution, config.resolution], batch_size=batch_size)  # fmt: skip


def make_pairs(loaded: LoadedRun, folder: Path, plan: Manifest, reporter: Reporter, **solver_options: float | str) -> Manifest:
    """Make (or finish) the planned pairs of the loaded teacher in ``folder``."""
    stats = SamplingStats()
    steps = plan.steps or None

    def integrate(seeds: range) -> Tensor:
        return sample(loaded.model, loaded.process, shape=(len(seeds), *plan.shape), solver=plan.solver, steps=steps,
                              seed=list(seeds), batch_size=plan.batch_size, stats=stats, **solver_options)  # fmt: skip

    manifest = generate(folder, plan, integrate)
    if stats.nfe:
        manifest.nfe = stats.nfe
        write_manifest(folder, manifest)
    return manifest


def student_config(teacher: LoadedRun, pairs: Path, init: str, overrides: dict[str, Any]) -> TrainConfig:
    """The student's config: the teacher's training settings and backbone, rectified flow on
    the pairs, started from the teacher's weights when ``init`` says so; a student started from
    them keeps the teacher's process options (its prediction: what the weights output)."""
    saved = files.RunFiles(teacher.path, teacher.config).train_config()
    from_teacher = init == "teacher" or (init == "auto" and teacher.process.name == "rectified-flow")
    if from_teacher and teacher.process.name != "rectified-flow":
        raise GenflowError(f"--init teacher needs a rectified-flow teacher (its velocity is the student's start), not {teacher.process.name}")
    values = saved.to_dict() | {
        "process": "rectified-flow",
        "process_options": teacher.process.options() if from_teacher else {},
        "objective": "reflow",
        "pairs": str(pairs.resolve()),
        "init_from": str(teacher.path.resolve()) if from_teacher else None,
        "model": teacher.config["model"],
        "conditional": False,
        "random_flip": False,  # a pair fixes its image's noise: the teacher's flips are not the student's
        "steps_out": 1,
        "steps": saved.steps or TrainConfig.steps,  # an imported teacher trained no steps here
    }
    return capped_warmup(TrainConfig.from_dict(merge_values(values, overrides), source="genflow reflow").validate())


def reflow(
    teacher: str | Path,
    out: Path,
    pairs: int,
    solver: str = DEFAULT_SOLVER,
    steps: int | None = None,
    seed: int = 0,
    init: str = "auto",
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    batch_size: int | None = None,
    reporter: Reporter | None = None,
    **solver_options: float | str,
) -> Path:
    """Make ``pairs`` (noise, sample) pairs of ``teacher``'s ODE in ``out/pairs`` and train a
    rectified-flow student on them in ``out``; ``resume`` finishes the pairs, then the training.
    ``overrides`` are training config values (``steps``, ``batch_size``, ``lr``, ...)."""
    if init not in ("auto", "teacher", "scratch"):
        raise GenflowError(f"--init must be auto, teacher or scratch, not {init!r}")
    loaded, plan = planned_teacher(teacher, out, pairs, solver, steps, seed, batch_size, solver_options)
    student = student_config(loaded, out / PAIRS_FOLDER, init, overrides or {})
    return train_on_pairs(loaded, out, plan, student, overrides or {}, overwrite, resume, reporter or SilentReporter(), **solver_options)


def planned_teacher(
    teacher: str | Path, out: Path, pairs: int, solver: str, steps: int | None, seed: int, batch_size: int | None,
    solver_options: dict, process: str | None = None,
) -> tuple[LoadedRun, Manifest]:  # fmt: skip
    """The teacher loaded and checked (of ``process`` when given), and the plan of its ``pairs`` pairs."""
    if pairs < 1:
        raise GenflowError(f"--pairs must be >= 1, not {pairs}")
    loaded = load(teacher, device="auto")
    check_distinct(out, loaded.path)
    if process is not None and loaded.process.name != process:
        raise GenflowError(
            f"{loaded.path} is a {loaded.process.name} run; distillation starts a {process} student from a {process} "
            f"run's weights: reflow it first ('genflow reflow {teacher} --out RUN')"
        )
    check_teacher(loaded, solver, solver_options)
    return loaded, pair_plan(loaded, pairs, solver, steps, seed, batch_size)


def train_on_pairs(
    teacher: LoadedRun, out: Path, plan: Manifest, student: TrainConfig, overrides: dict[str, Any], overwrite: bool,
    resume: bool, reporter: Reporter, **solver_options: float | str,
) -> Path:  # fmt: skip
    """Make (or, with ``resume``, finish) the planned pairs of ``teacher`` in ``out/pairs``, then
    train ``student`` on them in ``out`` (or continue its training)."""
    if student.batch_size > plan.count:
        raise GenflowError(
            f"--pairs {plan.count} is fewer than the student's batch of {student.batch_size}; make more pairs or lower --batch-size"
        )
    if resume:
        check_same_pairs(out / PAIRS_FOLDER, plan)
        if (out / files.CONFIG).is_file():
            return resume_training(out, overrides, reporter)
    else:
        files.new_run_dir(out, "rectified-flow", overwrite)
        files.clear_run(out)
        shutil.rmtree(out / PAIRS_FOLDER, ignore_errors=True)  # --overwrite: another run's pairs go too
    manifest = make_pairs(teacher, out / PAIRS_FOLDER, plan, reporter, **solver_options)
    reporter.note(f"{manifest.count} pairs: {manifest.solver}, {manifest.steps} steps, NFE {manifest.nfe:g}, {manifest.seconds:.1f} s")
    return train(student, out, overwrite=True, reporter=reporter)


def check_same_pairs(folder: Path, plan: Manifest) -> None:
    """``--resume`` continues the pairs it started: the same teacher and settings."""
    if not folder.parent.is_dir():
        raise GenflowError(f"{folder.parent} does not exist; start it without --resume")
    check_plan(folder, plan)


def check_distinct(out: Path, source: Path) -> None:
    """A new run may not be written over the run it learns from."""
    if out.resolve() == source.resolve():
        raise GenflowError(f"--out {out} is the run it would learn from; choose another folder")


def distill(
    run: str | Path,
    out: Path,
    steps_out: int = 1,
    pairs: int = 10000,
    solver: str = DEFAULT_SOLVER,
    steps: int | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    batch_size: int | None = None,
    reporter: Reporter | None = None,
    **solver_options: float | str,
) -> Path:
    """Distill the rectified-flow ``run`` (a k-rectified flow: a reflow student, or a run trained
    on data) into a ``steps_out``-step student, from its weights, on ``pairs`` pairs of its own
    ODE made in ``out/pairs`` (Liu, Gong & Liu 2022, sec. 2.3: the k-rectified flow's own
    coupling, which its straighter paths make easy to distill); ``resume`` finishes the pairs,
    then the training."""
    loaded, plan = planned_teacher(run, out, pairs, solver, steps, seed, batch_size, solver_options, process="rectified-flow")
    student = distilled_config(loaded, out / PAIRS_FOLDER, steps_out, overrides or {})
    return train_on_pairs(loaded, out, plan, student, overrides or {}, overwrite, resume, reporter or SilentReporter(), **solver_options)


def distilled_config(run: LoadedRun, pairs: Path, steps_out: int, overrides: dict[str, Any]) -> TrainConfig:
    """A distilled student's config: the run's training settings, process options and backbone,
    objective ``distill`` on its own pairs, started from its weights."""
    saved = files.RunFiles(run.path, run.config).train_config()
    values = saved.to_dict() | {
        "objective": "distill",
        "steps_out": steps_out,
        "pairs": str(pairs.resolve()),
        "init_from": str(run.path.resolve()),
        "random_flip": False,  # a pair fixes its image's noise
        "steps": saved.steps or TrainConfig.steps,  # an imported run trained no steps here
    }
    return capped_warmup(TrainConfig.from_dict(merge_values(values, overrides), source="genflow distill").validate())


@torch.no_grad()
def straightness(
    model: Model, process: GaussianProcess, shape: Sequence[int], steps: int = 100, seed: int = 0, batch_size: int | None = None
) -> float:
    """``E int_0^1 ||(x_1 - x_0) - v(x_t, t)||^2 dt / D`` along ``steps`` uniform Euler steps of the
    probability-flow ODE from ``x_1`` (the prior noise of per-sample seeds ``seed + i``) to
    ``x_0`` (Liu et al. 2022, eq. 9; 0 for straight paths). With Euler steps, ``x_1 - x_0 =
    sum_k dt v_k``, so it is ``sum_k dt ||v_k||^2 - ||x_1 - x_0||^2``, accumulated per step."""
    n, sample_shape = shape[0], tuple(shape[1:])
    batch_size = batch_size or n
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    device = next(model.parameters()).device if isinstance(model, torch.nn.Module) else torch.device("cpu")
    total = 0.0
    for start in range(0, n, batch_size):
        seeds = range(seed + start, seed + min(n, start + batch_size))
        x1 = process.prior_std * NoiseSource(list(seeds), device)(sample_shape)
        wide = torch.float32 if device.type == "mps" else torch.float64  # mps has no float64
        bound, x, energy = BoundModel(model, process), x1.clone(), torch.zeros(len(seeds), dtype=wide, device=device)
        for t, s in zip(times[:-1].tolist(), times[1:].tolist(), strict=True):
            v = bound.velocity(x, t)
            energy += (t - s) * v.to(wide).flatten(1).pow(2).sum(1)
            x = x + (s - t) * v
        total += float((energy - (x1 - x).to(wide).flatten(1).pow(2).sum(1)).sum())
    return total / (n * int(torch.tensor(sample_shape).prod()))


def straightness_of_run(loaded: LoadedRun, n: int, steps: int = 100, seed: int = 0, batch_size: int | None = None) -> float:
    """:func:`straightness` of a loaded run's model with ``n`` trajectories."""
    config = loaded.model.config
    return straightness(loaded.model, loaded.process, (n, config.channels, config.resolution, config.resolution), steps, seed, batch_size)


__all__ = ["distill", "reflow", "straightness", "straightness_of_run"]
