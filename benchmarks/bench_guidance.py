"""Classifier-free guidance on a conditional digits run: class agreement and Frechet distance
against guidance at a fixed budget of network evaluations.

    genflow train --conditional --out runs/digits-cond        # the default run, labels on
    python benchmarks/bench_guidance.py runs/digits-cond --out benchmarks/results/conditional-digits-guidance

A guided step costs two backbone evaluations, so at a budget of NFE evaluations guidance
S not in {0, 1} takes NFE / 2 steps; the table also gives the same steps unguided-cost for
comparison. Scores: overall FD against all real digits (with its floor), the mean over classes
of each class's FD against that class's real images (with its floor), and class agreement
(the share of samples of class k the shipped digits classifier calls k).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genflow import api

GUIDANCE = (0.0, 1.0, 2.0, 4.0)
BUDGETS = (10, 20)
SOLVERS = ("euler", "dpm++2m")


def steps_for(budget: int, guidance: float) -> int:
    """Steps that spend ``budget`` backbone evaluations at this guidance (one-NFE-per-step solvers)."""
    return budget // 2 if guidance not in (0.0, 1.0) else budget


def measure(loaded: api.LoadedRun, solver: str, budget: int, guidance: float) -> dict:
    steps = steps_for(budget, guidance)
    result = api.evaluate_run(loaded, solver=solver, steps=steps, guidance=guidance, seed=0)
    keys = ("solver", "steps", "nfe", "seconds", "fd", "fd_floor", "fd_per_class_mean", "fd_floor_per_class_mean", "class_agreement")
    return {"guidance": guidance, "budget": budget} | {k: result[k] for k in keys}


def table(rows: list[dict]) -> str:
    lines = [
        "| solver | guidance | NFE | steps | class agreement | FD (floor) | per-class FD, mean (floor) | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['solver']} | {r['guidance']:g} | {r['nfe']:g} | {r['steps']} | {r['class_agreement']:.3f} | "
            f"{r['fd']:.2f} ({r['fd_floor']:.2f}) | {r['fd_per_class_mean']:.2f} ({r['fd_floor_per_class_mean']:.2f}) | "
            f"{r['seconds']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, help="write OUT.md and OUT.jsonl")
    args = parser.parse_args()
    loaded = api.load(args.run, device="cpu")
    rows = [measure(loaded, s, b, g) for s in SOLVERS for b in BUDGETS for g in GUIDANCE]
    text = table(rows)
    print(text)
    if args.out:
        args.out.with_suffix(".md").write_text(f"Run: {loaded.describe()}\n\n{text}\n")
        args.out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
