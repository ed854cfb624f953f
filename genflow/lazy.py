"""Heavy libraries imported on first use, so that the command line starts in a fraction of a second.

``genflow --help``, ``genflow list`` and argument errors need the registries (names, options,
help texts) but never a tensor, and importing torch alone takes seconds. The modules on that
path bind ``torch = lazy_import("torch")``: a module object whose first attribute access
imports the real module; every access is forwarded to it (one extra call, well under a
microsecond), so monkeypatching the real module is seen too (after optuna's ``_LazyImport``).
Type annotations name ``Tensor`` under ``TYPE_CHECKING`` only. A test checks that the
command line's help, ``list`` and argument errors import no torch.
"""

from __future__ import annotations

import importlib
import types
from typing import Any


class LazyModule(types.ModuleType):
    """A stand-in for the module ``name`` that imports it on first attribute access."""

    _module: types.ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self.__name__)
        return getattr(self._module, attribute)


def lazy_import(name: str) -> Any:
    """The module ``name``, imported when first used (typed ``Any`` so attribute access type-checks)."""
    return LazyModule(name)
