"""Errors genflow raises for bad input.

Every error a user can fix by changing what they passed derives from :class:`GenflowError`.
The command line prints its one-line message and exits with code 2; library callers can
catch it (it is also a :class:`ValueError`).
"""


class GenflowError(ValueError):
    """Bad input that the user can fix; the message names the fix."""


class UnknownNameError(GenflowError):
    """A name (process, solver, grid, option) that genflow does not know."""


class IncompatibleError(GenflowError):
    """A valid solver asked to work with a process that lacks a capability it needs."""


class SharedError(GenflowError):
    """A :class:`GenflowError` met by the main process of a distributed run and raised alike in
    every other, so that all stop together; the main process reports it."""


def reports_errors() -> bool:
    """Whether this process reports errors that every process meets alike: any process outside
    a distributed launch, and rank 0 within one (``RANK``, set by torchrun and accelerate)."""
    import os

    return os.environ.get("RANK", "0") == "0"


class TrainingStopped(Exception):
    """Training ended early, on purpose or not; ``exit_code`` is what the command line returns."""

    exit_code = 1


class TrainingInterrupted(TrainingStopped):
    """SIGINT or SIGTERM arrived; the step in flight was finished and a checkpoint saved.
    The exit code is the shell's ``128 + signal``: 130 for SIGINT, 143 for SIGTERM."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class TrainingDiverged(TrainingStopped):
    """Too many non-finite losses in a row, or weights that became non-finite; exit code 3."""

    exit_code = 3
