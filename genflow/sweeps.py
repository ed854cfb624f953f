"""Quality against cost: every run x solver x steps with the same seeds, as a table and a plot."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import TextIO, TypeVar

import genflow
from genflow import api
from genflow.errors import GenflowError, IncompatibleError

T = TypeVar("T")
COLUMNS = ("run", "process", "solver", "grid", "steps", "nfe", "seconds", "fd", "fd_floor", "kid", "kid_floor", "precision", "recall")


def parse_list(text: str, kind: Callable[[str], T]) -> list[T]:
    """``"1,2,4"`` -> ``[1, 2, 4]``; a malformed entry is a usage error."""
    try:
        values = [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise GenflowError(f"cannot read {text!r} as a comma-separated list") from None
    if not values:
        raise GenflowError("an empty list was given")
    return values


def run_sweep(runs: list[str], solvers: list[str], steps: list[int], grid: str | None, n: int, seed: int, device: str,
              out: Path, overwrite: bool, progress: TextIO | None = None) -> list[dict]:  # fmt: skip
    """Evaluate every combination; solvers a process cannot use are reported and skipped."""
    targets = [out / name for name in ("sweep.csv", "sweep.jsonl", "sweep.png")]
    if any(t.exists() for t in targets) and not overwrite:
        raise GenflowError(f"{out} already holds a sweep; choose another --out or pass --overwrite")
    loaded_runs = [api.load(run, device) for run in runs]  # every run validated before any work
    rows = []
    for loaded in loaded_runs:
        for solver in solvers:
            spec = genflow.SOLVERS.get(solver)
            for count in dict.fromkeys(spec.fixed_steps(k) for k in steps):  # an adaptive solver once, at its own steps
                try:
                    result = api.evaluate_run(loaded, n, solver, count, grid, seed)
                except IncompatibleError as error:
                    note(progress, f"skipped {loaded.path} / {solver}: {error}")
                    break
                row = {"run": str(loaded.path), "process": loaded.process.name, **result}
                rows.append({k: row[k] for k in COLUMNS})
                note(progress, f"{loaded.path} {solver} steps={count or 'adaptive'} NFE={row['nfe']:g} FD={row['fd']:.3f} (floor {row['fd_floor']:.3f})")
    write_table(rows, out)
    plot(rows, out / "sweep.png")
    return rows


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
    """Frechet distance against NFE on log axes, one line per run x solver, the floor dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for run, solver in dict.fromkeys((r["run"], r["solver"]) for r in rows):
        points = sorted((r["nfe"], r["fd"]) for r in rows if r["run"] == run and r["solver"] == solver)
        process = next(r["process"] for r in rows if r["run"] == run)
        axes.plot(*zip(*points, strict=True), marker="o", label=f"{process} ({Path(run).name}) / {solver}")
    if rows:
        axes.axhline(rows[0]["fd_floor"], color="grey", linestyle="--", label="floor (training images resampled)")
    axes.set(xscale="log", yscale="log", xlabel="NFE", ylabel="Frechet distance (classifier features)")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
