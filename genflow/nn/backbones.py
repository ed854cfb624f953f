"""The backbones a run can train, by name: ``--backbone unet|dit`` (``model.backbone``).

A backbone is a config class (a frozen dataclass) that knows its defaults for the data's
shape (``for_data``), builds its network (``build``), calls it at the preconditioner's inputs
(``run``), names itself (``describe``) and round-trips through ``to_dict`` / ``from_dict``
(the ``model`` table of a run's ``config.json``, which records ``backbone``; runs from before
it are UNet runs). Adding one is one file and one line below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from genflow.nn.dit import DiTConfig
from genflow.nn.unet import UNetConfig
from genflow.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor, nn

DEFAULT_BACKBONE = "unet"


class BackboneConfig(Protocol):
    """What the preconditioner and the run files need of a backbone's config."""

    name: str
    channels: int
    resolution: int
    num_classes: int
    time_embedding: str

    @property
    def null_label(self) -> int | None: ...

    def build(self) -> nn.Module: ...

    def run(self, network: nn.Module, x: Tensor, timestep: Tensor, labels: Tensor | None) -> Tensor: ...

    def describe(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


BACKBONES: Registry[type] = Registry("backbone")
BACKBONES.add("unet", UNetConfig)
BACKBONES.add("dit", DiTConfig)


def backbone_class(model: dict[str, Any]) -> type:
    """The config class a ``model`` table names (``unet`` where it names none)."""
    return BACKBONES.get(model.get("backbone") or DEFAULT_BACKBONE)


def backbone_from_dict(model: dict[str, Any]) -> BackboneConfig:
    """A run's recorded ``model`` table as its backbone's config."""
    return backbone_class(model).from_dict(model)


def backbone_for_data(model: dict[str, Any], channels: int, resolution: int, num_classes: int) -> BackboneConfig:
    """The backbone a new run on data of this shape trains: the named backbone's default for the
    resolution, with the ``model`` keys given."""
    return backbone_class(model).for_data(channels, resolution, num_classes, model)
