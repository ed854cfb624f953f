"""Runs on disk: the run directory and its record (:mod:`~genflow.runs.files`), checkpoints
(:mod:`~genflow.runs.checkpoint`) and what a resume may change (:mod:`~genflow.runs.resume`)."""
