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
