"""Training throughput: genflow's loop against a plain diffusers loop, same UNet, batch, data.

The plain loop is the one in diffusers' unconditional training example: DDPMScheduler.add_noise,
eps MSE, AdamW. genflow's loop adds what it always does (LR schedule, gradient clipping, EMA,
metrics). Both run in alternating rounds in one process; the script prints median images/s
and the ratio genflow / plain.

    python benchmarks/bench_train.py [--batch 128] [--steps 30] [--rounds 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

import genflow
from genflow.config import TrainConfig
from genflow.data import load_digits
from genflow.nn import build_unet, preset_for
from genflow.train import DenoisingObjective, SingleProcess, Trainer, TrainingSetup


def plain_diffusers(data: torch.Tensor, steps: int, batch: int, device: torch.device) -> float:
    unet = build_unet(preset_for(1, 8)).to(device)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    started = time.perf_counter()
    for _ in range(steps):
        x0 = data[torch.randint(0, len(data), (batch,), device=device)]
        noise = torch.randn_like(x0)
        timesteps = torch.randint(0, 1000, (batch,), device=device)
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, timesteps), timesteps).sample, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return steps * batch / (time.perf_counter() - started)


def genflow_loop(data: torch.Tensor, steps: int, batch: int, device: torch.device) -> float:
    config = TrainConfig(process="ddpm", steps=steps, batch_size=batch, sample_every=0, log_every=10, checkpoint_every=0,
                         model=preset_for(1, 8).to_dict())  # fmt: skip
    process = genflow.make_process("ddpm")
    setup = TrainingSetup(config, process, DenoisingObjective(process), {"images": data}, SingleProcess(device))
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(setup, Path(run_dir))
        trainer.sample_grid = lambda step: None  # time the steps, not the end-of-run samples
        started = time.perf_counter()
        trainer.run()
        synchronize(device)
        return steps * batch / (time.perf_counter() - started)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    data = load_digits().to(device)
    plain, ours = [], []
    for _ in range(args.rounds):
        plain.append(plain_diffusers(data, args.steps, args.batch, device))
        ours.append(genflow_loop(data, args.steps, args.batch, device))
    p, g = statistics.median(plain), statistics.median(ours)
    print(f"batch {args.batch}, {args.steps} steps x {args.rounds} rounds, device {device}")
    print(f"plain diffusers loop: {p:8.1f} images/s (median)")
    print(f"genflow train loop:   {g:8.1f} images/s (median)")
    print(f"ratio genflow/plain:  {g / p:8.3f}")


if __name__ == "__main__":
    main()
