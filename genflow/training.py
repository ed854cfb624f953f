"""The training loop: AdamW with warm-up and cosine decay, gradient clipping, EMA weights,
metrics.jsonl, sample grids, and safetensors weights at the end."""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from genflow.checkpoint import EMA_WEIGHTS, RAW_WEIGHTS, save_weights
from genflow.config import TrainConfig
from genflow.errors import GenflowError
from genflow.processes import GaussianProcess

GRID_SAMPLES = 64


class Reporter(Protocol):
    """Where training progress goes: a rich progress bar or plain lines."""

    def start(self, total: int) -> None: ...
    def step(self, step: int, loss: float, lr: float) -> None: ...
    def note(self, message: str) -> None: ...
    def finish(self) -> None: ...


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA, then MPS, then the CPU; an unavailable device is an error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise GenflowError(f"device {name!r} is not available here; use --device cpu or auto")
    return torch.device(name)


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up to the base rate, then cosine decay to zero at ``total`` (Loshchilov & Hutter 2017)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """``ema <- d ema + (1 - d) model`` with ``d = min(decay, (1 + step) / (10 + step))``, the
    warm-up of Tarvainen & Valpola 2017 used by most diffusion codebases."""
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - d)


class MinibatchStream:
    """Shuffled minibatches of an in-memory dataset, reshuffled every epoch from one generator."""

    def __init__(self, data: Tensor, batch_size: int, seed: int) -> None:
        self.data, self.batch_size = data, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.position = self._shuffle(), 0

    def _shuffle(self) -> Tensor:
        return torch.randperm(len(self.data), generator=self.generator)

    def next(self) -> Tensor:
        if self.position + self.batch_size > len(self.order):
            self.order, self.position = self._shuffle(), 0
        index = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return self.data[index.to(self.data.device)]


def train_loop(
    config: TrainConfig,
    process: GaussianProcess,
    model: nn.Module,
    data: Tensor,
    run_dir: Path,
    reporter: Reporter,
    sample_grid: Callable[[nn.Module, int], None],
    evaluate: Callable[[nn.Module], dict] | None = None,
) -> nn.Module:
    """Train ``model`` in place; returns its EMA copy. Writes metrics.jsonl (loss lines, and
    ``evaluate(ema)``'s scores every ``eval_every`` steps) and the weights."""
    device = next(model.parameters()).device
    if config.batch_size > len(data):
        raise GenflowError(f"batch_size {config.batch_size} is larger than the dataset ({len(data)} images)")
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.warmup_steps, config.steps))
    batches = MinibatchStream(data, config.batch_size, config.seed)
    noise = torch.Generator(device=device).manual_seed(config.seed + 1)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    started = time.perf_counter()
    reporter.start(config.steps)
    with (run_dir / "metrics.jsonl").open("a") as metrics:
        for step in range(1, config.steps + 1):
            with autocast:
                loss = process.training_loss(model, batches.next(), noise).mean()
            if not torch.isfinite(loss):
                reporter.note(f"step {step}: non-finite loss, step skipped")
                optimizer.zero_grad(set_to_none=True)
                continue
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lr = schedule.get_last_lr()[0]
            schedule.step()
            update_ema(ema, model, config.ema_decay, step)
            if step % config.log_every == 0 or step == config.steps:
                value = float(loss.detach())
                record = {"step": step, "loss": value, "lr": lr, "seconds": round(time.perf_counter() - started, 3)}
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                reporter.step(step, value, lr)
            if config.sample_every and step % config.sample_every == 0 and step != config.steps:
                sample_grid(ema, step)
            if evaluate is not None and config.eval_every and step % config.eval_every == 0:
                scores = evaluate(ema)
                metrics.write(json.dumps({"step": step, **scores}) + "\n")
                metrics.flush()
                reporter.note(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    sample_grid(ema, config.steps)
    save_weights(run_dir / RAW_WEIGHTS, model.unet)
    save_weights(run_dir / EMA_WEIGHTS, ema.unet)
    reporter.finish()
    return ema
