"""The verbs, in one place: train a run, resume it, load it, sample it, score it, and the few-step
and diffusers ones. A facade over the parts, for the command line and for scripts: it sits on top
and nothing in genflow imports it (docs/design.md, "Layers"). Training lives in
:mod:`genflow.train.session`, loaded runs and their sampling in :mod:`genflow.runs.loaded`,
scoring in :mod:`genflow.eval.scoring`, run files in :mod:`genflow.runs.files`."""

from __future__ import annotations

from genflow.data.image_files import check_output, check_scale, save_samples
from genflow.eval.scoring import evaluate_run, evaluate_samples_file, negative_log_likelihood
from genflow.fewstep.reflow import distill, reflow, straightness
from genflow.interop.export import export_run
from genflow.interop.importer import import_diffusers
from genflow.runs.files import checkpoint_status, read_run
from genflow.runs.loaded import ClassRequest, LoadedRun, check_conditioning, load, sample_run, samples_folder
from genflow.train.session import prepare, resume, train

__all__ = [
    "ClassRequest",
    "LoadedRun",
    "check_conditioning",
    "check_output",
    "check_scale",
    "checkpoint_status",
    "distill",
    "evaluate_run",
    "evaluate_samples_file",
    "export_run",
    "import_diffusers",
    "load",
    "negative_log_likelihood",
    "prepare",
    "read_run",
    "reflow",
    "resume",
    "sample_run",
    "samples_folder",
    "save_samples",
    "straightness",
    "train",
]
