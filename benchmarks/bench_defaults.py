"""Which solver and grid each process should default to: quality on the digits at 10 and 20 NFE.

For every trained run given, samples the same seeds with every deterministic candidate
(solver x options x grid; the process's current default as well) at NFE budgets of 10 and
20 (steps chosen so the NFE does not exceed the budget: Heun's N steps cost 2N - 1) and
scores each with the Frechet distance of ``genflow eval`` (the shipped digits classifier's
features, against the same reference of real images, beside the same floor). Prints one table per run and the best candidate by
mean FD over the budgets; writes ``OUT.md`` and ``OUT.jsonl``.

    python benchmarks/bench_defaults.py RUN [RUN ...] --out benchmarks/results/digits-defaults
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genflow import api
from genflow.eval.metrics import extract_features, frechet_distance, yardsticks
from genflow.eval.scoring import feature_classifier, plan_evaluation, run_dataset

BUDGETS = (10, 20)


@dataclass(frozen=True)
class Candidate:
    solver: str
    grid: str
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.options.items())
        return f"{self.solver}{extra} / {self.grid}"

    def steps_for(self, budget: int) -> int:
        return (budget + 1) // 2 if self.solver == "heun" else budget


def candidates(process) -> list[Candidate]:
    """Deterministic solvers the process can use on the grids that suit them, and its current
    default. (The rectified-flow table of 2026-11-26 also had euler and dpm++3m / unipc order 3
    on karras and heun on karras: all behind.)"""
    rows = [Candidate("heun", "uniform"), Candidate("dpm++3m", "uniform"), Candidate("dpm++3m", "logsnr")]
    rows += [Candidate("unipc", "uniform", {"order": 3}), Candidate("unipc", "logsnr", {"order": 3})]
    for grid in ("uniform", "logsnr", "karras"):
        rows += [Candidate("dpm++2m", grid), Candidate("unipc", grid, {"order": 2})]
    if process.name in ("ddpm", "ddim"):
        rows += [Candidate("ddim", "uniform")]
    default = Candidate(process.default_solver, process.default_grid)
    if default not in rows:
        rows.append(default)
    return rows


def fd_of(loaded, candidate: Candidate, budget: int, n: int, reference_features, classifier) -> dict:
    images, stats = api.sample_run(
        loaded, n, candidate.solver, candidate.steps_for(budget), candidate.grid, 0, **candidate.options
    )
    fd = frechet_distance(extract_features(classifier, images.cpu()), reference_features)
    return {"candidate": candidate.label, "budget": budget, "nfe": stats.nfe, "seconds": round(stats.seconds, 3), "fd": fd}


def bench_run(path: str, n: int | None) -> tuple[dict, list[dict]]:
    loaded = api.load(path, device="cpu")
    dataset, data = run_dataset(loaded)
    plan = plan_evaluation(data, loaded.classes, n, None)
    classifier = feature_classifier(dataset)
    sticks = yardsticks(extract_features(classifier, plan.real), plan.n)
    rows = []
    for candidate in candidates(loaded.process):
        for budget in BUDGETS:
            row = {
                "run": path,
                "process": loaded.process.name,
                **fd_of(loaded, candidate, budget, plan.n, sticks.reference, classifier),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return {
        "run": path,
        "process": loaded.process.name,
        "n": plan.n,
        "fd_floor": sticks.fd_floor,
        "fd_fresh": frechet_distance(sticks.fresh, sticks.reference),
        "default": loaded.process.default_solver,
    }, rows


def table(meta: dict, rows: list[dict]) -> str:
    by_candidate: dict[str, dict[int, dict]] = {}
    for row in rows:
        by_candidate.setdefault(row["candidate"], {})[row["budget"]] = row
    mean_fd = {c: sum(r["fd"] for r in points.values()) / len(points) for c, points in by_candidate.items()}
    lines = [f"### {meta['process']} ({meta['run']}, n={meta['n']}, FD floor {meta['fd_floor']:.3f}, fresh {meta['fd_fresh']:.3f})", "",
             "| solver / grid | " + " | ".join(f"FD @ {b} NFE (NFE, s)" for b in BUDGETS) + " | mean |",
             "|---|" + "---|" * (len(BUDGETS) + 1)]  # fmt: skip
    for label in sorted(by_candidate, key=mean_fd.get):
        cells = [f"{p['fd']:.3f} ({p['nfe']:g}, {p['seconds']:.1f})" for p in (by_candidate[label][b] for b in BUDGETS)]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean_fd[label]:.3f} |")
    best = min(mean_fd, key=mean_fd.get)
    return "\n".join(lines + ["", f"best by mean FD: **{best}**", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--n", type=int, default=None, help="samples per point (default: what genflow eval uses)")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny 8x8 batches: a second thread only adds overhead on this machine
    started, sections, all_rows = time.perf_counter(), [], []
    for run in args.runs:
        meta, rows = bench_run(run, args.n)
        sections.append(table(meta, rows))
        all_rows += [meta | row for row in rows]
    header = f"# Default solver and grid per process, digits (bench_defaults.py, {time.perf_counter() - started:.0f} s)\n"
    args.out.with_suffix(".md").write_text(header + "\n" + "\n".join(sections))
    args.out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in all_rows))
    print("\n".join(sections))


if __name__ == "__main__":
    main()
