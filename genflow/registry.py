"""Name -> entry tables with "did you mean" errors.

Adding a process or a solver is one entry in a :class:`Registry`; looking one up by a
misspelt name raises :class:`~genflow.errors.UnknownNameError` with the closest names.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from genflow.errors import UnknownNameError

T = TypeVar("T")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A short hint naming the closest choices to ``name``, or listing all of them."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "choose from: " + ", ".join(choices) if choices else "there are none"


def unknown(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    """The error for an unknown ``kind`` called ``name``."""
    return UnknownNameError(f"unknown {kind} {name!r}; {did_you_mean(name, choices)}")


class Registry(Generic[T]):
    """An ordered mapping from public names to entries of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise unknown(self.kind, name, self._entries) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries
