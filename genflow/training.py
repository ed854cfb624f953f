"""The training loop: AdamW with warm-up and cosine decay, gradient clipping, EMA weights,
metrics.jsonl, sample grids, atomic checkpoints, and a clean stop on SIGINT/SIGTERM.

A step whose loss or gradient norm is not finite changes nothing and is reported; after
``max_nonfinite`` of them in a row training stops (:class:`TrainingDiverged`). Weights that
are not finite are never saved.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, Self

import torch
from torch import Tensor, nn

from genflow.checkpoint import CHECKPOINTS, EMA_WEIGHTS, METRICS, RAW_WEIGHTS, latest_name, save_weights, write_checkpoint
from genflow.config import TrainConfig
from genflow.errors import GenflowError, TrainingDiverged, TrainingInterrupted
from genflow.processes import GaussianProcess
from genflow.train_state import MinibatchStream, TrainingState, warmup_cosine

__all__ = [
    "GRID_SAMPLES",
    "MinibatchStream",
    "Reporter",
    "StopSignals",
    "TrainingState",
    "pick_device",
    "train_loop",
    "update_ema",
    "warmup_cosine",
]

GRID_SAMPLES = 64


class Reporter(Protocol):
    """Where training progress goes: a rich progress bar or plain lines."""

    def start(self, total: int, done: int = 0) -> None: ...
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


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """``ema <- d ema + (1 - d) model`` with ``d = min(decay, (1 + step) / (10 + step))``, the
    warm-up of Tarvainen & Valpola 2017 used by most diffusion codebases."""
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - d)


class StopSignals:
    """While active, SIGINT and SIGTERM only record which arrived first, so the step in
    flight finishes and a checkpoint is saved; further signals (a second Ctrl-C during the
    save) change nothing. The previous handlers come back on exit. Outside the main thread,
    where Python cannot install handlers, it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> Self:
        self.received: int | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._record) for s in self.SIGNALS}
        return self

    def _record(self, signum: int, frame: object) -> None:
        if self.received is None:
            self.received = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def optimization_step(config: TrainConfig, process: GaussianProcess, state: TrainingState) -> Tensor | None:
    """One AdamW step on the next minibatch; returns the (detached) loss, or ``None`` (and no
    change) when the loss or the gradient norm is not finite. The LR schedule advances either
    way, so it follows the step. The finiteness check is the step's one device sync; the loss
    is read to the host only when it is logged."""
    autocast = torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    with autocast:
        loss = process.training_loss(state.model, state.batches.next(), state.noise).mean()
    loss.backward()
    norm = nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip)
    finite = bool(torch.isfinite(loss) & torch.isfinite(norm))  # one device sync per step
    if finite:
        state.optimizer.step()
        update_ema(state.ema, state.model, config.ema_decay, state.step)
    state.optimizer.zero_grad(set_to_none=True)
    state.schedule.step()
    return loss.detach() if finite else None


def count_nonfinite(config: TrainConfig, state: TrainingState, run_dir: Path, reporter: Reporter) -> None:
    state.nonfinite_streak += 1
    reporter.note(f"step {state.step}: non-finite loss or gradient, step skipped ({state.nonfinite_streak} in a row)")
    if state.nonfinite_streak >= config.max_nonfinite:
        raise TrainingDiverged(
            f"training diverged: {state.nonfinite_streak} non-finite steps in a row up to step {state.step}; "
            f"{last_checkpoint(run_dir)}; lower --lr or check the data"
        )


def last_checkpoint(run_dir: Path) -> str:
    name = latest_name(run_dir)
    return f"the last checkpoint is {run_dir / CHECKPOINTS / name}" if name else "no checkpoint was saved"


def save_checkpoint(config: TrainConfig, state: TrainingState, run_dir: Path) -> Path:
    """Commit a checkpoint of ``state``; non-finite weights are refused, and a failed write
    (disk full, no permission) is one clear error with the previous checkpoint intact."""
    if not state.weights_finite():
        raise TrainingDiverged(
            f"weights became non-finite by step {state.step} and were not saved; {last_checkpoint(run_dir)}; lower --lr"
        )
    previous = latest_name(run_dir)
    try:
        return write_checkpoint(run_dir, state.step, state.tensor_groups(), state.json_state(), config.keep_checkpoints)
    except OSError as error:
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise GenflowError(
            f"cannot save the checkpoint at step {state.step} in {run_dir / CHECKPOINTS} ({error.strerror or error}); "
            f"{kept}: free space or fix permissions, then 'genflow train --resume {run_dir}'"
        ) from None


def interrupted(state: TrainingState, run_dir: Path, signum: int) -> TrainingInterrupted:
    name = signal.Signals(signum).name
    checkpoint = run_dir / CHECKPOINTS / f"{latest_name(run_dir)}"
    return TrainingInterrupted(
        f"stopped by {name} after step {state.step}; saved {checkpoint}; continue with 'genflow train --resume {run_dir}'", signum
    )


def train_loop(
    config: TrainConfig,
    process: GaussianProcess,
    state: TrainingState,
    run_dir: Path,
    reporter: Reporter,
    sample_grid: Callable[[nn.Module, int], None],
    evaluate: Callable[[nn.Module], dict] | None = None,
) -> nn.Module:
    """Train ``state`` from its step to ``config.steps``; returns the EMA model. Appends loss
    lines (and ``evaluate(ema)``'s scores every ``eval_every`` steps) to metrics.jsonl, saves a
    checkpoint every ``checkpoint_every`` steps and at the end, then the final weights."""
    reporter.start(config.steps, state.step)
    try:
        run_steps(config, process, state, run_dir, reporter, sample_grid, evaluate)
    finally:
        reporter.finish()
    return state.ema


def run_steps(config: TrainConfig, process: GaussianProcess, state: TrainingState, run_dir: Path, reporter: Reporter,
              sample_grid: Callable[[nn.Module, int], None], evaluate: Callable[[nn.Module], dict] | None) -> None:  # fmt: skip
    started = time.perf_counter() - state.seconds
    saved_step = state.step if state.step else None
    with StopSignals() as signals, (run_dir / METRICS).open("a") as metrics:
        while state.step < config.steps:
            state.step += 1
            loss = optimization_step(config, process, state)
            if loss is None:
                count_nonfinite(config, state, run_dir, reporter)
            else:
                state.nonfinite_streak = 0
            state.seconds = time.perf_counter() - started
            log_step(config, state, loss, metrics, reporter)
            run_callbacks(config, state, metrics, reporter, sample_grid, evaluate)
            stop = signals.received is not None and state.step < config.steps
            if stop or (config.checkpoint_every and state.step % config.checkpoint_every == 0):
                save_checkpoint(config, state, run_dir)
                saved_step = state.step
            if stop:
                raise interrupted(state, run_dir, signals.received)
        if saved_step != state.step:
            save_checkpoint(config, state, run_dir)
        finish(config, state, run_dir, sample_grid)


def log_step(config: TrainConfig, state: TrainingState, loss: Tensor | None, metrics, reporter: Reporter) -> None:
    if loss is None or (state.step % config.log_every and state.step != config.steps):
        return
    value, lr = float(loss), state.schedule.get_last_lr()[0]
    record = {"step": state.step, "loss": value, "lr": lr, "seconds": round(state.seconds, 3)}
    metrics.write(json.dumps(record) + "\n")
    metrics.flush()
    reporter.step(state.step, value, lr)


def run_callbacks(config: TrainConfig, state: TrainingState, metrics, reporter: Reporter, sample_grid, evaluate) -> None:
    """The periodic sample grid and evaluation, on the EMA weights."""
    if config.sample_every and state.step % config.sample_every == 0 and state.step != config.steps:
        sample_grid(state.ema, state.step)
    if evaluate is not None and config.eval_every and state.step % config.eval_every == 0:
        scores = evaluate(state.ema)
        metrics.write(json.dumps({"step": state.step, **scores}) + "\n")
        metrics.flush()
        reporter.note(f"step {state.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))


def finish(config: TrainConfig, state: TrainingState, run_dir: Path, sample_grid: Callable[[nn.Module, int], None]) -> None:
    """The last sample grid and the final weights (the run's ``model``/``ema.safetensors``)."""
    sample_grid(state.ema, config.steps)
    try:
        save_weights(run_dir / RAW_WEIGHTS, state.model.unet)
        save_weights(run_dir / EMA_WEIGHTS, state.ema.unet)
    except OSError as error:
        raise GenflowError(
            f"cannot write the final weights in {run_dir} ({error.strerror or error}); {last_checkpoint(run_dir)}: free space, then 'genflow train --resume {run_dir}'"
        ) from None
