"""The backbone (diffusers' ``UNet2DModel``) and the preconditioner in front of it; nothing
here knows about processes."""

from genflow.nn.precond import TIMESTEP_SCALE, Preconditioner
from genflow.nn.unet import PRESETS, UNetConfig, build_unet, preset_for

__all__ = ["PRESETS", "TIMESTEP_SCALE", "Preconditioner", "UNetConfig", "build_unet", "preset_for"]
