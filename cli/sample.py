"""``genflow sample``: samples of a trained run with any solver, written as a grid, an array or PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from genflow.cli.core import (
    ClassOption,
    DeviceOption,
    GridOption,
    GuidanceIntervalOption,
    GuidanceOption,
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
    n: Annotated[
        int | None, typer.Option("--n", "--num-samples", "-n", help="Number of samples; per class with --class (default 64; 8 each for several classes); under torchrun spell it --num-samples.")
    ] = None,
    classes: ClassOption = None,
    guidance: GuidanceOption = 1.0,
    guidance_interval: GuidanceIntervalOption = None,
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
    apply to the solvers named in their help. A conditional run samples the classes given with
    --class (one grid row per class, the same seeds in every row), guided with --guidance."""
    from genflow.runtime.launch import runtime_for
    from genflow.solvers.guidance import FULL_INTERVAL, parse_interval

    api.check_scale(scale)
    spec = parse_interval(guidance_interval) if guidance_interval else None
    runtime = runtime_for(device)  # under torchrun: one share of the samples per process
    loaded = api.load(run, str(runtime.device))
    interval = spec.times(loaded.process) if spec else FULL_INTERVAL
    request = api.ClassRequest.of(loaded, classes, n, seed)
    api.check_conditioning(loaded, request.labels, guidance, interval)
    if out is not None:
        api.check_output(out, overwrite)  # before spending the sampling time
    images, stats = api.sample_run(loaded, request.n, solver, steps, grid, request.seeds, batch_size, request.labels,
                                   guidance, interval, runtime, **(solver_options or {}))  # fmt: skip
    if images is None:
        return  # another process's share, gathered and written by the main process
    if out is None:
        out = api.samples_folder(loaded) / default_name(stats, request.n, seed, classes, guidance, guidance_interval)
        overwrite = True  # a name derived from every input: the same file each time
    api.save_samples(images, out, overwrite, scale, columns=request.columns)
    result = {
        "run": str(loaded.path), "checkpoint_step": loaded.checkpoint_step, "process": loaded.process.name, "solver": stats.solver, "grid": stats.grid,
        "steps": stats.steps, "nfe": stats.nfe, "seconds": round(stats.seconds, 4), "n": request.n, "seed": seed, "out": str(out),
    }  # fmt: skip
    if loaded.classes is not None:
        labels = request.labels
        result |= {"classes": None if labels is None else [loaded.classes[k] for k in dict.fromkeys(labels)],
                   "guidance": guidance, "guidance_interval": list(interval)}  # fmt: skip
    if as_json:
        print(json.dumps(result))
        return
    what = request.describe(loaded, guidance)
    cost = describe_cost(stats.solver, stats.steps, stats.grid, stats.nfe)
    print(f"{loaded.describe()}: {stats.solver} on {loaded.process.name}{', ' + what if what else ''}, {cost}, {stats.seconds:.2f} s -> {out}")


def default_name(stats, n: int, seed: int, classes: str | None, guidance: float, interval: str | None) -> str:
    """The file name of samples written without --out, derived from every input that changes them."""
    name = f"{stats.solver}-{stats.grid}-{stats.steps}steps-n{n}-seed{seed}"
    if classes is not None:
        name += f"-class{classes.replace(',', '-').replace('/', '_')}-guidance{guidance:g}"
        name += f"-interval{interval.replace(',', '-')}" if interval else ""
    return name + ".png"
