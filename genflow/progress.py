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
    def due(self, step: int) -> bool:
        """Whether to report ``step`` although it is not a logging step."""
        ...
    def step(self, step: int, loss: float, lr: float) -> None: ...
    def note(self, message: str) -> None: ...
    def finish(self) -> None: ...


def duration(seconds: float) -> str:
    """``42s``, ``7m05s`` or ``2h13m``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class PlainReporter:
    """A line per logged step, for the first step of a session at once, and at least every
    ``interval`` seconds: step, loss, lr, steps per second and the time left (logs and pipes)."""

    def __init__(self, stream: TextIO | None = None, interval: float = 30.0) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval

    def start(self, total: int, done: int = 0) -> None:
        self.total, self.done = total, done
        self.started = self.last_line = time.perf_counter()

    def due(self, step: int) -> bool:
        return step == self.done + 1 or time.perf_counter() - self.last_line >= self.interval

    def step(self, step: int, loss: float, lr: float) -> None:
        self.last_line = time.perf_counter()
        rate = (step - self.done) / max(self.last_line - self.started, 1e-9)
        print(
            f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {rate:.2f} it/s  eta {duration((self.total - step) / rate)}",
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
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} it/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
        )

    def start(self, total: int, done: int = 0) -> None:
        self.done = done
        self.started = self.last_update = time.perf_counter()
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=done, loss="-", rate="-")  # no loss before the first step

    def due(self, step: int) -> bool:
        """The first step, then twice a second: reading the loss makes the host wait for the device."""
        return step == self.done + 1 or time.perf_counter() - self.last_update >= 0.5

    def step(self, step: int, loss: float, lr: float) -> None:
        self.last_update = time.perf_counter()
        rate = (step - self.done) / max(self.last_update - self.started, 1e-9)
        self.progress.update(self.task, completed=step, loss=f"{loss:.4f}", rate=f"{rate:.1f}")

    def note(self, message: str) -> None:
        self.progress.console.print(message)

    def finish(self) -> None:
        self.progress.stop()


class SilentReporter(PlainReporter):
    def due(self, step: int) -> bool:
        return False

    def step(self, step: int, loss: float, lr: float) -> None:
        pass

    def note(self, message: str) -> None:
        pass


def reporter_for(stream: TextIO | None = None) -> Reporter:
    """Rich on a terminal, plain lines when not."""
    stream = stream or sys.stderr
    return RichReporter() if stream.isatty() else PlainReporter(stream)
