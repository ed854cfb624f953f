"""The backbones (diffusers' ``UNet2DModel`` and ``DiTTransformer2DModel``) and the
preconditioner in front of them; nothing here knows about processes. The backbone configs
import no torch (the command line lists them); what builds or runs a network imports it on
first use (PEP 562)."""

from genflow.nn.backbones import BACKBONES, BackboneConfig, backbone_for_data, backbone_from_dict
from genflow.nn.dit import DiTConfig
from genflow.nn.unet import PRESETS, UNetConfig, build_unet, preset_for

_LAZY = {"Preconditioner": "genflow.nn.precond", "TIMESTEP_SCALE": "genflow.nn.precond"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'genflow.nn' has no attribute {name!r}")


__all__ = [
    "BACKBONES", "PRESETS", "TIMESTEP_SCALE", "BackboneConfig", "DiTConfig", "Preconditioner", "UNetConfig",
    "backbone_for_data", "backbone_from_dict", "build_unet", "preset_for",
]  # fmt: skip
