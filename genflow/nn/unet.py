"""The shared backbone: diffusers' ``UNet2DModel``, its shape and the presets by resolution.

The backbone knows nothing about processes or process time; :mod:`genflow.nn.precond` puts
it behind ``model(x, t)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from genflow.errors import GenflowError
from genflow.lazy import lazy_import
from genflow.values import check_count, check_fraction

if TYPE_CHECKING:
    from diffusers import UNet2DModel
    from torch import Tensor, nn

diffusers = lazy_import("diffusers")  # the config is read by the command line, which must not wait for torch

ATTENTION_HEAD_DIM = 32
TIME_EMBEDDINGS = ("step", "999t")


@dataclass(frozen=True)
class UNetConfig:
    """The backbone's shape; channels and resolution come from the data."""

    name: ClassVar[str] = "unet"
    channels: int = 1
    resolution: int = 8
    block_channels: tuple[int, ...] = (32, 64, 64)
    attention: tuple[bool, ...] = (False, False, False)
    layers_per_block: int = 1
    norm_groups: int = 16
    dropout: float = 0.0
    num_classes: int = 0
    """Classes of a class-conditional backbone (0: unconditional). Its embedding has one row
    more, the null label ``num_classes``, which classifier-free guidance trains and samples as
    "no class" (Ho & Salimans 2022)."""
    time_embedding: str = "step"
    """What the embedding is fed: ``step``, a discrete process's integer step index as diffusers
    feeds it (``999 t`` in continuous time); ``999t``, what runs of genflow-run/2 and older were
    trained with for every process."""
    diffusers: dict | None = None
    """An imported backbone's ``UNet2DModel`` config, built as it is (the shape fields above then
    only describe it); ``None`` for genflow's own backbone, built from the fields above."""

    def __post_init__(self) -> None:
        for name in ("block_channels", "attention"):  # lists from JSON, TOML or a caller's literal
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.time_embedding not in TIME_EMBEDDINGS:
            raise GenflowError(f"model.time_embedding must be one of {', '.join(TIME_EMBEDDINGS)}, not {self.time_embedding!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise GenflowError(f"model.num_classes must be a whole number >= 0, not {self.num_classes!r}")
        if self.diffusers is None:
            self.check_shape()

    def check_values(self) -> None:
        """Refuse, naming the option, a value of the wrong type or outside its range (``-o model.KEY``
        values come from the command line): before any file is written or any layer built."""
        for name in ("channels", "resolution", "layers_per_block", "norm_groups"):
            check_count(f"model.{name}", getattr(self, name))
        channels = self.block_channels
        if not isinstance(channels, tuple) or not channels or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in channels):
            raise GenflowError(f"model.block_channels must be a list of whole numbers >= 1 such as [32,64,64], not {channels!r}")
        if not isinstance(self.attention, tuple) or not all(isinstance(a, bool) for a in self.attention):
            raise GenflowError(f"model.attention must be a list of true/false such as [false,true,false], not {self.attention!r}")
        check_fraction("model.dropout", self.dropout)

    def check_shape(self) -> None:
        """Refuse a shape genflow's builder cannot make, naming the option."""
        self.check_values()
        if len(self.attention) != len(self.block_channels):
            raise GenflowError("model.attention needs one true/false per entry of model.block_channels")
        if any(c % self.norm_groups for c in self.block_channels):
            raise GenflowError(f"model.block_channels must be multiples of model.norm_groups ({self.norm_groups})")
        attended = [c for c, a in zip(self.block_channels, self.attention, strict=True) if a] + [self.block_channels[-1]]
        if min(attended) < ATTENTION_HEAD_DIM:
            raise GenflowError(
                f"model.block_channels: blocks with attention, and the last one (it feeds the middle block's attention), need at "
                f"least {ATTENTION_HEAD_DIM} channels (one attention head), not {min(attended)}"
            )
        if self.resolution % 2 ** (len(self.block_channels) - 1):
            raise GenflowError(f"resolution {self.resolution} cannot be halved {len(self.block_channels) - 1} times")

    @property
    def null_label(self) -> int | None:
        """The label that means "no class" (the embedding's last row); ``None`` when unconditional."""
        return self.num_classes if self.num_classes else None

    def describe(self) -> str:
        if self.diffusers is not None:
            return "imported UNet2DModel"
        return f"UNet, channels {list(self.block_channels)}, attention {[int(a) for a in self.attention]}"

    @classmethod
    def for_data(cls, channels: int, resolution: int, num_classes: int, overrides: dict) -> UNetConfig:
        """The preset for this resolution (the nearest in :data:`PRESETS`) with the keys given."""
        shape = {"channels": channels, "resolution": resolution, "num_classes": num_classes}
        return cls.from_dict({**preset_for(channels, resolution).to_dict(), **overrides, **shape})

    def build(self) -> UNet2DModel:
        return build_unet(self)

    def run(self, network: nn.Module, x: Tensor, timestep: Tensor, labels: Tensor | None) -> Tensor:
        """The network's output at backbone inputs."""
        return network(x, timestep, class_labels=labels).sample

    @classmethod
    def from_dict(cls, values: dict) -> UNetConfig:
        values = {k: v for k, v in values.items() if k != "backbone"}  # a run's record names its backbone
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise GenflowError(f"unknown model option {unknown[0]!r}; choose from {', '.join(sorted(known))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**values)

    def to_dict(self) -> dict:
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        return {"backbone": self.name, **values}


PRESETS: dict[int, dict] = {
    8: {"block_channels": (32, 64, 64), "attention": (False, False, False)},  # 1.06M parameters
    28: {"block_channels": (64, 128, 128), "attention": (False, True, False), "layers_per_block": 2},
    32: {"block_channels": (64, 128, 256), "attention": (False, True, False), "layers_per_block": 2},
}


def preset_for(channels: int, resolution: int) -> UNetConfig:
    """The default backbone for data of this shape (the nearest preset by resolution)."""
    nearest = min(PRESETS, key=lambda r: abs(r - resolution))
    return UNetConfig(channels=channels, resolution=resolution, **PRESETS[nearest])


def build_unet(config: UNetConfig) -> UNet2DModel:
    """A freshly initialised ``UNet2DModel`` of this shape (weights from torch's global generator);
    a conditional one adds diffusers' class embedding (``num_class_embeds``), null row included.
    An imported backbone is built from its own diffusers config."""
    if config.diffusers is not None:
        return diffusers.UNet2DModel.from_config(config.diffusers)
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in config.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention))
    return diffusers.UNet2DModel(
        sample_size=config.resolution,
        in_channels=config.channels,
        out_channels=config.channels,
        block_out_channels=config.block_channels,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_groups,
        attention_head_dim=ATTENTION_HEAD_DIM,
        dropout=config.dropout,
        num_class_embeds=config.num_classes + 1 if config.num_classes else None,
    )
