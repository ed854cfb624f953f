"""Values from TOML, ``-o key=value`` or JSON checked against the type their field declares, so
that a wrong type is one line naming the key before it reaches any arithmetic (``timesteps =
1.5`` would otherwise fail at the first training step)."""

from __future__ import annotations

from typing import Any

from genflow.errors import GenflowError

TYPE_NAMES = {int: "a whole number", float: "a number", str: "text", bool: "true or false", dict: "a table"}


def typed_value(key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the field's type ``hint`` (``int``, ``float``, ``str``,
    ``bool``, ``dict`` or ``str | None``); an int is accepted (and converted) where a float is."""
    if hint == str | None:
        hint = str if value is not None else type(None)
    kind = getattr(hint, "__origin__", hint)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    raise GenflowError(f"{key} must be {TYPE_NAMES.get(kind, kind.__name__)}, not {value!r}")


SEED_LIMIT = 2**63
"""Seeds lie in ``[-2**63, 2**63)``: what torch's generators take, with room for per-sample seeds."""


def check_seed(seed: Any, count: int = 1, name: str = "seed") -> int:
    """``seed`` if it and the ``count - 1`` per-sample seeds after it (``seed + i``) are whole
    numbers a generator takes; else one line naming the range."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not -SEED_LIMIT <= seed <= SEED_LIMIT - count:
        raise GenflowError(f"{name} must be a whole number from {-SEED_LIMIT} to {SEED_LIMIT - count}, not {seed!r}")
    return seed
