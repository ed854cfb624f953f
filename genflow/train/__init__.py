"""Training: the :class:`Trainer` loop, its state (what a checkpoint holds), the objective
that gives a step its loss, and the runtime that answers rank-dependent questions."""

from genflow.train.batches import Batch, MinibatchStream, TrainingData
from genflow.train.loop import GRID_SAMPLES, StopSignals, Trainer, TrainingSetup, update_ema
from genflow.train.objective import DenoisingObjective, Objective
from genflow.train.runtime import Runtime, SingleProcess, pick_device, runtime_for
from genflow.train.state import TrainingState, warmup_cosine

__all__ = [
    "GRID_SAMPLES",
    "Batch",
    "DenoisingObjective",
    "MinibatchStream",
    "Objective",
    "Runtime",
    "SingleProcess",
    "StopSignals",
    "Trainer",
    "TrainingData",
    "TrainingSetup",
    "TrainingState",
    "pick_device",
    "runtime_for",
    "update_ema",
    "warmup_cosine",
]
