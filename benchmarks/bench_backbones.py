"""DiT against the UNet: training images per second and peak memory at 32x32 and 64x64, and
sample quality on the digits at equal wall time (FD at 10 NFE).

``throughput``: genflow's training step (rectified flow, fp32) with each backbone at its
default for the resolution, on the digits upscaled to the size and copied to 3 channels,
timed in alternating rounds in one process after warm-up; the median images/s of the rounds,
and on the CPU the rise of a fresh process's peak resident memory over a few steps (as in
``bench_train.py``), on CUDA ``max_memory_allocated`` during a round.

``quality``: ``genflow train`` (the UNet, the README's run) and ``genflow train --backbone
dit`` given the same wall time: the DiT's steps are the UNet run's seconds over the DiT's
seconds per step (measured on a short run first); both scored with ``genflow eval --steps 10``.
Run it alone: every figure is a time.

    python benchmarks/bench_backbones.py throughput [--sizes 32 64] [--batch 32] [--device cpu] [--json FILE]
    python benchmarks/bench_backbones.py quality [--unet-steps 3000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from bench_train import images_at, peak_rise_mib, timed

import genflow
from genflow.config import TrainConfig
from genflow.nn import backbone_for_data
from genflow.runtime.base import SingleProcess
from genflow.train import DenoisingObjective, Trainer, TrainingSetup

BACKBONES = ("unet", "dit")
CHANNELS = 3


def training_step(backbone: str, size: int, batch: int, device: torch.device) -> tuple[Callable[[], None], str, int]:
    """One genflow training step of ``backbone`` at its default for ``size``, what it is, and its parameters."""
    data = images_at(size, device).expand(-1, CHANNELS, -1, -1).contiguous()
    model = backbone_for_data({"backbone": backbone}, CHANNELS, size, 0)
    config = TrainConfig(steps=10**6, batch_size=batch, sample_every=0, checkpoint_every=0, device=str(device), model=model.to_dict())
    process = genflow.make_process("rectified-flow")
    trainer = Trainer(TrainingSetup(config, process, DenoisingObjective(process), {"images": data}, SingleProcess(device)), Path(tempfile.mkdtemp()))

    def step() -> None:
        trainer.state.step += 1
        trainer.step()

    return step, model.describe(), sum(p.numel() for p in trainer.state.model.parameters())


def cpu_peak_memory_mib(backbone: str, size: int, batch: int, warmup: int) -> float:
    """The rise in peak resident memory of a fresh CPU process over ``warmup + 3`` steps."""
    command = [sys.executable, __file__, "peak", "--backbone", backbone, "--sizes", str(size), "--batch", str(batch), "--warmup", str(warmup)]
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip())


def print_peak(args: argparse.Namespace) -> None:
    print(peak_rise_mib(lambda: training_step(args.backbone, args.sizes[0], args.batch, torch.device("cpu"))[0], args.warmup + 3))


def throughput(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    rows = []
    for size in args.sizes:
        made = {name: training_step(name, size, args.batch, device) for name in BACKBONES}
        for step, _, _ in made.values():
            for _ in range(args.warmup):
                step()
        rates: dict[str, list[float]] = {name: [] for name in made}
        memory = dict.fromkeys(made, 0.0)
        for _ in range(args.rounds):
            for name, (step, _, _) in made.items():
                rate, needed = timed(step, args.steps, args.batch, device)
                rates[name].append(rate)
                memory[name] = max(memory[name], needed)
        unet_rate = statistics.median(rates["unet"])
        for name, (_, described, parameters) in made.items():
            peak = cpu_peak_memory_mib(name, size, args.batch, args.warmup) if device.type == "cpu" else memory[name]
            rate = statistics.median(rates[name])
            rows.append({"size": size, "channels": CHANNELS, "backbone": name, "shape": described, "parameters_m": round(parameters / 1e6, 2),
                         "images_per_s": round(rate, 1), "ratio_to_unet": round(rate / unet_rate, 3), "peak_mib": round(peak, 1),
                         "batch": args.batch, "device": str(device)})  # fmt: skip
    print(f"{'size':>4}  {'backbone':34} {'params':>7} {'images/s':>9} {'x unet':>7} {'peak MiB':>9}")
    for row in rows:
        print(f"{row['size']:>4}  {row['shape']:34} {row['parameters_m']:>6.2f}M {row['images_per_s']:>9.1f} {row['ratio_to_unet']:>7.3f} {row['peak_mib']:>9.1f}")
    return rows


def genflow_command(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genflow", *map(str, args)], capture_output=True, text=True, check=True)


def seconds_of(run: Path) -> float:
    """A run's training seconds, as its last logged row says."""
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["seconds"]


def frechet_distance(run: Path) -> float:
    return json.loads(genflow_command("eval", run, "--steps", "10", "--json").stdout)["fd"]


def quality(args: argparse.Namespace) -> list[dict]:
    folder = Path(tempfile.mkdtemp(prefix="backbones-"))
    unet = folder / "unet"
    genflow_command("train", "--steps", args.unet_steps, "--out", unet, "--no-final-grid", "--sample-every", "0")
    budget = seconds_of(unet)
    probe = folder / "probe"
    genflow_command("train", "--backbone", "dit", "--steps", args.probe_steps, "--out", probe, "--no-final-grid", "--sample-every", "0")
    dit_steps = int(budget / (seconds_of(probe) / args.probe_steps))
    dit = folder / "dit"
    genflow_command("train", "--backbone", "dit", "--steps", dit_steps, "--out", dit, "--no-final-grid", "--sample-every", "0")
    rows = []
    for name, run, steps in (("unet", unet, args.unet_steps), ("dit", dit, dit_steps)):
        rows.append({"backbone": name, "steps": steps, "seconds": round(seconds_of(run), 1), "fd_10_nfe": round(frechet_distance(run), 3)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("throughput", "quality", "peak"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--probe-steps", type=int, default=100)
    parser.add_argument("--backbone", default="unet", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON lines here")
    args = parser.parse_args()
    if args.part == "peak":
        print_peak(args)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}", flush=True)
    rows = throughput(args) if args.part == "throughput" else quality(args)
    if args.json:
        args.json.write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    main()
