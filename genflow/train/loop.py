"""The training loop: AdamW with warm-up and cosine decay, gradient clipping, EMA weights,
metrics.jsonl, sample grids, atomic checkpoints, and a clean stop on SIGINT/SIGTERM.

:class:`Trainer` owns a run: its resolved config and parts (:class:`TrainingSetup`), its
state, its directory, its reporter and its runtime. The loss of a step comes from the
setup's objective; every decision that depends on the process it runs in (who writes, the
slice of the batch, agreeing to stop) is asked of the runtime.

A step whose loss or gradient norm is not finite changes nothing and is reported; after
``max_nonfinite`` of them in a row training stops (:class:`TrainingDiverged`). Weights that
are not finite are never saved.
"""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import torch
from torch import Tensor, nn

from genflow.config import TrainConfig
from genflow.data.image_files import save_samples
from genflow.errors import GenflowError, TrainingDiverged, TrainingInterrupted
from genflow.nn import BackboneConfig, Preconditioner, backbone_from_dict
from genflow.processes import GaussianProcess
from genflow.progress import Reporter, SilentReporter
from genflow.runs.checkpoint import CHECKPOINTS, Checkpoint, describe_latest, latest_name, write_checkpoint
from genflow.runs.files import EMA_WEIGHTS, METRICS, RAW_WEIGHTS, SAMPLES, MetricsLog
from genflow.runtime.base import Runtime
from genflow.runtime.rows import batch_rows
from genflow.sampling.sample import SamplingStats, sample
from genflow.solvers import SOLVERS
from genflow.solvers.guidance import class_rows
from genflow.storage import load_matching, save_weights
from genflow.train.batches import TrainingData
from genflow.train.objective import Objective
from genflow.train.state import TrainingState

GRID_SAMPLES = 64
GRID_PER_CLASS = 8
LONG_RUN_SECONDS = 30 * 60
"""A run whose remaining time is estimated above this gets advice on making it shorter or faster."""
PACE_STEPS = 5
"""Steps after the first of a session (which pays one-time costs) that the first estimate is timed over."""
PACE_RECHECK_SECONDS = 30.0
"""Training seconds the estimate is timed over again before a long run is advised on: a machine
busy at the start (an install finishing, another job) makes the first estimate too long."""


@dataclass
class PaceWatch:
    """When to advise a session on its pace: a first estimate over :data:`PACE_STEPS` steps after
    its first step and, only where that says the run is long, a second over the next
    :data:`PACE_RECHECK_SECONDS` of training, which is the one reported."""

    first: int
    is_long: Callable[[float], bool]
    since: tuple[int, float] | None = None
    """The step and training seconds the estimate in progress is timed from (``None``: no more)."""
    rechecking: bool = False

    def pace_to_advise(self, step: int, seconds: float) -> float | None:
        """The seconds per step to advise on after ``step``, or ``None`` (not yet, or not long)."""
        if step == self.first:
            self.since = (step, seconds)
            return None
        if self.since is None:
            return None
        since_step, since_seconds = self.since
        pace = (seconds - since_seconds) / (step - since_step)
        if not self.rechecking and step == since_step + PACE_STEPS:
            self.since, self.rechecking = ((step, seconds), True) if self.is_long(pace) else (None, False)
        elif self.rechecking and seconds - since_seconds >= PACE_RECHECK_SECONDS:
            self.since = None
            return pace if self.is_long(pace) else None
        return None


@dataclass
class TrainingSetup:
    """What a config resolves to before any file is written: the config with its process
    options and backbone spelled out, the process, the objective, the training data (a
    mapping of tensors, ``images`` first), the runtime and the optional periodic evaluation."""

    config: TrainConfig
    process: GaussianProcess
    objective: Objective
    data: TrainingData
    """In memory, or streamed from image files; a plain mapping of tensors is taken as in memory."""
    runtime: Runtime
    evaluate: Callable[[nn.Module], dict] | None = None
    classes: tuple[str, ...] | None = None
    """The class names of a conditional run (label ``k`` is ``classes[k]``); ``None`` otherwise."""
    initial_weights: Callable[[], Mapping[str, Tensor]] | None = None
    """What reads the backbone weights a fresh run starts from (``init_from``); ``None``: torch's
    initialisation."""

    def __post_init__(self) -> None:
        if not isinstance(self.data, TrainingData):
            self.data = TrainingData(dict(self.data))

    @property
    def backbone_config(self) -> BackboneConfig:
        return backbone_from_dict(self.config.model)


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


class Trainer:
    """Trains a run in ``run_dir`` as ``setup`` says: ``Trainer(setup, run_dir).run()``.

    The model is built (seeded by ``config.seed``) on construction; :meth:`resume_from` puts
    a checkpoint back before :meth:`run`."""

    def __init__(self, setup: TrainingSetup, run_dir: Path, reporter: Reporter | None = None) -> None:
        self.setup, self.config, self.run_dir = setup, setup.config, run_dir
        self.runtime = setup.runtime
        self.reporter = reporter if reporter is not None and self.runtime.is_main else SilentReporter()
        self.state = self.fresh_state()
        self.trainable = self.runtime.wrap(self.state.model)
        self.metrics: MetricsLog | None = None
        self.grid_seconds = 0.0

    def fresh_state(self) -> TrainingState:
        initial = self.setup.initial_weights() if self.setup.initial_weights is not None else None  # before seeding: reading may draw
        torch.manual_seed(self.config.seed)
        process = self.setup.process
        model = Preconditioner(self.setup.backbone_config, process.schedule, process.discrete_steps)
        if initial is not None:
            load_matching(model.backbone, dict(initial), Path(self.config.init_from or "init_from"))
        model = model.to(self.runtime.device)
        ema = copy.deepcopy(model).requires_grad_(False)
        if self.config.gradient_checkpointing:
            model.backbone.enable_gradient_checkpointing()  # diffusers' activation recomputation (Chen et al. 2016)
        if self.config.compile:
            model.backbone.compile(dynamic=False, backend=os.environ.get("GENFLOW_COMPILE_BACKEND", "inductor"))  # in place: same state dict keys
        config = self.config
        batches = self.setup.data.batches(config.batch_size, config.seed, config.random_flip, config.data_workers, self.runtime)
        return TrainingState.fresh(config, model, ema, batches)

    def resume_from(self, checkpoint: Checkpoint | None) -> None:
        """Continue from ``checkpoint``; ``None`` (a run killed before its first one) starts over."""
        if checkpoint is None:
            self.reporter.note(f"{self.run_dir} has no checkpoint yet: training from step 0")
            return
        self.state.restore(checkpoint, self.reporter.note)
        self.reporter.note(f"resuming {self.run_dir} from {checkpoint.path.name} (step {checkpoint.step} of {self.config.steps})")

    # --- the loop ---------------------------------------------------------------------
    def run(self) -> nn.Module:
        """Train from the state's step to ``config.steps``; returns the EMA model. Appends loss
        lines (and the evaluation's scores every ``eval_every`` steps) to metrics.jsonl, saves a
        checkpoint every ``checkpoint_every`` steps and at the end, then the final weights."""
        self.reporter.note(self.describe())
        for note in self.setup.data.notes:
            self.reporter.note(note)
        self.reporter.start(self.config.steps, self.state.step)
        try:
            self.run_steps()
        finally:
            self.reporter.finish()
        return self.state.ema

    def describe(self) -> str:
        """One line saying what this session trains, with the resolved values users tune."""
        config, data, classes = self.config, self.setup.data, self.setup.classes
        labels = f", conditional on {len(classes)} classes with label dropout {config.label_dropout:g}" if classes else ""
        streamed = f" streamed by {self.state.batches.images.workers} workers" if data.files is not None else ""
        flipped = ", random flips" if config.random_flip else ""
        source = f"{config.pairs} (reflow pairs: {data.count} images and their noise" if config.pairs else f"{config.dataset} ({data.count} images"
        return (
            f"{self.run_dir}: {config.process} on {source} of {data.image_shape}{streamed}{flipped}{labels}), "
            f"steps {self.state.step + 1}..{config.steps} of batch {config.batch_size} on {self.describe_hardware()}, "
            f"lr {config.lr:g} after {config.warmup_steps} warm-up steps, ema {config.ema_decay:g}"
        )

    def describe_hardware(self) -> str:
        """``cpu``, or ``2 processes (cuda:0 here), bf16, grad accumulation 2, compiled``: where and how the steps run."""
        config, runtime = self.config, self.runtime
        where = f"{runtime.world_size} processes ({runtime.device} here)" if runtime.world_size > 1 else str(runtime.device)
        how = [config.precision] if config.precision != "fp32" else []
        how += [f"grad accumulation {config.grad_accumulation}"] if config.grad_accumulation > 1 else []
        how += ["gradient checkpointing"] * config.gradient_checkpointing + ["compiled"] * config.compile
        return ", ".join([where, *how])

    def is_long(self, seconds_per_step: float) -> bool:
        """Whether the rest of the run takes longer than :data:`LONG_RUN_SECONDS` at this pace."""
        return (self.config.steps - self.state.step) * seconds_per_step >= LONG_RUN_SECONDS

    def advise_on_pace(self, seconds_per_step: float) -> None:
        """Early in a session: say how long the rest will take when it is long."""
        remaining = (self.config.steps - self.state.step) * seconds_per_step
        if not self.is_long(seconds_per_step):
            return
        faster = (
            "pass --device cuda to train on the GPU"
            if self.runtime.device.type == "cpu" and torch.cuda.is_available()
            else "fewer --steps, a smaller --batch-size or a smaller model (-o model.block_channels=[...]) shorten it"
        )
        self.reporter.note(f"at {seconds_per_step:.2f} s per step the run needs about {remaining / 3600:.1f} h more; {faster}")

    def run_steps(self) -> None:
        config, state = self.config, self.state
        started = time.perf_counter() - state.seconds
        saved_step = state.step if state.step else None
        pace = PaceWatch(first=state.step + 1, is_long=self.is_long)
        self.metrics = MetricsLog(self.run_dir / METRICS) if self.runtime.is_main else None
        try:
            with StopSignals() as signals:
                while state.step < config.steps:
                    state.step += 1
                    loss = self.step()
                    self.count_nonfinite(loss is None)
                    state.seconds = time.perf_counter() - started
                    seconds_per_step = pace.pace_to_advise(state.step, state.seconds)
                    if seconds_per_step is not None:
                        self.advise_on_pace(seconds_per_step)
                    self.log(loss)
                    self.periodic()
                    stop = self.runtime.largest(signals.received or 0) if state.step < config.steps else 0
                    if stop or (config.checkpoint_every and state.step % config.checkpoint_every == 0):
                        self.save_checkpoint()
                        saved_step = state.step
                    if stop:
                        raise self.interrupted(stop)
                if saved_step != state.step:
                    self.save_checkpoint()
                self.finish()
        finally:
            if self.metrics is not None:
                self.metrics.close()

    def step(self) -> Tensor | None:
        """One AdamW step on the next global minibatch; returns its (detached) mean loss over
        every process, or ``None`` (and no change) when the loss or the gradient norm is not
        finite in any process. The LR schedule advances either way, so it follows the step.

        The objective draws the global batch's noise, so this process's slice (and its
        ``grad_accumulation`` micro-batches) sees exactly the draws a one-process run would:
        each micro-batch's summed loss is scaled by ``world_size / batch_size``, which after
        DDP's average over processes is the global batch's mean. The finiteness check is the
        step's one device sync; the loss is read to the host only when it is logged."""
        config, state, runtime = self.config, self.state, self.runtime
        batch = runtime.shard(self.setup.objective.draw(state.batches.next(), state.noise))
        parts = micro_batches(batch, config.grad_accumulation)
        scale, loss_sum = runtime.world_size / config.batch_size, torch.zeros((), device=state.device)
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            with nullcontext() if last else runtime.without_sync(self.trainable):
                with torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                    losses = self.setup.objective.loss(self.trainable, part).float()
                (losses.sum() * scale).backward()
            loss_sum += losses.detach().sum()
        norm = nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip)
        nonfinite = ~(torch.isfinite(loss_sum) & torch.isfinite(norm))
        total = runtime.total(torch.stack([loss_sum, nonfinite.float()]))
        finite = not bool(total[1])  # one device sync per step
        if finite:
            state.optimizer.step()
            update_ema(state.ema, state.model, config.ema_decay, state.step)
        state.optimizer.zero_grad(set_to_none=True)
        state.schedule.step()
        return total[0] / config.batch_size if finite else None

    def count_nonfinite(self, skipped: bool) -> None:
        state = self.state
        if not skipped:
            state.nonfinite_streak = 0
            return
        state.nonfinite_streak += 1
        self.reporter.note(f"step {state.step}: non-finite loss or gradient, step skipped ({state.nonfinite_streak} in a row)")
        if state.nonfinite_streak >= self.config.max_nonfinite:
            raise TrainingDiverged(
                f"training diverged: {state.nonfinite_streak} non-finite steps in a row up to step {state.step}; "
                f"{describe_latest(self.run_dir)}; lower --lr or check the data"
            )

    # --- what the loop writes -----------------------------------------------------------
    def log(self, loss: Tensor | None) -> None:
        """The loss to metrics.jsonl every ``log_every`` steps and at the end; to the reporter
        then, and whenever it asks (the first step of a session, and as time passes)."""
        config, state = self.config, self.state
        logged = state.step % config.log_every == 0 or state.step == config.steps
        if loss is None or not (logged or self.reporter.due(state.step)):
            return
        value, lr = float(loss), state.schedule.get_last_lr()[0]
        if logged and self.metrics is not None:
            self.metrics.write({"step": state.step, "loss": value, "lr": lr, "seconds": round(state.seconds, 3)})
        self.reporter.step(state.step, value, lr)

    def periodic(self) -> None:
        """The periodic sample grid and evaluation, on the EMA weights."""
        config, step = self.config, self.state.step
        if config.sample_every and step % config.sample_every == 0 and step != config.steps:
            self.sample_grid(step)
        if self.setup.evaluate is not None and config.eval_every and step % config.eval_every == 0 and self.runtime.is_main:
            scores = self.setup.evaluate(self.state.ema)
            self.metrics.write({"step": step, **scores})
            self.reporter.note(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))

    def sample_grid(self, step: int) -> None:
        """A grid of EMA samples in ``samples/``, announced (with the last grid's time) and timed."""
        if not self.runtime.is_main:
            return
        process = self.setup.process
        name, sample_steps = self.config.own_sampler(process.default_solver)
        solver = SOLVERS.get(name)
        conditioning, columns = self.grid_conditioning()
        count = len(conditioning.get("labels", ())) or GRID_SAMPLES
        last = f"; the last took {self.grid_seconds:.0f} s" if self.grid_seconds else ""
        how = solver.describe_steps(sample_steps, process.default_grid)
        self.reporter.note(f"step {step}: sampling a grid of {count} ({solver.name}, {how}{last})")
        stats, shape = SamplingStats(), (count, *self.setup.data.image_shape)
        steps, device = solver.fixed_steps(sample_steps), self.runtime.device
        images = sample(self.state.ema, process, shape=shape, solver=name, steps=steps, device=device, stats=stats,
                                **conditioning)  # fmt: skip
        path = save_samples(images, self.run_dir / SAMPLES / f"step-{step:06d}.png", overwrite=True, columns=columns)
        self.grid_seconds = stats.seconds
        self.reporter.note(f"step {step}: grid -> {path} ({stats.seconds:.1f} s)")

    def grid_conditioning(self) -> tuple[dict, int | None]:
        """``genflow.sample``'s labels and seeds for a conditional run's grid, one row of
        :data:`GRID_PER_CLASS` per class (the same seeds in every row), and its width; an
        unconditional run's grid takes seeds 0.. and is square."""
        if not self.setup.classes:
            return {"seed": 0}, None
        labels, seeds = class_rows(range(len(self.setup.classes)), GRID_PER_CLASS)
        return {"labels": labels, "seed": seeds}, GRID_PER_CLASS

    def save_checkpoint(self) -> Path:
        """Commit a checkpoint of the state; non-finite weights are refused, and a failed write
        (disk full, no permission) is one clear error with the previous checkpoint intact."""
        state, run_dir = self.state, self.run_dir
        if not state.weights_finite():
            raise TrainingDiverged(
                f"weights became non-finite by step {state.step} and were not saved; {describe_latest(run_dir)}; lower --lr"
            )
        return self.runtime.decide(self.write_checkpoint)

    def write_checkpoint(self) -> Path:
        state, run_dir = self.state, self.run_dir
        previous = latest_name(run_dir)
        try:
            return write_checkpoint(run_dir, state.step, state.tensor_groups(), state.json_state(), self.config.keep_checkpoints)
        except OSError as error:
            kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
            raise GenflowError(
                f"cannot save the checkpoint at step {state.step} in {run_dir / CHECKPOINTS} ({error.strerror or error}); "
                f"{kept}: free space or fix permissions, then 'genflow train --resume {run_dir}'"
            ) from None

    def interrupted(self, signum: int) -> TrainingInterrupted:
        name, run_dir = signal.Signals(signum).name, self.run_dir
        checkpoint = run_dir / CHECKPOINTS / f"{latest_name(run_dir)}"
        return TrainingInterrupted(
            f"stopped by {name} after step {self.state.step}; saved {checkpoint}; continue with 'genflow train --resume {run_dir}'",
            signum,
        )

    def finish(self) -> None:
        """The last sample grid (unless ``final_grid`` is off) and the final weights (the run's
        ``model``/``ema.safetensors``)."""
        if self.config.final_grid:
            self.sample_grid(self.config.steps)
        self.runtime.decide(self.write_final_weights)

    def write_final_weights(self) -> None:
        try:
            save_weights(self.run_dir / RAW_WEIGHTS, self.state.model.backbone)
            save_weights(self.run_dir / EMA_WEIGHTS, self.state.ema.backbone)
        except OSError as error:
            raise GenflowError(
                f"cannot write the final weights in {self.run_dir} ({error.strerror or error}); {describe_latest(self.run_dir)}: "
                f"free space, then 'genflow train --resume {self.run_dir}'"
            ) from None


def micro_batches(batch: Mapping[str, Tensor], count: int) -> list[dict[str, Tensor]]:
    """``batch`` cut into ``count`` equal consecutive parts (gradient accumulation)."""
    size = len(batch["images"]) // count
    return [batch_rows(batch, i * size, (i + 1) * size) for i in range(count)]
