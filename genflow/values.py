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


MAX_SAMPLING_STEPS = 100_000
"""More solver steps than any sampler needs (1000 already reaches an ODE's limit); a grid of more
would only fill memory."""


MAX_SAMPLES = 1_000_000
"""More samples than any score uses (FID takes 50,000); their images alone would fill memory."""


def check_count(name: str, value: Any, limit: int | None = None) -> int:
    """``value`` if it is a whole number from 1 to ``limit`` (no limit: any); else one line naming
    the option and its range."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (limit is not None and value > limit):
        bounds = f"from 1 to {limit}" if limit is not None else ">= 1"
        raise GenflowError(f"{name} must be a whole number {bounds}, not {value!r}")
    return value


def check_fraction(name: str, value: Any) -> float:
    """``value`` if it is a number from 0 to below 1 (a dropout rate); else one line naming the option."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1:
        raise GenflowError(f"{name} must be a number from 0 to below 1, not {value!r}")
    return value


def check_seed(seed: Any, count: int = 1, name: str = "seed") -> int:
    """``seed`` if it and the ``count - 1`` per-sample seeds after it (``seed + i``) are whole
    numbers a generator takes; else one line naming the range."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not -SEED_LIMIT <= seed <= SEED_LIMIT - count:
        raise GenflowError(f"{name} must be a whole number from {-SEED_LIMIT} to {SEED_LIMIT - count}, not {seed!r}")
    return seed
