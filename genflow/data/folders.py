"""Image folders of any size, read file by file: the files are listed and their headers checked
once, and an image is decoded only when a batch needs it, in ``torch.utils.data`` worker
processes (:func:`image_loader`), so a folder of 200,000 images trains in bounded memory.

Every image goes through one reader (:meth:`ImageFiles.read`): decoded with PIL, reduced to
one grey or three colour channels as :func:`genflow.data.pixels.image_pixels` says, then, with a
``resolution``, resized so its shorter side is ``resolution`` and center-cropped to a square
the way guided-diffusion prepares ImageNet (Dhariwal & Nichol 2021, ``center_crop_arr``:
box-filter halvings while the image is at least twice the target, then bicubic). The
in-memory path stacks the same reads, so both paths give the same pixels.

Channels: a folder streams as grey when every file's mode is grey (read from its header), else
as RGB, with grey files repeated to three channels. (In memory, genflow looks at the pixels:
an RGB file holding only grey pixels counts as grey; a streamed folder cannot know that
without decoding everything.)
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genflow.config import BAD_IMAGES
from genflow.data.pixels import IMAGE_SUFFIXES, Dataset, folder_classes, is_grey_mode, read_pixels
from genflow.errors import GenflowError

NAMED_BAD_IMAGES = 3


@dataclass(frozen=True, eq=False)
class ImageFiles(torch.utils.data.Dataset):
    """The images of a folder as a map-style dataset: ``files[i]`` read as uint8 ``(C, H, W)``.
    ``labels`` are the first-level subfolders' classes (``None`` for a flat folder)."""

    root: Path
    files: tuple[Path, ...]
    shape: tuple[int, int, int]
    resolution: int | None = None
    labels: Tensor | None = None
    classes: tuple[str, ...] | None = None
    skipped: tuple[str, ...] = ()
    """The files left out (``bad_images="skip"``), each with its problem."""

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, Tensor | str]:
        """``(index, image)``, or ``(index, message)`` when the file cannot be read: an error
        raised in a worker process would reach the loop wrapped in its traceback."""
        try:
            return index, self.read(index)
        except GenflowError as error:
            return index, str(error)

    def read(self, index: int) -> Tensor:
        """Image ``index`` as uint8 of shape :attr:`shape`."""
        file = self.files[index]
        pixels = read_pixels(file, self.resolution)
        if pixels.shape[:2] != self.shape[1:]:
            height, width = pixels.shape[:2]
            raise GenflowError(f"image {file} is {width}x{height}, the others {self.shape[2]}x{self.shape[1]}; set a resolution or remove it")
        if pixels.shape[2] != self.shape[0]:
            pixels = np.repeat(pixels, self.shape[0], axis=2)
        return torch.from_numpy(np.array(pixels)).permute(2, 0, 1)  # a writable copy of PIL's read-only buffer

    def fingerprint(self) -> str:
        """sha256 of every file's path (relative to the folder) and size and of the resolution: what
        tells on resume, without reading every image, that the data changed. Modification times
        are left out, so a copy of the folder (another node's disk) is the same data."""
        digest = hashlib.sha256(f"resolution={self.resolution}\n".encode())
        for file in self.files:
            digest.update(f"{file.relative_to(self.root)}\0{file.stat().st_size}\n".encode())
        return digest.hexdigest()


def image_file_paths(path: Path) -> list[Path]:
    """Every image file under ``path`` (recursively, by suffix), sorted."""
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise GenflowError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {path}")
    return files


def scan_folder(path: Path, resolution: int | None = None, bad_images: str = "error") -> ImageFiles:
    """The image files under ``path`` with their size and channels read from their headers only.
    Without ``resolution`` every image must have the first image's size; a file that cannot be
    opened, or of another size, stops the scan (``bad_images="error"``) or is left out
    (``"skip"``; listed in :attr:`ImageFiles.skipped`)."""
    if bad_images not in BAD_IMAGES:
        raise GenflowError(f"bad_images must be one of {', '.join(BAD_IMAGES)}, not {bad_images!r}")
    kept, modes, bad = [], set(), []
    first: tuple[Path, tuple[int, int]] | None = None
    for file in image_file_paths(path):
        problem, mode, size = header(file)
        fix = "remove it or pass -o bad_images=skip to leave unreadable files out"
        if problem is None and resolution is None:
            first = first or (file, size)
            if size != first[1]:
                (w0, h0), (w, h) = first[1], size
                problem = f"images differ in size: {first[0].relative_to(path)} is {w0}x{h0}, {file.relative_to(path)} is {w}x{h}"
                fix = "resize them to one size, pass --resolution R, or -o bad_images=skip to leave other sizes out"
        if problem is not None:
            bad.append(problem)
            if bad_images == "error":
                raise GenflowError(f"{problem}; {fix}")
            continue
        kept.append(file)
        modes.add(mode)
    if not kept:
        raise GenflowError(f"no readable images under {path}: {'; '.join(bad[:NAMED_BAD_IMAGES])}")
    width, height = (resolution, resolution) if resolution else first[1]
    channels = 1 if all(is_grey_mode(mode) for mode in modes) else 3
    labels, classes = folder_classes([file.relative_to(path) for file in kept])
    return ImageFiles(path, tuple(kept), (channels, height, width), resolution, labels, classes, tuple(bad))


def header(file: Path) -> tuple[str | None, str, tuple[int, int]]:
    """``(problem or None, mode, (width, height))`` from the file's header, without decoding it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            return None, image.mode, image.size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        return f"cannot read image {file}: {error}", "", (0, 0)


def describe_skipped(files: ImageFiles) -> str:
    """A note on what a scan left out ('' when nothing), naming the first few."""
    if not files.skipped:
        return ""
    named = "; ".join(files.skipped[:NAMED_BAD_IMAGES]) + ("; ..." if len(files.skipped) > NAMED_BAD_IMAGES else "")
    return f"left out {len(files.skipped)} unreadable or odd-sized images under {files.root} (bad_images=skip): {named}"


def default_workers() -> int:
    """Worker processes that decode images for this process: its share of the cores it may use
    (the node's processes under torchrun split them), less one for itself; at least 1, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(1, min(8, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 1))


def collate(rows: list[tuple[int, Tensor | str]]) -> tuple[Tensor, Tensor, list[str]]:
    """A loaded batch as ``(indices, uint8 images, problems)``: an unreadable file's image is
    zeros and its message is in ``problems`` (raised by the training process, not the worker,
    whose errors reach the loop wrapped in a traceback)."""
    problems = [image for _, image in rows if isinstance(image, str)]
    shape = next((image.shape for _, image in rows if not isinstance(image, str)), None)
    images = [torch.zeros(shape, dtype=torch.uint8) if isinstance(image, str) else image for _, image in rows]
    return torch.tensor([index for index, _ in rows]), torch.stack(images) if shape else torch.empty(0), problems


def image_loader(
    files: ImageFiles, batches: Iterator[list[int]], workers: int, pin_memory: bool = False
) -> Iterator[tuple[Tensor, Tensor, list[str]]]:
    """:func:`collate`'s ``(indices, images, problems)`` of each index list ``batches`` yields,
    decoded by ``workers`` processes (0: in this process) a few batches ahead, in order."""
    loader = torch.utils.data.DataLoader(
        files,
        batch_sampler=IndexLists(batches),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
        worker_init_fn=ignore_stop_signals,
    )
    return iter(loader)


def ignore_stop_signals(worker_id: int) -> None:
    """In a decoding worker: ignore Ctrl-C and SIGTERM sent to the whole process group (a
    terminal, Slurm, systemd). The training process finishes its step, saves a checkpoint and
    shuts the workers down; a worker killed by the signal would end the run with a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class IndexLists(torch.utils.data.Sampler):
    """A batch sampler over an iterator of index lists (which may never end)."""

    def __init__(self, batches: Iterator[list[int]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return self.batches


def load_folder_pixels(path: Path, resolution: int | None = None, bad_images: str = "error") -> Dataset:
    """Every image under ``path`` in memory as uint8 (N, C, H, W). Grey images (and palette or
    colour files whose pixels are all grey) give one channel unless any image has colour: then
    every image is RGB. Alpha is dropped; 16-bit images are scaled to 8 bits. When every image
    lies inside a first-level subfolder, each such folder is a class (names sorted, as
    torchvision's ImageFolder does); images directly in ``path`` make the folder unlabelled."""
    return files_in_memory(scan_folder(path, resolution, bad_images), bad_images)


def files_in_memory(files: ImageFiles, bad_images: str = "error") -> Dataset:
    """The images of ``files`` decoded into one uint8 tensor, channels chosen by content; a file
    whose pixels cannot be decoded (a truncated file behind a good header) stops with its path,
    or with ``bad_images="skip"`` is left out with its label."""
    arrays, kept = [], []
    for index, file in enumerate(files.files):
        try:
            arrays.append(read_pixels(file, files.resolution))
            kept.append(index)
        except GenflowError as error:
            if bad_images != "skip":
                raise GenflowError(f"{error}; remove it or pass -o bad_images=skip to leave unreadable files out") from None
    if not arrays:
        raise GenflowError(f"no readable images under {files.root}")
    labels = None if files.labels is None else files.labels[kept]
    channels = max(array.shape[2] for array in arrays)
    stacked = np.stack([np.repeat(array, channels // array.shape[2], axis=2) for array in arrays])
    return Dataset(torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous(), labels, files.classes)
