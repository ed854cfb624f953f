"""A diffusers-only baseline for quality at 10 NFE on the digits.

Trains the same UNet as genflow's default with a plain diffusers loop (DDPM objective:
DDPMScheduler.add_noise, eps MSE, AdamW with the same learning rate, EMA 0.999) with the same
batch, then samples it with diffusers' 10-step schedulers (DDIM, DPM-Solver++ multistep, Euler,
UniPC) and writes one uint8 NHWC ``.npz`` (``arr_0``) per scheduler, for ``genflow eval
--samples`` comparison against genflow's own runs.

The default 3050 steps take the wall time of genflow's default 3000: ``bench_train.py --sizes 8``
measured genflow's step at 0.983x the plain loop's images/s (benchmarks/results/digits-recipe.md).

    python benchmarks/baseline_diffusers.py --out baseline/ [--steps 3050] [--n 1000]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler

from genflow.data.datasets import load_digits
from genflow.data.pixels import to_uint8
from genflow.nn import build_unet, preset_for
from genflow.train import update_ema, warmup_cosine

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "dpm++2m": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
}


def train_plain(steps: int, batch: int, lr: float, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    data = load_digits()
    unet = build_unet(preset_for(1, 8))
    ema = copy.deepcopy(unet).requires_grad_(False)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(100, steps))
    for step in range(1, steps + 1):
        x0 = data[torch.randint(0, len(data), (batch,))]
        noise = torch.randn_like(x0)
        timesteps = torch.randint(0, 1000, (batch,))
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, timesteps), timesteps).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        decay.step()
        update_ema(ema, unet, 0.999, step)
    return ema.eval()


@torch.no_grad()
def sample_with(unet: torch.nn.Module, scheduler_cls, n: int, steps: int, seed: int) -> tuple[torch.Tensor, float]:
    scheduler = scheduler_cls.from_config(DDPMScheduler(num_train_timesteps=1000).config)
    scheduler.set_timesteps(steps)
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * scheduler.init_noise_sigma
    started = time.perf_counter()
    for t in scheduler.timesteps:
        eps = unet(scheduler.scale_model_input(x, t), t).sample
        x = scheduler.step(eps, t, x).prev_sample
    return x, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3050, help="training steps (3050: genflow's default 3000 in the same time)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--sample-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    unet = train_plain(args.steps, args.batch, args.lr, args.seed)
    print(f"trained {args.steps} steps in {time.perf_counter() - started:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, cls in SCHEDULERS.items():
        images, seconds = sample_with(unet, cls, args.n, args.sample_steps, args.seed)
        path = args.out / f"diffusers-{name}-{args.sample_steps}.npz"
        np.savez(path, to_uint8(images).permute(0, 2, 3, 1).numpy())
        print(f"{name:>8}: {args.sample_steps} steps, {seconds:.2f} s -> {path}")


if __name__ == "__main__":
    main()
