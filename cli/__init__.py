"""The ``genflow`` command: a thin Typer layer over :mod:`genflow.api`, one module per command
group (``train``; ``sample``; ``eval`` and ``sweep``; ``list`` and ``info``). This folder is
installed as ``genflow.cli``.

Exit codes: 0 ok, 1 unexpected runtime error, 2 usage or input error (one line naming the
fix, no traceback), 3 training diverged, 130 / 143 interrupted by SIGINT / SIGTERM (after
saving a checkpoint when training).
"""

# Each module registers its commands on the app, in the order --help lists them.
from genflow.cli import train  # noqa: F401, I001
from genflow.cli import sample  # noqa: F401
from genflow.cli import evaluate  # noqa: F401
from genflow.cli import show  # noqa: F401
from genflow.cli.core import app


def main() -> None:
    app()


__all__ = ["app", "main"]
