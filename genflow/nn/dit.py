"""The transformer backbone: diffusers' ``DiTTransformer2DModel`` (Peebles & Xie 2023), a ViT
over ``p x p`` patches whose blocks are conditioned on the time and class by adaLN-Zero.

It serves every process as the UNet does: the preconditioner feeds it the same timestep (a
discrete process's step index, else ``999 t``), and its class embedding has one row more than
there are classes, the null label of classifier-free guidance, as diffusers' own DiT has
(``LabelEmbedding``, null row ``num_classes``). Two things differ from the stock module, and
both are done here, on the module diffusers builds, so its weights stay a stock
``DiTTransformer2DModel``'s:

- diffusers drops 10% of the labels itself while training (``class_dropout_prob``), in every
  block separately; genflow drops labels once per image in the objective (``label_dropout``),
  so that dropout is switched off and only its null row is kept;
- diffusers initialises every layer as torch does; DiT's adaLN-Zero zeroes each block's
  modulation and the final layer, so every block starts as the identity (Peebles & Xie 2023,
  section 3.2; their ``initialize_weights``), which :func:`initialise_as_dit` does.

An unconditional DiT has one class (the embedding is not optional in diffusers' DiT), always
label 0. Sizes follow the paper's table 1 (S, B, L, XL) with patch 2, 4 or 8 (``model.size=B/4``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from genflow.errors import GenflowError
from genflow.lazy import lazy_import
from genflow.values import check_count, check_fraction

if TYPE_CHECKING:
    from diffusers import DiTTransformer2DModel
    from torch import Tensor, nn

torch = lazy_import("torch")  # the config is read by the command line, which must not wait for torch
diffusers = lazy_import("diffusers")
embeddings = lazy_import("diffusers.models.embeddings")

SIZES: dict[str, dict[str, int]] = {  # Peebles & Xie 2023, table 1: layers, hidden size, heads
    "S": {"depth": 12, "width": 384, "heads": 6},
    "B": {"depth": 12, "width": 768, "heads": 12},
    "L": {"depth": 24, "width": 1024, "heads": 16},
    "XL": {"depth": 28, "width": 1152, "heads": 16},
}
PATCHES = (2, 4, 8)
NAMED_SIZES = tuple(f"{size}/{patch}" for size in SIZES for patch in PATCHES)

DEFAULTS: dict[int, dict[str, int]] = {
    8: {"patch_size": 2, "width": 128, "depth": 6, "heads": 4},  # the 8x8 digits: 16 tokens, 1.7M parameters
    32: {"patch_size": 2, "width": 256, "depth": 8, "heads": 4},  # CIFAR-10 and 4x32x32 latents: 256 tokens
    64: {"patch_size": 4, "width": 384, "depth": 12, "heads": 6},  # DiT-S/4
}


@dataclass(frozen=True)
class DiTConfig:
    """A DiT's shape; channels, resolution and classes come from the data."""

    name: ClassVar[str] = "dit"
    time_embedding: ClassVar[str] = "step"
    """What the timestep embedding is fed (as for the UNet: the step index of a discrete process)."""

    channels: int = 1
    resolution: int = 8
    patch_size: int = 2
    width: int = 128
    depth: int = 6
    heads: int = 4
    dropout: float = 0.0
    num_classes: int = 0

    def __post_init__(self) -> None:
        self.check_shape()

    def check_shape(self) -> None:
        """Refuse, naming the option, a value of the wrong type or outside its range, and a shape
        DiT cannot take: before any file is written or any layer built."""
        for name in ("channels", "resolution", "patch_size", "width", "depth", "heads"):
            check_count(f"model.{name}", getattr(self, name))
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 0:
            raise GenflowError(f"model.num_classes must be a whole number >= 0, not {self.num_classes!r}")
        check_fraction("model.dropout", self.dropout)
        if self.resolution % self.patch_size:
            raise GenflowError(f"model.patch_size {self.patch_size} does not divide the resolution {self.resolution}; choose one that does")
        if self.width % self.heads:
            raise GenflowError(f"model.width {self.width} is not a multiple of model.heads {self.heads}")

    @property
    def null_label(self) -> int | None:
        """The label that means "no class" (the embedding's last row); ``None`` when unconditional."""
        return self.num_classes if self.num_classes else None

    @property
    def tokens(self) -> int:
        return (self.resolution // self.patch_size) ** 2

    def size_name(self) -> str:
        """``DiT-S/2`` and the like where the shape is one of the paper's, else the shape itself."""
        for size, shape in SIZES.items():
            if all(getattr(self, k) == v for k, v in shape.items()):
                return f"DiT-{size}/{self.patch_size}"
        return f"DiT (patch {self.patch_size}, width {self.width}, depth {self.depth}, {self.heads} heads)"

    def describe(self) -> str:
        return f"{self.size_name()}, {self.tokens} tokens"

    @classmethod
    def for_data(cls, channels: int, resolution: int, num_classes: int, overrides: dict) -> DiTConfig:
        """The default for this resolution (the nearest in :data:`DEFAULTS`, with a patch that
        divides it), then a named ``size`` (``S/2``), then every other key given."""
        nearest = DEFAULTS[min(DEFAULTS, key=lambda r: abs(r - resolution))]
        values = {**nearest, "patch_size": largest_patch(resolution, nearest["patch_size"])}
        values |= named_size(overrides.get("size"))
        values |= {k: v for k, v in overrides.items() if k != "size"}
        return cls.from_dict(values | {"channels": channels, "resolution": resolution, "num_classes": num_classes})

    @classmethod
    def from_dict(cls, values: dict) -> DiTConfig:
        values = {k: v for k, v in values.items() if k != "backbone"}  # a run's record names its backbone
        values = {**named_size(values.pop("size", None)), **values}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise GenflowError(f"unknown DiT option model.{unknown[0]}; choose from {', '.join(sorted(known | {'size'}))}")
        return cls(**values)

    def to_dict(self) -> dict:
        return {"backbone": self.name, **dataclasses.asdict(self)}

    def build(self) -> DiTTransformer2DModel:
        """A freshly initialised DiT of this shape (weights from torch's global generator)."""
        network = diffusers.DiTTransformer2DModel(
            num_attention_heads=self.heads,
            attention_head_dim=self.width // self.heads,
            in_channels=self.channels,
            out_channels=self.channels,
            num_layers=self.depth,
            dropout=self.dropout,
            sample_size=self.resolution,
            patch_size=self.patch_size,
            num_embeds_ada_norm=max(self.num_classes, 1),
        )
        for embedding in network.modules():
            if isinstance(embedding, embeddings.LabelEmbedding):
                embedding.dropout_prob = 0.0  # genflow drops labels in the objective; the null row stays
        initialise_as_dit(network)
        return network

    def run(self, network: nn.Module, x: Tensor, timestep: Tensor, labels: Tensor | None) -> Tensor:
        """The network's output at backbone inputs (an unconditional DiT's one class is label 0)."""
        if labels is None:
            labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return network(x, timestep, class_labels=labels).sample


def named_size(name: object) -> dict[str, int]:
    """The shape of a named size such as ``B/4``; nothing for ``None``."""
    if name is None:
        return {}
    size, _, patch = str(name).upper().removeprefix("DIT-").partition("/")
    if size not in SIZES or not patch.isdigit() or int(patch) not in PATCHES:
        raise GenflowError(f"model.size {name!r} is not a DiT size; choose from {', '.join(NAMED_SIZES)}")
    return {**SIZES[size], "patch_size": int(patch)}


def largest_patch(resolution: int, patch: int) -> int:
    """``patch``, or the largest smaller power of two that divides ``resolution``."""
    while resolution % patch:
        patch //= 2
    return max(patch, 1)


def initialise_as_dit(network: DiTTransformer2DModel) -> None:
    """DiT's initialisation (Peebles & Xie 2023, section 3.2): Xavier-uniform linear layers and
    patch projection with zero biases, N(0, 0.02) class and timestep embeddings, and zero
    adaLN modulation in every block and in the final layer, so each block starts as the
    identity and the network's output at zero (``torch.nn.init`` changes weights without autograd)."""
    nn = torch.nn
    for module in network.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    projection = network.pos_embed.proj
    nn.init.xavier_uniform_(projection.weight.view(projection.weight.shape[0], -1))
    nn.init.zeros_(projection.bias)
    for block in network.transformer_blocks:
        embedding = block.norm1.emb
        nn.init.normal_(embedding.class_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(embedding.timestep_embedder.linear_1.weight, std=0.02)
        nn.init.normal_(embedding.timestep_embedder.linear_2.weight, std=0.02)
        nn.init.zeros_(block.norm1.linear.weight)
        nn.init.zeros_(block.norm1.linear.bias)
    for layer in (network.proj_out_1, network.proj_out_2):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
