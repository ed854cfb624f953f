"""Interop with diffusers: export a run as a pipeline folder (:mod:`genflow.interop.export`) and
import a diffusers DDPM/DDIM model as a run (:mod:`genflow.interop.importer`). Imported on
use: both pull in torch and diffusers."""

from __future__ import annotations

from typing import Any

_LAZY = {"export_run": "genflow.interop.export", "import_diffusers": "genflow.interop.importer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'genflow.interop' has no attribute {name!r}")


__all__ = ["export_run", "import_diffusers"]
