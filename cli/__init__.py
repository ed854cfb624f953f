"""The ``genflow`` command: a thin Typer layer over :mod:`genflow.api`, one module per command
group (``train``; ``sample``; ``eval`` and ``sweep``; ``list`` and ``info``). This folder is
installed as ``genflow.cli``.

Exit codes: 0 ok, 1 unexpected runtime error, 2 usage or input error (one line naming the
fix, no traceback), 3 training diverged, 130 / 143 interrupted by SIGINT / SIGTERM (after
saving a checkpoint when training; a Ctrl-C while genflow starts is one line and 130 too).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

EXIT_INTERRUPTED = 130


def load_app() -> Any:
    """The Typer app with every command registered, in the order ``--help`` lists them."""
    from genflow.cli import train  # noqa: F401, I001 (each module registers its commands)
    from genflow.cli import sample  # noqa: F401
    from genflow.cli import evaluate  # noqa: F401
    from genflow.cli import show  # noqa: F401
    from genflow.cli.core import app

    return app


def exit_at_once(signum: int, frame: object) -> None:
    """SIGINT while genflow starts: one line and exit 130 now. Raising KeyboardInterrupt in
    the middle of an import instead leaves half-made modules behind (numpy, diffusers), whose
    next use fails with a long unrelated traceback; nothing has been written yet."""
    sys.stderr.write("genflow: interrupted\n")
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def main() -> None:
    """The console script. Until a command has imported what it needs (then
    :func:`genflow.cli.core.fails_cleanly` takes over), a Ctrl-C exits 130 at once."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where SIGINT is ignored (nohup, &)
        signal.signal(signal.SIGINT, exit_at_once)
    load_app()()


def __getattr__(name: str) -> Any:
    if name == "app":  # ``from genflow.cli import app``
        return load_app()
    raise AttributeError(f"module 'genflow.cli' has no attribute {name!r}")


__all__ = ["app", "main"]
