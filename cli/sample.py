"""``genflow sample``: samples of a trained run with any solver, written as a grid, an array or PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from genflow.cli.core import (
    DeviceOption,
    GridOption,
    RunArgument,
    SolverOption,
    app,
    describe_cost,
    fails_cleanly,
    solver_flags,
    with_flags,
)
from genflow.lazy import lazy_import

api = lazy_import("genflow.api")  # torch and diffusers: imported when a command runs


@app.command()
@fails_cleanly
@with_flags(solver_flags(), into="solver_options")
def sample(
    run: RunArgument = None,
    solver: SolverOption = None,
    steps: Annotated[int | None, typer.Option(help="Solver steps (default 20; adaptive solvers: 1).")] = None,
    grid: GridOption = None,
    n: Annotated[int, typer.Option("--n", help="Number of samples.")] = 64,
    seed: Annotated[int, typer.Option(help="Sample i uses seed + i, at any batch size.")] = 0,
    batch_size: Annotated[int | None, typer.Option(help="Samples per network call (never changes the samples).")] = None,
    out: Annotated[Path | None, typer.Option(help=".png grid, .npz uint8 NHWC array (arr_0), or a directory of PNGs.")] = None,
    device: DeviceOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
    scale: Annotated[
        int | None,
        typer.Option(help="Upscale each image N times in a .png grid (nearest neighbour; default: tiles of at least 32 px)."),
    ] = None,
    solver_options: dict | None = None,
) -> None:
    """Sample a trained run with any solver and write the samples. Solver options (below)
    apply to the solvers named in their help."""
    api.check_scale(scale)
    loaded = api.load(run, device)
    if out is not None:
        api.check_output(out, overwrite)  # before spending the sampling time
    images, stats = api.sample_run(loaded, n, solver, steps, grid, seed, batch_size, **(solver_options or {}))
    if out is None:
        out = api.samples_folder(loaded) / f"{stats.solver}-{stats.grid}-{stats.steps}steps-n{n}-seed{seed}.png"
        overwrite = True  # a name derived from every input: the same file each time
    api.save_samples(images, out, overwrite, scale)
    result = {
        "run": str(loaded.path), "checkpoint_step": loaded.checkpoint_step, "process": loaded.process.name, "solver": stats.solver, "grid": stats.grid,
        "steps": stats.steps, "nfe": stats.nfe, "seconds": round(stats.seconds, 4), "n": n, "seed": seed, "out": str(out),
    }  # fmt: skip
    if as_json:
        print(json.dumps(result))
    else:
        print(f"{loaded.describe()}: {stats.solver} on {loaded.process.name}, {describe_cost(stats.solver, stats.steps, stats.grid, stats.nfe)}, {stats.seconds:.2f} s -> {out}")
