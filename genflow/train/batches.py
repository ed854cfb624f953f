"""Where a training step's images come from: one seeded data order, and one stream of batches
along it (:class:`BatchStream`), whose images are in memory or in files.

:class:`DataOrder` is the order: a permutation of the dataset per epoch (and, with random
flips, a coin per image) drawn from one generator, and a position in it. A checkpoint holds
its generator, permutation, coins and position, so a resumed run reads the same next images as
an uninterrupted one, mid-epoch included.

- :class:`ImagesInMemory`: uint8 pixels (or floats for the digits); a batch is an index into them.
- :class:`ImagesFromFiles`: the images stay in files (:class:`genflow.data.folders.ImageFiles`);
  ``torch.utils.data`` worker processes decode the batches a few steps ahead, following a copy
  of the order. Under torch.distributed each process decodes only its rows of the global
  batch, and the processes exchange the decoded pixels (uint8), so every process holds the
  global batch the objective draws its noise for, exactly as in memory.

Either way the batch is the same for the same order: ``images`` as floats in [-1, 1], mirrored
where the coin says, and any other per-image tensor (``labels``, paired ``noise``) indexed alike.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from genflow.data.folders import ImageFiles, default_workers, image_loader
from genflow.data.pixels import as_unit_range
from genflow.errors import GenflowError
from genflow.runtime.base import Runtime, SingleProcess
from genflow.runtime.rows import Batch


def check_batch_size(batch_size: int, images: int) -> None:
    if batch_size > images:
        raise GenflowError(f"batch_size {batch_size} is larger than the dataset ({images} images); lower --batch-size")


class DataOrder:
    """Minibatches of indices into ``size`` images: a fresh permutation every epoch (the last,
    incomplete batch of an epoch is dropped), and with ``flip`` a coin per image, both from
    one generator seeded by ``seed``."""

    def __init__(self, size: int, batch_size: int, seed: int, flip: bool = False) -> None:
        check_batch_size(batch_size, size)
        self.size, self.batch_size, self.flip = size, batch_size, flip
        self.generator = torch.Generator().manual_seed(seed)
        self.new_epoch()

    def new_epoch(self) -> None:
        self.order, self.position = torch.randperm(self.size, generator=self.generator), 0
        self.flips = torch.randint(0, 2, (self.size,), generator=self.generator).bool() if self.flip else None

    def next(self) -> tuple[Tensor, Tensor | None]:
        """The next batch's indices and, with flips, which of them are mirrored."""
        if self.position + self.batch_size > self.size:
            self.new_epoch()
        window = slice(self.position, self.position + self.batch_size)
        self.position += self.batch_size
        return self.order[window], None if self.flips is None else self.flips[window]

    def rows(self, rank: int, world_size: int) -> Iterator[list[int]]:
        """From here on, forever, the indices of rank ``rank``'s share of each batch: a copy of
        the order, taken now, read ahead."""
        return shares(copy.deepcopy(self), rank, world_size)

    def tensors(self) -> dict[str, Tensor]:
        """What a checkpoint holds of the order (its position goes to the manifest)."""
        saved = {"data": self.generator.get_state(), "data_order": self.order}
        return saved | ({"data_flips": self.flips} if self.flips is not None else {})

    def restore(self, tensors: Mapping[str, Tensor], position: int) -> None:
        order = tensors["data_order"]
        if len(order) != self.size:
            raise GenflowError(
                f"the checkpoint's data order covers {len(order)} images, the dataset has {self.size}; resume with the same data"
            )
        if not torch.equal(order.sort().values, torch.arange(len(order))) or not 0 <= position <= len(order):
            raise GenflowError("the checkpoint's data order is not a permutation of the dataset, or its position lies outside it")
        if self.flip and tensors.get("data_flips") is None:
            raise GenflowError("the checkpoint holds no random flips; resume with the run's own random_flip")
        self.order, self.position = order.clone(), position
        self.flips = tensors["data_flips"].clone().bool() if self.flip else None
        self.generator.set_state(tensors["data"])


def shares(order: DataOrder, rank: int, world_size: int) -> Iterator[list[int]]:
    """Rank ``rank``'s rows of each of ``order``'s batches, forever."""
    share = order.batch_size // world_size
    while True:
        indices, _ = order.next()
        yield indices[rank * share : (rank + 1) * share].tolist()


def mirrored(images: Tensor, flips: Tensor | None) -> Tensor:
    """``images`` with those where ``flips`` is true mirrored left-right."""
    if flips is None:
        return images
    flips = flips.to(images.device).view(-1, *([1] * (images.dim() - 1)))
    return torch.where(flips, images.flip(-1), images)


class ImagesInMemory:
    """Images held in memory (uint8 pixels, or floats for the digits): a batch is an index into them."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def follow(self, order: DataOrder) -> None:
        """Nothing to read ahead."""

    def take(self, indices: Tensor) -> Tensor:
        return self.images[indices.to(self.images.device)]

    def restart(self) -> None:
        """Nothing read ahead to drop."""


class ImagesFromFiles:
    """Images decoded from ``files`` by ``torch.utils.data`` worker processes that read a few
    batches ahead along a copy of the data order. Under torch.distributed each process decodes
    only its rows of the global batch and the processes exchange the decoded pixels (uint8)
    through ``runtime.all_rows``, so every process holds the whole batch, as in memory."""

    def __init__(self, files: ImageFiles, workers: int | None, runtime: Runtime) -> None:
        self.files, self.runtime = files, runtime
        self.workers = default_workers() if workers is None else workers
        self.loader: Iterator[tuple[Tensor, Tensor, list[str]]] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def follow(self, order: DataOrder) -> None:
        """Start the workers on a copy of ``order`` from its current position (once, or after a restart)."""
        if self.loader is None:
            rows = order.rows(self.runtime.rank, self.runtime.world_size)
            self.loader = image_loader(self.files, rows, self.workers, pin_memory=self.runtime.device.type == "cuda")

    def take(self, indices: Tensor) -> Tensor:
        runtime = self.runtime
        loaded, images, problems = next(self.loader)
        if problems:
            raise GenflowError(f"{problems[0]}; remove the file (or fix it) and resume: the last checkpoint is intact")
        share = len(indices) // runtime.world_size
        if not torch.equal(loaded, indices[runtime.rank * share : (runtime.rank + 1) * share]):
            raise GenflowError("internal error: the image loader fell out of step with the data order")
        return runtime.all_rows(images.to(runtime.device, non_blocking=True))

    def restart(self) -> None:
        """Drop what was read ahead: the workers restart from the restored order."""
        self.loader = None


class BatchStream:
    """Minibatches along one seeded :class:`DataOrder`: ``images`` from memory or from files,
    every other per-image tensor in ``data`` (``labels``, paired ``noise``) indexed in memory
    alike; images as floats in [-1, 1], mirrored where the order's coin says."""

    def __init__(self, images: ImagesInMemory | ImagesFromFiles, data: Mapping[str, Tensor], batch_size: int, seed: int,
                 flip: bool = False) -> None:  # fmt: skip
        self.images, self.data = images, dict(data)
        self.order = DataOrder(len(images), batch_size, seed, flip)

    def next(self) -> Batch:
        self.images.follow(self.order)
        indices, flips = self.order.next()
        images = mirrored(as_unit_range(self.images.take(indices)), flips)
        return {"images": images} | {key: values[indices.to(values.device)] for key, values in self.data.items()}

    def restore(self, tensors: Mapping[str, Tensor], position: int) -> None:
        self.order.restore(tensors, position)
        self.images.restart()


@dataclass(frozen=True)
class TrainingData:
    """What a run trains on: per-image tensors in memory (``images`` unless they stream from
    ``files``; ``labels``; paired ``noise``) and the image files that stream, if any."""

    tensors: Mapping[str, Tensor]
    files: ImageFiles | None = None
    notes: tuple[str, ...] = ()
    """What reading the data left out, said when training starts."""

    @property
    def count(self) -> int:
        return len(self.files) if self.files is not None else len(self.tensors["images"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return self.files.shape if self.files is not None else tuple(self.tensors["images"].shape[1:])

    def batches(self, batch_size: int, seed: int, flip: bool = False, workers: int | None = None,
                runtime: Runtime | None = None) -> BatchStream:  # fmt: skip
        """The minibatch stream of this data on ``runtime``'s device (the CPU without one): images
        in memory, or decoded from the files by ``workers`` processes."""
        runtime = runtime or SingleProcess("cpu")
        tensors = {key: values.to(runtime.device) for key, values in self.tensors.items()}
        images = ImagesFromFiles(self.files, workers, runtime) if self.files is not None else ImagesInMemory(tensors.pop("images"))
        return BatchStream(images, tensors, batch_size, seed, flip)
