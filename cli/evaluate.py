"""``genflow eval`` and ``genflow sweep``: sample quality against the real data, and against cost."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

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
    out_console,
    solver_flags,
    with_flags,
)
from genflow.errors import GenflowError, reports_errors
from genflow.lazy import lazy_import

api = lazy_import("genflow.api")  # torch and diffusers: imported when a command runs

PAPER_SAMPLES = 50_000  # genflow.eval.inception.PAPER_SAMPLES, spelled here to keep startup free of torch
MetricOption = Annotated[
    str | None,
    typer.Option(
        help="classifier: the digits classifier's scores (default for the digits); fid: FID and KID in Inception-v3 "
        "features (default with --inception-weights, or with $GENFLOW_INCEPTION_WEIGHTS for other data)."
    ),
]
InceptionWeightsOption = Annotated[
    Path | None,
    typer.Option(
        help="Inception-v3 FID weights file for --metric fid (default $GENFLOW_INCEPTION_WEIGHTS); genflow downloads "
        "nothing: get weights-inception-2015-12-05-6726825d.pth from torch-fidelity's releases once."
    ),
]


@app.command("eval")
@fails_cleanly
@with_flags(solver_flags(), into="solver_options")
def evaluate(
    run: RunArgument = None,
    solver: SolverOption = None,
    steps: Annotated[int | None, typer.Option(help="Solver steps.")] = None,
    grid: GridOption = None,
    n: Annotated[
        int | None,
        typer.Option(
            "--n",
            "--num-samples",
            "-n",
            help="Samples to score (classifier: default and most half the real data, or of each class; fid: default 50,000).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for samples and the real-data split.")] = 0,
    class_spec: ClassOption = None,
    guidance: GuidanceOption = 1.0,
    guidance_interval: GuidanceIntervalOption = None,
    batch_size: Annotated[int | None, typer.Option(help="Samples per network call.")] = None,
    device: DeviceOption = "auto",
    nll: Annotated[
        bool, typer.Option("--nll", help="Also the negative log-likelihood in bits/dim (probability-flow ODE).")
    ] = False,
    nll_n: Annotated[int, typer.Option(help="Real images for --nll.")] = 64,
    nll_steps: Annotated[int, typer.Option(help="Heun steps for --nll; 0 = adaptive dopri5.")] = 0,
    straightness: Annotated[
        bool, typer.Option("--straightness", help="Also the straightness of the ODE's paths (0: straight; Liu et al. 2022).")
    ] = False,
    straightness_steps: Annotated[int, typer.Option(help="Euler steps along each path for --straightness.")] = 100,
    samples: Annotated[Path | None, typer.Option(help="Score this .npz (uint8 NHWC, arr_0) instead of sampling a run.")] = None,
    dataset: Annotated[str, typer.Option(help="Real data for --samples: a dataset name or an image folder.")] = "digits",
    data_dir: Annotated[str | None, typer.Option(help="Where --dataset's files are (mnist, fashion-mnist, cifar10).")] = None,
    resolution: Annotated[int | None, typer.Option(help="Resize and center-crop --dataset's images to this square.")] = None,
    metric: MetricOption = None,
    inception_weights: InceptionWeightsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    solver_options: dict | None = None,
) -> None:
    """Score a run's samples: Frechet distance and KID beside their real-data floors (training
    images resampled) and fresh real images' scores, precision, recall, memorization, and
    optionally NLL in bits/dim. A conditional run's samples cover its classes (or --class)
    evenly at --guidance; they also get class agreement (the share the digits classifier calls
    by their class) and each class's FD against that class's real images beside its floor.
    With --samples, score an .npz of uint8 NHWC images (arr_0) made by any program instead.
    With --metric fid: FID and KID against all the real data in the standard Inception-v3
    features (torch-fidelity's network, from --inception-weights), 50,000 samples by default."""
    from genflow.solvers.guidance import FULL_INTERVAL, parse_interval

    check_counts(None if samples else n, nll_n if nll else None, nll_steps, straightness_steps)
    interval = parse_interval(guidance_interval) if guidance_interval else None  # checked before anything is loaded
    if samples is not None and (class_spec is not None or guidance != 1 or guidance_interval is not None):
        raise GenflowError("--class, --guidance and --guidance-interval sample a conditional run; --samples scores a file")
    if samples is None and (data_dir is not None or resolution is not None or dataset != "digits"):
        raise GenflowError("--dataset, --data-dir and --resolution name the real data for --samples; a run scores against its own")
    if samples is not None and straightness:
        raise GenflowError("--straightness follows a run's ODE; --samples scores a file of finished samples")
    if samples is not None:
        if not reports_errors():
            return  # a samples file is scored once, by the main process of a distributed launch
        scored = api.evaluate_samples_file(samples, dataset, seed, metric, inception_weights, device, data_dir, resolution)
        result = {"samples": str(samples), **scored}
        title = f"{samples} ({result['n']} samples, {dataset})"
    else:
        from genflow.runtime.launch import runtime_for

        runtime = runtime_for(device)  # under torchrun: one share of the samples per process
        loaded = api.load(run, str(runtime.device))
        times = interval.times(loaded.process) if interval else FULL_INTERVAL
        scores = api.evaluate_run(loaded, n, solver, steps, grid, seed, batch_size, class_spec, guidance, times, runtime=runtime,
                                  metric=metric, inception_weights=inception_weights, **(solver_options or {}))  # fmt: skip
        if scores is None:
            return  # another process's share, scored by the main process
        result = {"run": str(loaded.path), "process": loaded.process.name} | scores
        cost = describe_cost(result["solver"], result["steps"], result["grid"], result["nfe"])
        guided = f", guidance {result['guidance']:g}" if "guidance" in result else ""
        title = f"{loaded.describe()} ({loaded.process.name}, {result['solver']}, {cost}{guided})"
        if nll:
            result |= api.negative_log_likelihood(loaded, nll_n, seed, nll_steps)
        if straightness:
            from genflow.fewstep.reflow import STRAIGHTNESS_PATHS, straightness_of_run

            result["straightness"] = straightness_of_run(loaded, STRAIGHTNESS_PATHS, straightness_steps, seed, batch_size)
    if result.get("standard_weights") is False:
        from genflow.eval.inception import NONSTANDARD_NOTE

        print(f"genflow: note: {inception_weights or 'the Inception weights'} are {NONSTANDARD_NOTE}", file=sys.stderr)
    if as_json:
        print(json.dumps(result))
    elif result.get("metric") == "fid":
        print_fid(title, result)
    else:
        print_scores(title, result)
        if "fd_per_class" in result:
            print_scores_per_class(result)



def check_counts(n: int | None, nll_n: int | None, nll_steps: int, straightness_steps: int = 100) -> None:
    """Refuse counts the scores cannot use before a run is loaded or sampled (None: unused)."""
    from genflow.eval.metrics import check_sample_count

    if n is not None:
        check_sample_count(n, name="--n")
    if straightness_steps < 1:
        raise GenflowError(f"--straightness-steps must be >= 1, not {straightness_steps}")
    if nll_n is not None and (nll_n < 1 or nll_steps < 0):
        raise GenflowError("--nll-n must be >= 1 and --nll-steps >= 0")


def print_scores(title: str, result: dict) -> None:
    """The scores beside the floor (training images drawn with replacement: a perfect copy of the
    training set, unbeaten beyond noise) and fresh real images (outside the reference: where a
    model that generalizes perfectly lands), all against the same reference of real images."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("score", justify="right")
    table.add_column("floor: training\nimages resampled", justify="right")
    table.add_column("fresh real\nimages", justify="right")
    table.add_row("Frechet distance", f"{result['fd']:.3f}", f"{result['fd_floor']:.3f}", f"{result['fd_fresh']:.3f}")
    table.add_row("  its spread (1 sd)", "", f"{result['fd_spread']:.3f}", "")
    table.add_row("KID", f"{result['kid']:.4f}", f"{result['kid_floor']:.4f}", f"{result['kid_fresh']:.4f}")
    table.add_row("precision / recall", f"{result['precision']:.3f} / {result['recall']:.3f}", "", "")
    table.add_row("memorized", f"{result['memorized']:.3f}", "", "~0.01")
    if "straightness" in result:
        table.add_row("straightness", f"{result['straightness']:.4f}", "", "")
    if "class_agreement" in result:
        table.add_row("class agreement", f"{result['class_agreement']:.3f}", "", "")
        classes = len(result["fd_per_class"])
        means = (result[f"{key}_per_class_mean"] for key in ("fd", "fd_floor", "fd_fresh"))
        table.add_row(f"per-class FD (mean of {classes})", *(f"{value:.3f}" for value in means))
    add_nll_row(table, result, "", "")
    out_console.print(table)
    if result["fd_fresh"] - result["fd_floor"] < 2 * result["fd_spread"]:
        out_console.print(
            f"note: at n = {result['n']} the floor and the fresh score lie within twice the spread of one score "
            f"({2 * result['fd_spread']:.2f}), so they do not bracket a good model here, and FD differences below "
            "that are noise; raise --n (the most the data allows is the default)"
        )


def add_nll_row(table: Table, result: dict, *blanks: str) -> None:
    """The NLL row (``--nll``), when measured; ``blanks`` fill the table's other columns."""
    if "nll_bits_per_dim" in result:
        table.add_row("NLL (bits/dim)", f"{result['nll_bits_per_dim']:.3f}", *blanks)


def print_fid(title: str, result: dict) -> None:
    """FID and KID in Inception-v3 features beside the sample count (papers use 50,000 samples)."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("score", justify="right")
    table.add_column("samples")
    note = sample_note(result["n"])
    table.add_row("FID", f"{result['fid']:.3f}", note)
    table.add_row("KID", f"{result['kid']:.5f}", note)
    table.add_row("real images", str(result["reference_images"]), "")
    if "straightness" in result:
        table.add_row("straightness", f"{result['straightness']:.4f}", "")
    add_nll_row(table, result, "")
    out_console.print(table)


def sample_note(n: int) -> str:
    """``n=5000; papers use 50,000`` (just ``n=50000`` at the papers' count or above)."""
    return f"n={n}" if n >= PAPER_SAMPLES else f"n={n}; papers use {PAPER_SAMPLES:,}"


def print_scores_per_class(result: dict) -> None:
    """Class by class: the share of samples the classifier calls by their class, and FD against
    that class's real images beside the class's floor and fresh real images."""
    table = Table(title="per class")
    for column in ("class", "agreement", "FD", "floor", "fresh"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, fd in result["fd_per_class"].items():
        scores = (fd, result["fd_floor_per_class"][name], result["fd_fresh_per_class"][name])
        table.add_row(name, f"{result['class_agreement_per_class'][name]:.3f}", *(f"{value:.3f}" for value in scores))
    out_console.print(table)


@app.command()
@fails_cleanly
def sweep(
    runs: Annotated[list[str], typer.Argument(help="Run directories to compare.")],
    solvers: Annotated[str, typer.Option(help="Comma-separated solvers.")] = "euler,heun,dpm++2m",
    steps: Annotated[str, typer.Option(help="Comma-separated step counts.")] = "1,2,4,8,16,32",
    grid: Annotated[str | None, typer.Option(help="Time grid for every run.")] = None,
    guidance: Annotated[
        str, typer.Option(help="Comma-separated classifier-free guidance scales (conditional runs; 1: the conditional model).")
    ] = "1",
    n: Annotated[int | None, typer.Option("--n", "--num-samples", "-n", help="Samples per point (default: the most the data allows).")] = None,
    seed: Annotated[int, typer.Option(help="The same seeds for every point.")] = 0,
    device: DeviceOption = "auto",
    out: Annotated[Path, typer.Option(help="Directory for sweep.csv, sweep.jsonl and sweep.png.")] = Path("sweep"),
    overwrite: Annotated[bool, typer.Option(help="Replace existing sweep files in --out.")] = False,
    metric: MetricOption = None,
    inception_weights: InceptionWeightsOption = None,
) -> None:
    """Sample every run x solver x guidance x steps with the same seeds; write a table and a plot
    of Frechet distance against NFE with the real-data floor, and for conditional runs class
    agreement against NFE (guidance costs two network evaluations a step). Guidance other than
    1 is skipped for unconditional runs."""
    from genflow.eval.sweeps import parse_list, run_sweep
    from genflow.runtime.base import launched_distributed

    if launched_distributed():
        raise GenflowError("genflow sweep runs as one process; launch it without torchrun (eval and sample split across processes)")
    rows = run_sweep(runs, parse_list(solvers, str), parse_list(steps, int), grid, n, seed, device, out, overwrite,
                     progress=sys.stderr, guidances=parse_list(guidance, float), metric=metric, inception_weights=inception_weights)  # fmt: skip
    print(f"{len(rows)} points -> {out / 'sweep.csv'}, {out / 'sweep.jsonl'}, {out / 'sweep.png'}")
