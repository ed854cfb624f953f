"""Quality against cost: every run x solver x guidance x steps with the same seeds, as a table
and a plot; guidance (and class agreement) only for class-conditional runs."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

from genflow.errors import GenflowError, IncompatibleError
from genflow.eval.scoring import evaluate_run
from genflow.runs.loaded import LoadedRun, load
from genflow.solvers import SOLVERS
from genflow.solvers.guidance import check_guidance

if TYPE_CHECKING:
    from matplotlib.axes import Axes

T = TypeVar("T")
COLUMNS = ("run", "process", "solver", "grid", "steps", "nfe", "seconds", "fd", "fd_floor", "kid", "kid_floor", "precision", "recall",
           "fid", "guidance", "class_agreement")  # fmt: skip
"""``fd`` ... ``recall`` in the digits classifier's features; ``fid`` (and ``kid``) in Inception-v3 features."""


def parse_list(text: str, kind: Callable[[str], T]) -> list[T]:
    """``"1,2,4"`` -> ``[1, 2, 4]``; a malformed entry is a usage error."""
    try:
        values = [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise GenflowError(f"cannot read {text!r} as a comma-separated list") from None
    if not values:
        raise GenflowError("an empty list was given")
    return values


def run_sweep(runs: list[str], solvers: list[str], steps: list[int], grid: str | None, n: int | None, seed: int, device: str,
              out: Path, overwrite: bool, progress: TextIO | None = None, guidances: Sequence[float] = (1.0,),
              metric: str | None = None, inception_weights: str | Path | None = None) -> list[dict]:  # fmt: skip
    """Evaluate every combination (``n`` None: the most the data allows, per run) with ``metric``
    (:func:`genflow.eval.scoring.choose_metric`: the digits classifier, or FID with Inception
    weights); solvers a process cannot use, and guidance other than 1 for an unconditional run,
    are reported and skipped."""
    targets = [out / name for name in ("sweep.csv", "sweep.jsonl", "sweep.png")]
    if any(t.exists() for t in targets) and not overwrite:
        raise GenflowError(f"{out} already holds a sweep; choose another --out or pass --overwrite")
    for guidance in guidances:
        check_guidance(guidance)
    for solver in solvers:
        SOLVERS.get(solver)  # a misspelt name is refused before any run is sampled
    loaded_runs = [load(run, device) for run in runs]  # every run validated before any work
    rows = []
    for loaded in loaded_runs:
        usable = usable_guidances(loaded, guidances, progress)
        for solver in solvers:
            scoring = {"metric": metric, "inception_weights": inception_weights}
            rows += sweep_solver(loaded, solver, usable, steps, grid, n, seed, progress, scoring)
    write_table(rows, out)
    plot(rows, out / "sweep.png")
    return rows


def usable_guidances(loaded: LoadedRun, guidances: Sequence[float], progress: TextIO | None) -> list[float]:
    """The guidance scales a run can sample: all for a conditional run, only 1 for an
    unconditional one (the others reported as skipped)."""
    if loaded.classes is not None:
        return list(guidances)
    skipped = [g for g in guidances if g != 1]
    if skipped:
        note(progress, f"skipped {loaded.path} / guidance {', '.join(f'{g:g}' for g in skipped)}: the run is unconditional")
    return [1.0] if len(skipped) < len(guidances) else []


def sweep_solver(loaded: LoadedRun, solver: str, guidances: Sequence[float], steps: list[int], grid: str | None,
                 n: int | None, seed: int, progress: TextIO | None, scoring: dict | None = None) -> list[dict]:  # fmt: skip
    """The rows of one run and solver at every guidance and step count; none, with a note, when
    the run's process cannot use the solver. An adaptive solver runs once, at its own steps."""
    counts = dict.fromkeys(SOLVERS.get(solver).fixed_steps(k) for k in steps)
    rows = []
    for guidance in guidances:
        for count in counts:
            try:
                result = evaluate_run(loaded, n, solver, count, grid, seed, guidance=guidance, **(scoring or {}))
            except IncompatibleError as error:
                note(progress, f"skipped {loaded.path} / {solver}: {error}")
                return []
            row = {"run": str(loaded.path), "process": loaded.process.name, **result, "guidance": guidance}
            rows.append({k: row.get(k) for k in COLUMNS})
            note(progress, describe_point(rows[-1], count))
    return rows


def describe_point(row: dict, steps: int | None) -> str:
    """One progress line: the point (``steps`` None: an adaptive solver) and its scores."""
    guided = "" if row["class_agreement"] is None else f" guidance={row['guidance']:g}"
    agreement = "" if row["class_agreement"] is None else f" agreement={row['class_agreement']:.3f}"
    score = f"FID={row['fid']:.3f}" if row["fid"] is not None else f"FD={row['fd']:.3f} (floor {row['fd_floor']:.3f})"
    return f"{row['run']} {row['solver']}{guided} steps={steps or 'adaptive'} NFE={row['nfe']:g} {score}{agreement}"


def note(stream: TextIO | None, message: str) -> None:
    if stream is not None:
        print(message, file=stream, flush=True)


def write_table(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "sweep.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "sweep.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def plot(rows: list[dict], path: Path) -> None:
    """Frechet distance against NFE on log axes, one line per run x solver x guidance, the floor
    dashed; beside it, where a run is conditional, class agreement against NFE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditional = [r for r in rows if r["class_agreement"] is not None]
    figure, panels = plt.subplots(1, 2 if conditional else 1, figsize=(12 if conditional else 7, 4.5), squeeze=False)
    fd_axes = panels[0][0]
    inception = bool(rows) and rows[0]["fid"] is not None
    style = line_styles(rows)
    draw_lines(fd_axes, rows, "fid" if inception else "fd", style)
    if rows and not inception:
        fd_axes.axhline(rows[0]["fd_floor"], color="black", linewidth=0.8, linestyle=(0, (8, 4)), label="floor (training images resampled)")
    label = "FID (Inception-v3 features)" if inception else "Frechet distance (classifier features)"
    fd_axes.set(xscale="log", yscale="log", xlabel="NFE", ylabel=label)
    fd_axes.legend(fontsize=7)
    if conditional:
        draw_lines(panels[0][1], conditional, "class_agreement", style)
        panels[0][1].set(xscale="log", ylim=(0, 1.02), xlabel="NFE", ylabel="class agreement (classifier calls the class)")
    for axes in panels[0]:
        plain_log_labels(axes, sorted({r["nfe"] for r in rows}))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plain_log_labels(axes, nfes: list[float]) -> None:
    """Numbers as numbers on log axes (``20``, not ``2x10^1``): NFE ticks at the NFEs swept, and on
    a log y axis plain labels, the minor ones only where the axis spans less than a decade."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axes.xaxis.set_major_locator(FixedLocator(nfes))
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(NullFormatter())
    if axes.get_yscale() == "log":
        low, high = axes.get_ylim()
        axes.yaxis.set_major_formatter(plain)
        axes.yaxis.set_minor_formatter(plain if high / low < 10 else NullFormatter())


RUN_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
GUIDANCE_MARKERS = "osD^v<>p*h"


def line_styles(rows: list[dict]) -> Callable[[str, str, float], dict]:
    """One look per line, the same in every panel: the colour is the solver's (its place in the
    solver registry, so the same in every sweep), the line style the run's, the marker the
    guidance scale's."""
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    runs = list(dict.fromkeys(r["run"] for r in rows))
    guidances = sorted({r["guidance"] for r in rows})
    solvers = SOLVERS.names()
    return lambda run, solver, guidance: {
        "color": palette(solvers.index(solver) % palette.N) if solver in solvers else "black",
        "linestyle": RUN_STYLES[runs.index(run) % len(RUN_STYLES)],
        "marker": GUIDANCE_MARKERS[guidances.index(guidance) % len(GUIDANCE_MARKERS)],
    }


def draw_lines(axes: Axes, rows: list[dict], key: str, style: Callable[[str, str, float], dict]) -> None:
    """``key`` against NFE, one line per run x solver x guidance (guidance named for conditional runs)."""
    for run, solver, guidance in dict.fromkeys((r["run"], r["solver"], r["guidance"]) for r in rows):
        line = [r for r in rows if (r["run"], r["solver"], r["guidance"]) == (run, solver, guidance)]
        guided = "" if line[0]["class_agreement"] is None else f", guidance {guidance:g}"
        points = sorted((r["nfe"], r[key]) for r in line)
        axes.plot(*zip(*points, strict=True), markersize=4, **style(run, solver, guidance),
                  label=f"{line[0]['process']} ({Path(run).name}) / {solver}{guided}")  # fmt: skip
