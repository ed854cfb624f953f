"""The state of a training run: everything a checkpoint holds, and how it goes back in place.

Model and EMA weights, the optimizer's moments, the learning-rate schedule, the step, every
random stream (torch's global CPU and CUDA generators, the training-noise generator, the
data-order generator) and the data position (the current epoch's permutation and the index
into it). Tensors go to safetensors; the rest is JSON in the checkpoint's manifest. Restoring
all of it makes a resumed run continue exactly where the interrupted one stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from genflow.config import TrainConfig
from genflow.errors import GenflowError
from genflow.nn import Preconditioner
from genflow.runs.checkpoint import Checkpoint
from genflow.storage import all_finite, cpu_state_dict, load_matching
from genflow.train.batches import BatchStream


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up to the base rate, then cosine decay to zero at ``total`` (Loshchilov & Hutter 2017)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


@dataclass
class TrainingState:
    """The model being trained and everything else that decides its next step."""

    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    batches: BatchStream
    noise: torch.Generator
    step: int = 0
    seconds: float = 0.0
    nonfinite_streak: int = 0

    @classmethod
    def fresh(cls, config: TrainConfig, model: nn.Module, ema: nn.Module, batches: BatchStream) -> TrainingState:
        """AdamW with warm-up and cosine decay, ``batches`` (data order from ``seed``), noise from ``seed + 1``."""
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.warmup_steps, config.steps))
        device = next(model.parameters()).device
        noise = torch.Generator(device=device).manual_seed(config.seed + 1)
        return cls(model, ema, optimizer, schedule, batches, noise)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def weights_finite(self) -> bool:
        return all_finite(self.model) and all_finite(self.ema)

    def tensor_groups(self) -> dict[str, dict[str, Tensor]]:
        """What goes to safetensors: one dict per file."""
        return {
            "model": cpu_state_dict(self.model),
            "ema": cpu_state_dict(self.ema),
            "optimizer": optimizer_tensors(self.optimizer),
            "random": self.random_tensors(),
        }

    def random_tensors(self) -> dict[str, Tensor]:
        streams = {
            "torch_cpu": torch.get_rng_state(),
            "noise": self.noise.get_state(),
        }
        if self.device.type == "cuda":
            streams |= {f"torch_cuda_{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())}
        return streams | self.batches.order.tensors()

    def json_state(self) -> dict[str, Any]:
        """What goes to the manifest."""
        return {
            "step": self.step,
            "seconds": self.seconds,
            "nonfinite_streak": self.nonfinite_streak,
            "device": self.device.type,
            "data_position": self.batches.order.position,
            "schedule": self.schedule.state_dict(),
            "optimizer": optimizer_json(self.optimizer),
        }

    def restore(self, checkpoint: Checkpoint, note: Callable[[str], None]) -> None:
        """Put every part of ``checkpoint`` back; only the random streams of another device
        type cannot be, which is reported (the run goes on, not bit-identically)."""
        try:
            self._restore(checkpoint, note)
        except GenflowError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise GenflowError(
                f"{checkpoint.path} verifies but does not fit this run ({error!r:.200}); was it copied from another run?"
            ) from None

    def _restore(self, checkpoint: Checkpoint, note: Callable[[str], None]) -> None:
        state = checkpoint.state
        load_matching(self.model, Preconditioner.current_keys(checkpoint.tensors("model")), checkpoint.path / "model.safetensors")
        load_matching(self.ema, Preconditioner.current_keys(checkpoint.tensors("ema")), checkpoint.path / "ema.safetensors")
        self.optimizer.load_state_dict(optimizer_state_dict(checkpoint.tensors("optimizer"), state["optimizer"]))
        self.schedule.load_state_dict(state["schedule"])
        random = checkpoint.tensors("random")
        self.batches.restore(random, state["data_position"])
        torch.set_rng_state(random["torch_cpu"])
        if state["device"] == self.device.type:
            self.noise.set_state(random["noise"])
        else:  # a CUDA generator's state does not fit a CPU one, nor the other way round
            self.noise.manual_seed(self.noise.initial_seed() + checkpoint.step)
            note(
                f"checkpoint made on {state['device']}, resumed on {self.device.type}: the training noise restarts from a new seed"
            )
        cuda = [random[f"torch_cuda_{i}"] for i in range(torch.cuda.device_count()) if f"torch_cuda_{i}" in random]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
        self.step, self.seconds, self.nonfinite_streak = checkpoint.step, state["seconds"], state["nonfinite_streak"]


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """The optimizer's per-parameter state as ``"<param index>.<slot>"`` tensors."""
    state = optimizer.state_dict()["state"]
    return {
        f"{index}.{slot}": value.detach().to("cpu").contiguous()
        for index, slots in state.items()
        for slot, value in slots.items()
        if isinstance(value, Tensor)
    }


def optimizer_json(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's hyper-parameters and any non-tensor per-parameter values."""
    saved = optimizer.state_dict()
    scalars = {
        f"{index}.{slot}": value
        for index, slots in saved["state"].items()
        for slot, value in slots.items()
        if not isinstance(value, Tensor)
    }
    return {"param_groups": saved["param_groups"], "scalars": scalars}


def optimizer_state_dict(tensors: dict[str, Tensor], saved: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`optimizer_tensors` and :func:`optimizer_json`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in (tensors | saved["scalars"]).items():
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    groups = [{**group, "betas": tuple(group["betas"])} if "betas" in group else group for group in saved["param_groups"]]
    return {"state": state, "param_groups": groups}
