"""Training: the :class:`Trainer` loop, its state (what a checkpoint holds), the objective
that gives a step its loss, the batch streams, and starting or resuming a run (:mod:`genflow.train.session`)."""

from genflow.train.batches import BatchStream, TrainingData
from genflow.train.loop import GRID_SAMPLES, StopSignals, Trainer, TrainingSetup, update_ema
from genflow.train.objective import DenoisingObjective, Objective
from genflow.train.state import TrainingState, warmup_cosine

__all__ = [
    "GRID_SAMPLES",
    "BatchStream",
    "DenoisingObjective",
    "Objective",
    "StopSignals",
    "Trainer",
    "TrainingData",
    "TrainingSetup",
    "TrainingState",
    "update_ema",
    "warmup_cosine",
]
