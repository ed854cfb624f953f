"""``genflow reflow`` and ``genflow distill``: few-step students of any run with a
probability-flow ODE (Liu, Gong & Liu 2022)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genflow.cli.core import app, fails_cleanly, parse_assignments, say
from genflow.lazy import lazy_import

reflow_module = lazy_import("genflow.fewstep.reflow")  # torch and diffusers: imported when a command runs

TrainStepsOption = Annotated[int | None, typer.Option(help="Training steps of the student (default: the teacher's).")]
BatchSizeOption = Annotated[int | None, typer.Option(help="Training batch size (default: the teacher's).")]
LrOption = Annotated[float | None, typer.Option(help="Learning rate (default: the teacher's).")]
AssignOption = Annotated[list[str] | None, typer.Option("--option", "-o", help="Any training config key as key=value.")]
OverwriteOption = Annotated[bool, typer.Option(help="Allow --out to be an existing, non-empty directory.")]


def training_overrides(train_steps: int | None, batch_size: int | None, lr: float | None, option: list[str] | None) -> dict:
    """The student's training settings given on the command line."""
    flags = {"steps": train_steps, "batch_size": batch_size, "lr": lr}
    return parse_assignments(option or []) | {k: v for k, v in flags.items() if v is not None}


def refuse_launcher(command: str) -> None:
    """Pairs are made in one process: refuse a distributed launch of ``command``."""
    from genflow.errors import GenflowError
    from genflow.runtime.base import launched_distributed

    if launched_distributed():
        raise GenflowError(
            f"genflow {command} makes its pairs in one process; run it without a launcher (the student's training, stopped "
            "with Ctrl-C, continues on every process with: torchrun ... -m genflow train --resume OUT)"
        )


@app.command()
@fails_cleanly
def reflow(
    teacher: Annotated[str, typer.Argument(help="The teacher run (any process; its probability-flow ODE is integrated).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="The new run: its pairs, then the rectified-flow student trained on them.", show_default=False)],
    pairs: Annotated[int, typer.Option(help="How many (noise, sample) pairs to make.")] = 10000,
    solver: Annotated[str, typer.Option(help="ODE solver of the teacher for the pairs.")] = "dpm++2m",
    steps: Annotated[int | None, typer.Option(help="Solver steps per pair (default 40; adaptive solvers pick their own).")] = None,
    seed: Annotated[int, typer.Option(help="Pair i starts from the noise of seed + i.")] = 0,
    init: Annotated[str, typer.Option(help="Start the student from the teacher's weights (teacher), from scratch, or auto: the teacher's when it is rectified flow.")] = "auto",
    train_steps: TrainStepsOption = None,
    batch_size: BatchSizeOption = None,
    lr: LrOption = None,
    option: AssignOption = None,
    sample_batch_size: Annotated[int | None, typer.Option(help="Pairs per teacher call (default: a whole shard).")] = None,
    resume: Annotated[bool, typer.Option(help="Finish the pairs of --out (redoing a corrupt shard), then its training.")] = False,
    overwrite: OverwriteOption = False,
) -> None:
    """Make (noise, sample) pairs of a teacher's ODE and train a rectified-flow student on them
    (reflow: straighter paths, so fewer steps). A kill loses at most the shard in flight; --resume continues."""
    from genflow.progress import reporter_for

    refuse_launcher("reflow")
    overrides = training_overrides(train_steps, batch_size, lr, option)
    run_dir = reflow_module.reflow(teacher, out, pairs, solver, steps, seed, init, overrides, overwrite, resume, sample_batch_size, reporter_for())
    say(f"reflowed {teacher} -> {run_dir} (pairs in {run_dir / 'pairs'})")


@app.command()
@fails_cleanly
def distill(
    run: Annotated[str, typer.Argument(help="A rectified-flow run: a reflow student, or a run trained on data.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="The new run: the pairs of RUN's ODE, then the student trained on them.", show_default=False)],
    steps_out: Annotated[int, typer.Option(help="Euler steps the student samples in.")] = 1,
    pairs: Annotated[int, typer.Option(help="How many (noise, sample) pairs of RUN's ODE to make.")] = 10000,
    solver: Annotated[str, typer.Option(help="ODE solver of RUN for the pairs.")] = "dpm++2m",
    steps: Annotated[int | None, typer.Option(help="Solver steps per pair (default 40; adaptive solvers pick their own).")] = None,
    seed: Annotated[int, typer.Option(help="Pair i starts from the noise of seed + i.")] = 0,
    train_steps: TrainStepsOption = None,
    batch_size: BatchSizeOption = None,
    lr: LrOption = None,
    option: AssignOption = None,
    sample_batch_size: Annotated[int | None, typer.Option(help="Pairs per call of RUN (default: a whole shard).")] = None,
    resume: Annotated[bool, typer.Option(help="Finish the pairs of --out (redoing a corrupt shard), then its training.")] = False,
    overwrite: OverwriteOption = False,
) -> None:
    """Distill a rectified-flow run into a student that samples in --steps-out Euler steps,
    trained on pairs of the run's own ODE from its weights (Liu et al. 2022, sec. 2.3); sample it
    with 'genflow sample OUT --solver euler --steps K'."""
    from genflow.progress import reporter_for

    refuse_launcher("distill")
    overrides = training_overrides(train_steps, batch_size, lr, option)
    run_dir = reflow_module.distill(run, out, steps_out, pairs, solver, steps, seed, overrides, overwrite, resume, sample_batch_size,
                                    reporter_for())  # fmt: skip
    say(f"distilled {run} -> {run_dir}; sample it with: genflow sample {run_dir} --solver euler --steps {steps_out}")
