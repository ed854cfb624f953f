"""Reflow and distillation on the digits: teacher, 2-rectified flow and its distilled one-step
student, each scored at 1, 2, 4 and 20 NFE with the shipped digits classifier (Frechet
distance), with straightness and the wall time of every stage.

    python benchmarks/bench_few_step.py TEACHER_RUN --out /tmp/few-step [--pairs 10000]

TEACHER_RUN is a trained rectified-flow run (the default ``genflow train`` on the digits).
Prints a markdown table and writes it, with the raw numbers as JSON lines, under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from genflow import api
from genflow.fewstep.reflow import distill, reflow, straightness_of_run
from genflow.progress import reporter_for

NFES = (1, 2, 4, 20)


def score(run: Path, label: str, seconds: float) -> list[dict]:
    """FD at each NFE with Euler (and the run's default solver at 20 NFE), and straightness."""
    loaded = api.load(run, device="cpu")
    straight = straightness_of_run(loaded, 898, steps=100)
    rows = []
    for solver, steps in [("euler", n) for n in NFES] + [(loaded.process.default_solver, 20)]:
        result = api.evaluate_run(loaded, n=898, solver=solver, steps=steps, seed=0)
        rows.append({"model": label, "solver": solver, "nfe": result["nfe"], "fd": result["fd"], "fd_floor": result["fd_floor"],
                     "fd_fresh": result["fd_fresh"], "straightness": straight, "stage_seconds": seconds})  # fmt: skip
        print(f"{label:>12} {solver:>8} NFE {result['nfe']:>4g}  FD {result['fd']:.3f}  straightness {straight:.4f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=10000)
    parser.add_argument("--solver", default="dpm++2m")
    parser.add_argument("--solver-steps", type=int, default=30)
    parser.add_argument("--train-steps", type=int, default=2000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    rows = score(args.teacher, "teacher", 0.0)
    started = time.perf_counter()
    student = reflow(args.teacher, args.out / "reflow", args.pairs, args.solver, args.solver_steps,
                     overrides={"steps": args.train_steps}, overwrite=True, reporter=reporter_for())  # fmt: skip
    reflow_seconds = time.perf_counter() - started
    pairs = json.loads((student / "pairs" / "manifest.json").read_text())
    print(f"pairs: {pairs['count']} with {pairs['solver']} {pairs['steps']} steps, NFE {pairs['nfe']:g}, {pairs['seconds']:.0f} s", flush=True)
    rows += score(student, "2-rectified", reflow_seconds)
    started = time.perf_counter()
    student_1 = distill(student, args.out / "distilled", 1, overrides={"steps": args.train_steps}, overwrite=True, reporter=reporter_for())
    rows += score(student_1, "distilled-1", time.perf_counter() - started)

    with (args.out / "few-step.jsonl").open("w") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")
    lines = ["| model | solver | NFE | FD | straightness | stage wall time (s) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['solver']} | {r['nfe']:g} | {r['fd']:.3f} | {r['straightness']:.4f} | {r['stage_seconds']:.0f} |" for r in rows]
    summary = f"pairs: {pairs['count']}, {pairs['solver']} at {pairs['steps']} steps (NFE {pairs['nfe']:g}), {pairs['seconds']:.0f} s;"
    lines += ["", f"{summary} FD floor {rows[0]['fd_floor']:.3f}, fresh real images {rows[0]['fd_fresh']:.3f}"]
    (args.out / "few-step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
