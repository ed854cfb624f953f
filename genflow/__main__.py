"""``python -m genflow`` is the ``genflow`` command."""

from genflow.cli import main

main()
