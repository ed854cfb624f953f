"""The ``genflow`` command: a thin Typer layer over :mod:`genflow.api`, one module per command
group (``train``; ``sample``; ``eval`` and ``sweep``; ``list`` and ``info``; ``reflow`` and
``distill``; ``export`` and ``import``). This folder is
installed as ``genflow.cli``.

Exit codes: 0 ok, 1 unexpected runtime error, 2 usage or input error (one line naming the
fix, no traceback), 3 training diverged, 130 / 143 interrupted by SIGINT / SIGTERM (after
saving a checkpoint when training; a Ctrl-C while genflow starts is one line and 130 too).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

EXIT_INTERRUPTED = 130
WIDTH_WITHOUT_TERMINAL = 160
"""Columns of help and tables written to a pipe or a log, where rich would assume 80 and cut
option names short (``--grad-accumulati…``)."""


def load_app() -> Any:
    """The Typer app with every command registered, in the order ``--help`` lists them."""
    from genflow.cli import train  # noqa: F401, I001 (each module registers its commands)
    from genflow.cli import sample  # noqa: F401
    from genflow.cli import evaluate  # noqa: F401
    from genflow.cli import show  # noqa: F401
    from genflow.cli import few_step  # noqa: F401
    from genflow.cli import interop  # noqa: F401
    from genflow.cli.core import app

    return app


def importing(frame: FrameType | None) -> bool:
    """Whether ``frame`` or a caller runs inside Python's import machinery."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT: KeyboardInterrupt, which every command turns into one line and exit 130
    (training first saves a checkpoint, under its own handler), except inside an import
    (torch and diffusers take seconds to import, on first use): cut short, an import leaves
    half-made modules behind (numpy, diffusers) whose next use fails with a long unrelated
    traceback, so there genflow flushes its output, says so and exits 130 at once. Imports
    happen before a command writes anything, except PIL's lazily loaded image plugins: a
    sample file interrupted then leaves at most a hidden ``.NAME.*.tmp``, never a partial file."""
    if not importing(frame):
        raise KeyboardInterrupt
    sys.stdout.flush()
    sys.stderr.write("genflow: interrupted\n")
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def readable_without_terminal() -> None:
    """Give rich a wide page when stdout is not a terminal and the user set no ``COLUMNS``."""
    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        os.environ["COLUMNS"] = str(WIDTH_WITHOUT_TERMINAL)


def main() -> None:
    """The console script."""
    readable_without_terminal()
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where SIGINT is ignored (nohup, &)
        signal.signal(signal.SIGINT, interrupt)
    load_app()()


def __getattr__(name: str) -> Any:
    if name == "app":  # ``from genflow.cli import app``
        return load_app()
    raise AttributeError(f"module 'genflow.cli' has no attribute {name!r}")


__all__ = ["app", "main"]
