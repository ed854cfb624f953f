"""Neural network backbones."""

from genflow.nn.unet import PRESETS, UNet, UNetConfig, preset_for

__all__ = ["PRESETS", "UNet", "UNetConfig", "preset_for"]
