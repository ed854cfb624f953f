"""The Typer app, the one-line error handling every command shares, and flags derived from the
registries (one per process option, one per solver option), so that a new option needs no
edit here."""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import Console

import genflow
from genflow.config import check_device_name
from genflow.errors import GenflowError, SharedError, TrainingStopped, reports_errors
from genflow.nn.backbones import BACKBONES
from genflow.runs.location import run_folder
from genflow.values import MAX_SAMPLES, check_count, check_seed

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

app = typer.Typer(
    help="Train, sample and compare diffusion and flow models.", no_args_is_help=True, pretty_exceptions_enable=False
)
out_console = Console()


def whole_number(flag: str, limit: int | None = None) -> Callable[[object], object]:
    """A check that a count given as a whole number is from 1 to ``limit`` (a comma-separated
    list is its command's to parse)."""
    return lambda value: check_count(flag, value, limit) if isinstance(value, int) else None


ARGUMENT_CHECKS: dict[str, Callable[[Any], object]] = {
    "steps": whole_number("--steps"),
    "n": whole_number("--n", MAX_SAMPLES),
    "batch_size": whole_number("--batch-size"),
    "seed": lambda seed: check_seed(seed, name="--seed"),
    "solver": genflow.SOLVERS.get,
    "grid": genflow.GRIDS.get,
    "device": check_device_name,
    "backbone": BACKBONES.get,
}
"""The arguments several commands share, checked by name before a command runs: an argument
error answers before torch is imported (seconds), for every command alike. The library checks
the same values again where they are used (``genflow.values``, the registries, ``pick_device``)."""
RUN_ARGUMENTS = ("run", "teacher")
"""A command's run argument (``None``: ``runs/latest``), checked to be a run before it runs (and
sweep's ``runs``)."""


def check_arguments(values: dict[str, Any]) -> None:
    for name, check in ARGUMENT_CHECKS.items():
        if values.get(name) is not None:
            check(values[name])
    for name in RUN_ARGUMENTS:
        if name in values and not values.get("samples"):  # eval --samples scores a file, no run
            run_folder(values[name])
    for run in values.get("runs") or ():  # sweep
        run_folder(run)


def fails_cleanly(command: Callable) -> Callable:
    """One line on stderr instead of a traceback: a :class:`GenflowError` exits 2, a stopped
    training run its own code (3 diverged, 130/143 interrupted), a Ctrl-C outside training 130.
    The shared arguments are checked first (:data:`ARGUMENT_CHECKS`)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            check_arguments(kwargs)
            return command(*args, **kwargs)
        except SharedError:
            let_the_main_process_report()
            raise typer.Exit(EXIT_USAGE) from None
        except GenflowError as error:
            print(f"genflow{rank_tag()}: error: {error}", file=sys.stderr)
            raise typer.Exit(EXIT_USAGE) from None
        except TrainingStopped as stopped:
            if reports_errors():  # every process stops alike, on the same step
                print(f"genflow: {stopped}", file=sys.stderr)
            else:
                let_the_main_process_report()
            raise typer.Exit(stopped.exit_code) from None
        except KeyboardInterrupt:
            print("genflow: interrupted", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


REPORT_GRACE_SECONDS = 3.0
"""How long another process of a distributed run waits before exiting with an error that the
main process reports: a launcher stops every process as soon as one exits with an error."""


def let_the_main_process_report() -> None:
    import time

    time.sleep(REPORT_GRACE_SECONDS)


def rank_tag() -> str:
    """`` [rank N]`` in the messages of a distributed run's other processes, else nothing."""
    return "" if reports_errors() else f" [rank {os.environ['RANK']}]"


def say(text: str) -> None:
    """Print a command's result line, once per run: in the main process of a distributed launch."""
    if reports_errors():
        print(text)


def show_version(value: bool) -> None:
    if value:
        print(f"genflow {genflow.__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool | None, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    """Train, sample and compare diffusion and flow models."""


def parse_assignments(assignments: list[str]) -> dict[str, object]:
    """``key=value`` pairs; values parse as TOML scalars (numbers, true/false, strings)."""
    import tomllib

    parsed: dict[str, object] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GenflowError(f"--option takes key=value, not {item!r}")
        try:
            parsed[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed[key.strip()] = value
    return parsed


# --- flags derived from the registries ------------------------------------------------
@dataclass(frozen=True)
class DerivedFlag:
    """A command-line flag for an option some registry entries take."""

    name: str
    kind: type
    help: str
    aliases: tuple[str, ...] = ()

    def parameter(self) -> inspect.Parameter:
        decls = (f"--{self.name.replace('_', '-')}", *self.aliases)
        option = typer.Option(*decls, help=self.help, show_default=False)
        return inspect.Parameter(
            self.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[self.kind | None, option]
        )


def merged_flags(
    entries: list[tuple[str, str, Any, str]], aliases: dict[str, tuple[str, ...]] | None = None
) -> list[DerivedFlag]:
    """One flag per option name from ``(owner, option, default, help)`` rows; an option several
    owners share gets one flag whose help names each owner (and its default)."""
    by_name: dict[str, list[tuple[str, Any, str]]] = {}
    for owner, name, default, help in entries:
        by_name.setdefault(name, []).append((owner, default, help))
    flags = []
    for name, uses in by_name.items():
        kinds = {type(default) for _, default, _ in uses}
        if kinds == {int, float}:
            kinds = {float}
        if len(kinds) > 1:
            raise TypeError(f"option {name!r} has defaults of several types ({uses}); give it one type in every registry entry")
        kind = kinds.pop()
        helps = {}
        for owner, default, help in uses:
            helps.setdefault(
                f"{help} (default {default:g})" if isinstance(default, float) else f"{help} (default {default})", []
            ).append(owner)
        text = "; ".join(f"{'/'.join(owners)}: {help}" for help, owners in helps.items()) + "."
        flags.append(DerivedFlag(name, kind, text, (aliases or {}).get(name, ())))
    return flags


GRID_HELP = f"Time grid: {', '.join(genflow.GRIDS.names())}."

# Arguments several commands share, spelled once.
RunArgument = Annotated[str | None, typer.Argument(help="Run directory (default runs/latest).")]
SolverOption = Annotated[str | None, typer.Option(help="Solver (default: the process's own).")]
GridOption = Annotated[str | None, typer.Option(help=GRID_HELP)]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]
ClassOption = Annotated[
    str | None,
    typer.Option("--class", help="Conditional runs: classes to sample, by name or index (3, 0,1,2 or all: one row per class)."),
]
GuidanceOption = Annotated[
    float,
    typer.Option(help="Classifier-free guidance S: uncond + S (cond - uncond); 1 the conditional model, 0 unconditional."),
]
GuidanceIntervalOption = Annotated[
    str | None,
    typer.Option(
        help="Guide only for process times t in LO,HI (e.g. 0.1,0.8), or for noise levels sigma/alpha in sigma=LO,HI "
        "(e.g. sigma=0.28,5.42, the same noise for every process); the conditional model elsewhere."
    ),
]


def describe_cost(solver: str, steps: int, grid: str, nfe: float) -> str:
    """``20 steps (uniform), NFE 39``; an adaptive solver's steps are its own."""
    return f"{genflow.SOLVERS.get(solver).describe_steps(steps, grid)}, NFE {nfe:g}"


def process_flags() -> list[DerivedFlag]:
    """One flag per process option (``--schedule`` also names ``--beta-schedule``, as it always has)."""
    rows = [
        (name, f.name, f.default, f.metadata.get("help", f.name))
        for name, cls in genflow.PROCESSES.items()
        for f in cls.option_fields()
    ]
    return merged_flags(rows, aliases={"beta_schedule": ("--schedule",)})


def solver_flags() -> list[DerivedFlag]:
    rows = [
        (name, option, spec.default, spec.help)
        for name, solver in genflow.SOLVERS.items()
        for option, spec in solver.options.items()
    ]
    return merged_flags(rows)


def with_flags(flags: list[DerivedFlag], into: str) -> Callable[[Callable], Callable]:
    """Give a command one keyword flag per entry of ``flags``; the values given (not ``None``)
    reach it as one dict, the keyword ``into``."""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.name != into]
        names = [flag.name for flag in flags]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            given = {name: kwargs.pop(name) for name in names if name in kwargs}
            return command(*args, **kwargs, **{into: {k: v for k, v in given.items() if v is not None}})

        wrapper.__signature__ = signature.replace(parameters=kept + [flag.parameter() for flag in flags])
        return wrapper

    return decorate
