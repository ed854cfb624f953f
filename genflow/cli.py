"""The ``genflow`` command: a thin Typer layer over :mod:`genflow.api`.

Exit codes: 0 ok, 1 unexpected runtime error, 2 usage or input error (one line naming the
fix, no traceback), 3 training diverged, 130 / 143 interrupted by SIGINT / SIGTERM (after
saving a checkpoint when training).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import genflow
from genflow import api
from genflow.config import resolve_config
from genflow.errors import GenflowError, TrainingStopped
from genflow.progress import reporter_for

app = typer.Typer(
    help="Train, sample and compare diffusion and flow models.", no_args_is_help=True, pretty_exceptions_enable=False
)
out_console = Console()


EXIT_INTERRUPTED = 130


def fails_cleanly(command):
    """One line on stderr instead of a traceback: a :class:`GenflowError` exits 2, a stopped
    training run its own code (3 diverged, 130/143 interrupted), a Ctrl-C outside training 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except GenflowError as error:
            print(f"genflow: error: {error}", file=sys.stderr)
            raise typer.Exit(2) from None
        except TrainingStopped as stopped:
            print(f"genflow: {stopped}", file=sys.stderr)
            raise typer.Exit(stopped.exit_code) from None
        except KeyboardInterrupt:
            print("genflow: interrupted", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


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


@app.command()
@fails_cleanly
def train(
    process: Annotated[str | None, typer.Option(help="Process: ddpm, ddim, sde, rectified-flow, cnf.")] = None,
    config: Annotated[str | None, typer.Option("--config", help="Preset name or TOML file; flags override it.")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="digits (embedded), mnist, fashion-mnist, cifar10, or an image folder.")
    ] = None,
    data_dir: Annotated[str | None, typer.Option(help="Where torchvision's dataset files are (never downloaded).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW, warm-up then cosine).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for weights, data order and noise.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps.")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32 or bf16 (autocast).")] = None,
    sample_every: Annotated[int | None, typer.Option(help="Write a sample grid every N steps (0: only at the end).")] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="Log the Frechet distance to metrics.jsonl every N steps (digits).")
    ] = None,
    schedule: Annotated[str | None, typer.Option(help="ddpm/ddim beta schedule: linear or cosine.")] = None,
    sde: Annotated[str | None, typer.Option(help="sde variant: vp, ve or subvp.")] = None,
    coupling: Annotated[str | None, typer.Option(help="cnf coupling: independent or ot.")] = None,
    time_sampling: Annotated[str | None, typer.Option(help="rectified-flow training times: uniform or logit-normal.")] = None,
    prediction: Annotated[str | None, typer.Option(help="Network output: eps, x0, v or velocity.")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Any other process option, key=value.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Save a checkpoint every N steps (0: only at the end).")] = None,
    keep_checkpoints: Annotated[int | None, typer.Option(help="How many of the newest checkpoints to keep.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<time>-<process>).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Allow --out to be an existing, non-empty directory.")] = False,
    resume: Annotated[
        Path | None, typer.Option(help="Continue this run from its newest valid checkpoint (--steps may raise its budget).")
    ] = None,
) -> None:
    """Train the shared UNet under a process (rectified flow on the embedded digits by default).
    Ctrl-C or SIGTERM saves a checkpoint and exits 130 or 143; --resume RUN continues it."""
    named = {
        "beta_schedule": schedule,
        "sde": sde,
        "coupling": coupling,
        "time_sampling": time_sampling,
        "prediction": prediction,
    }
    process_options = {k: v for k, v in named.items() if v is not None} | parse_assignments(option or [])
    overrides = {
        "dataset": dataset, "data_dir": data_dir, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "device": device, "precision": precision, "sample_every": sample_every, "eval_every": eval_every,
        "checkpoint_every": checkpoint_every, "keep_checkpoints": keep_checkpoints, "process_options": process_options,
    }  # fmt: skip
    if resume is not None:
        if config is not None or out is not None or overwrite:
            raise GenflowError("--resume continues a run in place with its own config; drop --config, --out and --overwrite")
        run_dir = api.resume(resume, overrides | {"process": process}, reporter_for())
        print(f"trained {run_dir} to step {api.read_run(run_dir).config['train']['steps']}")
        return
    resolved = resolve_config(config, process, overrides)
    run_dir = api.train(resolved, out, overwrite, reporter_for())
    print(f"trained {resolved.process} for {resolved.steps} steps -> {run_dir}")


@app.command()
@fails_cleanly
def sample(
    run: Annotated[str | None, typer.Argument(help="Run directory (default runs/latest).")] = None,
    solver: Annotated[str | None, typer.Option(help="Solver (default: the process's own).")] = None,
    steps: Annotated[int | None, typer.Option(help="Solver steps (default 20; adaptive solvers: 1).")] = None,
    grid: Annotated[str | None, typer.Option(help="Time grid: uniform, karras or logsnr.")] = None,
    n: Annotated[int, typer.Option("--n", help="Number of samples.")] = 64,
    seed: Annotated[int, typer.Option(help="Sample i uses seed + i, at any batch size.")] = 0,
    batch_size: Annotated[int | None, typer.Option(help="Samples per network call (never changes the samples).")] = None,
    out: Annotated[Path | None, typer.Option(help=".png grid, .npz uint8 NHWC array (arr_0), or a directory of PNGs.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    eta: Annotated[float | None, typer.Option(help="ddim/ancestral noise: 0 DDIM, 1 DDPM.")] = None,
    rtol: Annotated[float | None, typer.Option(help="dopri5 relative tolerance.")] = None,
    atol: Annotated[float | None, typer.Option(help="dopri5 absolute tolerance.")] = None,
    snr: Annotated[float | None, typer.Option(help="pc Langevin signal-to-noise ratio.")] = None,
    corrector_steps: Annotated[int | None, typer.Option(help="pc Langevin steps per time.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
) -> None:
    """Sample a trained run with any solver and write the samples."""
    options = solver_options_given(eta=eta, rtol=rtol, atol=atol, snr=snr, corrector_steps=corrector_steps)
    loaded = api.load(run, device)
    if out is not None:
        api.check_output(out, overwrite)  # before spending the sampling time
    images, stats = api.sample_run(loaded, n, solver, steps, grid, seed, batch_size, **options)
    if out is None:
        out = loaded.path / "samples" / f"{stats.solver}-{stats.grid}-{stats.steps}steps-n{n}-seed{seed}.png"
        overwrite = True  # a name derived from every input: the same file each time
    api.save_samples(images, out, overwrite)
    result = {
        "run": str(loaded.path), "process": loaded.process.name, "solver": stats.solver, "grid": stats.grid,
        "steps": stats.steps, "nfe": stats.nfe, "seconds": round(stats.seconds, 4), "n": n, "seed": seed, "out": str(out),
    }  # fmt: skip
    if as_json:
        print(json.dumps(result))
    else:
        print(
            f"{stats.solver} on {loaded.process.name}: {stats.steps} steps ({stats.grid}), NFE {stats.nfe:g}, {stats.seconds:.2f} s -> {out}"
        )


def solver_options_given(**given: float | None) -> dict[str, float]:
    return {k: v for k, v in given.items() if v is not None}


@app.command("eval")
@fails_cleanly
def evaluate(
    run: Annotated[str | None, typer.Argument(help="Run directory (default runs/latest).")] = None,
    solver: Annotated[str | None, typer.Option(help="Solver (default: the process's own).")] = None,
    steps: Annotated[int | None, typer.Option(help="Solver steps.")] = None,
    grid: Annotated[str | None, typer.Option(help="Time grid: uniform, karras or logsnr.")] = None,
    n: Annotated[int, typer.Option("--n", help="Samples to score (at most half the real data).")] = 898,
    seed: Annotated[int, typer.Option(help="Seed for samples and the real-data split.")] = 0,
    batch_size: Annotated[int | None, typer.Option(help="Samples per network call.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    eta: Annotated[float | None, typer.Option(help="ddim/ancestral noise.")] = None,
    nll: Annotated[
        bool, typer.Option("--nll", help="Also the negative log-likelihood in bits/dim (probability-flow ODE).")
    ] = False,
    nll_n: Annotated[int, typer.Option(help="Real images for --nll.")] = 64,
    nll_steps: Annotated[int, typer.Option(help="Heun steps for --nll; 0 = adaptive dopri5.")] = 0,
    samples: Annotated[Path | None, typer.Option(help="Score this .npz (uint8 NHWC, arr_0) instead of sampling a run.")] = None,
    dataset: Annotated[str, typer.Option(help="Real data for --samples.")] = "digits",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Score a run's samples: Frechet distance and KID beside their real-data floors,
    precision, recall, memorization, and optionally NLL in bits/dim. With --samples, score
    an .npz of uint8 NHWC images (arr_0) made by any program instead."""
    if samples is not None:
        result = {"samples": str(samples), **api.evaluate_samples_file(samples, dataset, seed)}
        title = f"{samples} ({result['n']} samples, {dataset})"
    else:
        loaded = api.load(run, device)
        result = {"run": str(loaded.path), "process": loaded.process.name}
        result |= api.evaluate_run(loaded, n, solver, steps, grid, seed, batch_size, **solver_options_given(eta=eta))
        title = f"{loaded.path} ({loaded.process.name}, {result['solver']}, {result['steps']} steps, NFE {result['nfe']:g})"
        if nll:
            if nll_n < 1 or nll_steps < 0:
                raise GenflowError("--nll-n must be >= 1 and --nll-steps >= 0")
            result |= api.negative_log_likelihood(loaded, nll_n, seed, nll_steps)
    if as_json:
        print(json.dumps(result))
    else:
        print_scores(title, result)


def print_scores(title: str, result: dict) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("score", justify="right")
    table.add_column("real-data floor", justify="right")
    table.add_row("Frechet distance", f"{result['fd']:.3f}", f"{result['fd_floor']:.3f}")
    table.add_row("KID", f"{result['kid']:.4f}", f"{result['kid_floor']:.4f}")
    table.add_row("precision / recall", f"{result['precision']:.3f} / {result['recall']:.3f}", "")
    table.add_row("memorized", f"{result['memorized']:.3f}", "~0.01")
    if "nll_bits_per_dim" in result:
        table.add_row("NLL (bits/dim)", f"{result['nll_bits_per_dim']:.3f}", "")
    out_console.print(table)


@app.command()
@fails_cleanly
def sweep(
    runs: Annotated[list[str], typer.Argument(help="Run directories to compare.")],
    solvers: Annotated[str, typer.Option(help="Comma-separated solvers.")] = "euler,heun,dpm++2m",
    steps: Annotated[str, typer.Option(help="Comma-separated step counts.")] = "1,2,4,8,16,32",
    grid: Annotated[str | None, typer.Option(help="Time grid for every run.")] = None,
    n: Annotated[int, typer.Option("--n", help="Samples per point.")] = 898,
    seed: Annotated[int, typer.Option(help="The same seeds for every point.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    out: Annotated[Path, typer.Option(help="Directory for sweep.csv, sweep.jsonl and sweep.png.")] = Path("sweep"),
    overwrite: Annotated[bool, typer.Option(help="Replace existing sweep files in --out.")] = False,
) -> None:
    """Sample every run x solver x steps with the same seeds; write a table and a plot of
    Frechet distance against NFE with the real-data floor."""
    from genflow.sweeps import parse_list, run_sweep

    rows = run_sweep(
        runs, parse_list(solvers, str), parse_list(steps, int), grid, n, seed, device, out, overwrite, progress=sys.stderr
    )
    print(f"{len(rows)} points -> {out / 'sweep.csv'}, {out / 'sweep.jsonl'}, {out / 'sweep.png'}")


@app.command("list")
def list_components() -> None:
    """List processes, solvers and time grids."""
    for title, rows in (
        ("processes", [(name, cls.summary) for name, cls in genflow.PROCESSES.items()]),
        ("solvers", [(name, spec.summary) for name, spec in genflow.SOLVERS.items()]),
        ("grids", [(name, summary) for name, (_, summary) in genflow.GRIDS.items()]),
    ):
        table = Table(title=title, show_header=False, title_justify="left")
        for name, summary in rows:
            table.add_row(name, summary)
        out_console.print(table)


@app.command()
@fails_cleanly
def info(run: Annotated[str | None, typer.Argument(help="Run directory (default runs/latest).")] = None) -> None:
    """Show a run's process, model, training config and last logged loss."""
    loaded = api.load(run, device="cpu")
    train_config = loaded.config["train"]
    parameters = sum(p.numel() for p in loaded.model.parameters())
    table = Table(title=str(loaded.path), show_header=False, title_justify="left")
    table.add_row("process", escape(f"{loaded.process.name} {json.dumps(loaded.process.options())}"))
    table.add_row("default solver", loaded.process.default_solver)
    table.add_row("model", escape(f"{parameters / 1e6:.2f}M parameters, {json.dumps(loaded.config['model'])}"))
    table.add_row("data", f"{train_config['dataset']}")
    for key in ("steps", "batch_size", "lr", "ema_decay", "seed"):
        table.add_row(key, str(train_config[key]))
    metrics = loaded.path / "metrics.jsonl"
    losses = [json.loads(line) for line in metrics.read_text().splitlines() if '"loss"' in line] if metrics.is_file() else []
    if losses:
        last = losses[-1]
        table.add_row("last logged", f"step {last['step']}, loss {last['loss']:.4f}, {last['seconds']:.0f} s")
    table.add_row("checkpoint", escape(api.checkpoint_status(loaded.path, train_config["steps"])))
    out_console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
