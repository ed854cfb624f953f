"""What checkpoints cost: one save (write, fsync, sha256, rename, prune) and one resume read
(verify and restore) against one training step, for a backbone preset, in one process.

Prints medians and the share of training time that saving every N steps takes:
``save / (N x step)``.

    python benchmarks/bench_checkpoint.py [--resolution 8] [--batch 128] [--every 500] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import genflow
from genflow.config import TrainConfig
from genflow.nn import preset_for
from genflow.runs.checkpoint import newest_valid_checkpoint
from genflow.runtime.base import SingleProcess
from genflow.train import DenoisingObjective, Trainer, TrainingSetup


def median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=8, choices=(8, 28, 32))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    channels = 3 if args.resolution == 32 else 1
    backbone = preset_for(channels, args.resolution)
    config = TrainConfig(batch_size=args.batch, steps=10**6, device="cpu", model=backbone.to_dict())
    process = genflow.make_process("rectified-flow")
    data = {"images": torch.rand(4 * args.batch, channels, args.resolution, args.resolution) * 2 - 1}
    setup = TrainingSetup(config, process, DenoisingObjective(process), data, SingleProcess("cpu"))
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(setup, Path(run_dir))
        model = trainer.state.model
        step = median_seconds(trainer.step, 3 * args.repeats)
        save = median_seconds(trainer.save_checkpoint, args.repeats)
        fresh = Trainer(setup, Path(run_dir)).state
        read = median_seconds(lambda: fresh.restore(newest_valid_checkpoint(Path(run_dir), print), print), args.repeats)
        newest = newest_valid_checkpoint(Path(run_dir), print).path
        size = sum(p.stat().st_size for p in newest.iterdir()) / 1e6
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{args.resolution}x{args.resolution} preset, {parameters:.2f}M parameters, batch {args.batch}, CPU, medians")
    print(f"one training step:     {step * 1e3:8.1f} ms")
    print(f"one checkpoint save:   {save * 1e3:8.1f} ms ({size:.1f} MB on disk)")
    print(f"one resume read:       {read * 1e3:8.1f} ms")
    print(f"saving every {args.every} steps costs {save / (args.every * step):.2%} of training time")


if __name__ == "__main__":
    main()
