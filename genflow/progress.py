"""Training progress: a rich bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Reporter(Protocol):
    """Where training progress goes: a rich progress bar or plain lines."""

    def start(self, total: int, done: int = 0) -> None: ...
    def step(self, step: int, loss: float, lr: float) -> None: ...
    def note(self, message: str) -> None: ...
    def finish(self) -> None: ...


class PlainReporter:
    """One line per logged step: step, loss, lr, it/s and ETA (for logs and pipes)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def start(self, total: int, done: int = 0) -> None:
        self.total, self.done, self.started = total, done, time.perf_counter()

    def step(self, step: int, loss: float, lr: float) -> None:
        rate = (step - self.done) / max(time.perf_counter() - self.started, 1e-9)
        eta = (self.total - step) / rate
        print(
            f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {rate:.1f} it/s  eta {eta:.0f}s",
            file=self.stream,
            flush=True,
        )

    def note(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def finish(self) -> None:
        pass


class RichReporter:
    """A live progress bar with step, loss, it/s and ETA."""

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[rate]} it/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
        )

    def start(self, total: int, done: int = 0) -> None:
        self.done, self.started = done, time.perf_counter()
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=done, loss=float("nan"), rate="-")

    def step(self, step: int, loss: float, lr: float) -> None:
        rate = (step - self.done) / max(time.perf_counter() - self.started, 1e-9)
        self.progress.update(self.task, completed=step, loss=loss, rate=f"{rate:.1f}")

    def note(self, message: str) -> None:
        self.progress.console.print(message)

    def finish(self) -> None:
        self.progress.stop()


class SilentReporter(PlainReporter):
    def step(self, step: int, loss: float, lr: float) -> None:
        pass

    def note(self, message: str) -> None:
        pass


def reporter_for(stream: TextIO | None = None) -> Reporter:
    """Rich on a terminal, plain lines when not."""
    stream = stream or sys.stderr
    return RichReporter() if stream.isatty() else PlainReporter(stream)
