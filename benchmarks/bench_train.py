"""Training throughput and memory: genflow's step with each throughput option against a plain
diffusers loop, same UNet, batch and data, on the digits (8x8) and at 32x32.

The plain loop is the one in diffusers' unconditional training example: DDPMScheduler.add_noise,
eps MSE, AdamW, gradient clipping. genflow's step adds what it always does (the objective's
global draws, LR schedule, EMA, the finiteness check). Variants: fp32, ``--precision bf16``
(autocast), ``--grad-accumulation 2``, ``--gradient-checkpointing`` and ``--compile``. All run
in alternating rounds in one process after warm-up steps; the script prints median images/s,
the ratio to the plain loop, and peak memory: on CUDA the rise of ``torch.cuda.max_memory_allocated``
during a timed round over what was allocated before it (activations and gradients), on the CPU the rise of a fresh process's peak resident memory over its resident memory once
torch, diffusers and the data are loaded (Linux's ``/proc/self/clear_refs`` resets the peak).

    python benchmarks/bench_train.py [--sizes 8 32] [--batch 128] [--steps 20] [--rounds 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import genflow
from genflow.config import TrainConfig
from genflow.data.datasets import load_digits
from genflow.nn import build_unet, preset_for
from genflow.runtime.base import SingleProcess
from genflow.train import DenoisingObjective, Trainer, TrainingSetup

VARIANTS: dict[str, dict] = {
    "plain diffusers fp32": {},
    "plain diffusers bf16": {"precision": "bf16"},
    "genflow fp32": {},
    "genflow bf16": {"precision": "bf16"},
    "genflow grad-accumulation 2": {"grad_accumulation": 2},
    "genflow gradient-checkpointing": {"gradient_checkpointing": True},
    "genflow compile": {"compile": True},
}


def images_at(size: int, device: torch.device) -> torch.Tensor:
    """The digits at ``size`` x ``size`` (nearest-neighbour upscaling of the 8x8 images)."""
    return F.interpolate(load_digits(), scale_factor=size // 8, mode="nearest").to(device)


def plain_step(data: torch.Tensor, batch: int, device: torch.device, options: dict) -> Callable[[], None]:
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    unet = build_unet(preset_for(1, data.shape[-1])).to(device)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    bf16 = options.get("precision") == "bf16"

    def step() -> None:
        x0 = data[torch.randint(0, len(data), (batch,), device=device)]
        noise = torch.randn_like(x0)
        timesteps = torch.randint(0, 1000, (batch,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, timesteps), timesteps).sample.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def genflow_step(data: torch.Tensor, batch: int, device: torch.device, options: dict) -> Callable[[], None]:
    config = TrainConfig(process="ddpm", steps=10**6, batch_size=batch, sample_every=0, checkpoint_every=0, device=str(device),
                         model=preset_for(1, data.shape[-1]).to_dict(), **options)  # fmt: skip
    process = genflow.make_process("ddpm")
    setup = TrainingSetup(config, process, DenoisingObjective(process), {"images": data}, SingleProcess(device))
    trainer = Trainer(setup, Path(tempfile.mkdtemp()))

    def step() -> None:
        trainer.state.step += 1
        trainer.step()

    return step


def make_step(variant: str, data: torch.Tensor, batch: int, device: torch.device) -> Callable[[], None]:
    make = plain_step if variant.startswith("plain") else genflow_step
    return make(data, batch, device, VARIANTS[variant])


def timed(step: Callable[[], None], steps: int, batch: int, device: torch.device) -> tuple[float, float]:
    """Images per second over ``steps`` steps, and on CUDA the memory the steps needed (MiB)."""
    synchronize(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    rate = steps * batch / (time.perf_counter() - started)
    return rate, (torch.cuda.max_memory_allocated(device) - before) / 2**20 if device.type == "cuda" else 0.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_peak_memory_mib(variant: str, size: int, batch: int, warmup: int) -> float:
    """The rise in peak resident memory of a fresh CPU process over ``warmup + 3`` steps of the variant."""
    command = [sys.executable, __file__, "--peak-of", variant, "--sizes", str(size), "--batch", str(batch), "--warmup", str(warmup)]
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip())


def print_peak_of(variant: str, size: int, batch: int, warmup: int) -> None:
    data = images_at(size, torch.device("cpu"))
    print(peak_rise_mib(lambda: make_step(variant, data, batch, torch.device("cpu")), warmup + 3))


def peak_rise_mib(make: Callable[[], Callable[[], None]], steps: int) -> float:
    """The rise of this process's peak resident memory (MiB) while ``make()`` builds a step and
    ``steps`` of it run, over what was resident before (torch and diffusers loaded)."""
    import diffusers  # noqa: F401  (loaded before the baseline is read)

    baseline = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current resident size
    step = make()
    for _ in range(steps):
        step()
    return (status_kib("VmHWM") - baseline) / 1024


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def bench_size(size: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    data = images_at(size, device)
    steps = {name: make_step(name, data, args.batch, device) for name in args.variants}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    memory: dict[str, float] = {name: 0.0 for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rate, needed = timed(step, args.steps, args.batch, device)
            rates[name].append(rate)
            memory[name] = max(memory[name], needed)
    plain = statistics.median(rates["plain diffusers fp32"])
    rows = []
    for name in steps:
        rate = statistics.median(rates[name])
        if device.type == "cpu":
            memory[name] = cpu_peak_memory_mib(name, size, args.batch, args.warmup)
        rows.append({"size": size, "variant": name, "images_per_s": round(rate, 1), "ratio_to_plain_fp32": round(rate / plain, 3),
                     "peak_mib": round(memory[name], 1), "batch": args.batch, "device": str(device)})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile happens here)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT",
                        help="the variants to run (default all; the plain fp32 loop always runs)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON lines here")
    parser.add_argument("--peak-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_of:
        print_peak_of(args.peak_of, args.sizes[0], args.batch, args.warmup)
        return
    device = torch.device(args.device)
    args.variants = ["plain diffusers fp32", *(v for v in args.variants if v != "plain diffusers fp32")]
    print(f"batch {args.batch}, {args.steps} steps x {args.rounds} rounds after {args.warmup} warm-up, device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    rows = [row for size in args.sizes for row in bench_size(size, args, device)]
    print(f"{'size':>4}  {'variant':32} {'images/s':>9} {'x plain':>8} {'peak MiB':>9}")
    for row in rows:
        print(f"{row['size']:>4}  {row['variant']:32} {row['images_per_s']:>9.1f} {row['ratio_to_plain_fp32']:>8.3f} {row['peak_mib']:>9.1f}")
    if args.json:
        args.json.write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    main()
