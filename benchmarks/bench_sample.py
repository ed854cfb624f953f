"""Sampling overhead: wall time of genflow.sample against NFE x one bare UNet forward.

Both are measured side by side in one run, alternating, on the same backbone and batch;
the script prints medians and their ratio (1.00 = the sampler itself costs nothing).

    python benchmarks/bench_sample.py [--batch 256] [--steps 20] [--repeats 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import genflow
from genflow.nn import Preconditioner, preset_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"batch {args.batch}, {args.steps} steps, device {device}, median of {args.repeats}")
    print(f"{'process':>15} {'solver':>10} {'NFE':>5} {'sample s':>9} {'NFE x fwd s':>12} {'ratio':>6}")
    for process_name, solver in (
        ("rectified-flow", "euler"),
        ("rectified-flow", "heun"),
        ("ddpm", "ddim"),
        ("sde", "dpm++2m"),
        ("ddpm", "ancestral"),
    ):
        process = genflow.make_process(process_name)
        model = Preconditioner(preset_for(1, 8), process.schedule, process.discrete_steps).to(device).eval()
        x = torch.randn(args.batch, 1, 8, 8, device=device)
        t = torch.full((args.batch,), 0.5, device=device)
        sample_times, forward_times, nfe = [], [], 0
        for _ in range(args.repeats + 1):  # the first round warms up
            stats = genflow.SamplingStats()
            genflow.sample(
                model, process, solver=solver, steps=args.steps, shape=(args.batch, 1, 8, 8), stats=stats, device=device
            )
            nfe = int(stats.nfe)
            sample_times.append(stats.seconds)
            forward_times.append(time_forwards(model, x, t, nfe, device))
        sample_s, forward_s = statistics.median(sample_times[1:]), statistics.median(forward_times[1:])
        print(f"{process_name:>15} {solver:>10} {nfe:>5} {sample_s:>9.3f} {forward_s:>12.3f} {sample_s / forward_s:>6.3f}")


@torch.no_grad()
def time_forwards(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, count: int, device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    for _ in range(count):
        model(x, t)
    synchronize(device)
    return time.perf_counter() - started


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
