"""Datasets as in-memory tensors scaled to [-1, 1], shape (N, C, H, W).

``digits`` (scikit-learn's 8x8 handwritten digits, 1797 images with 17 grey levels) ships
inside the scikit-learn wheel and is the default; ``mnist``, ``fashion-mnist`` and
``cifar10`` read torchvision's files from ``--data-dir`` (never downloaded); any other
value is a folder of images of one size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genflow.errors import GenflowError

TORCHVISION_SETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
DATASETS = ("digits", *TORCHVISION_SETS)


def load_dataset(name: str, data_dir: str | Path | None = None) -> Tensor:
    """The named dataset, or the image folder at path ``name``, as a float tensor in [-1, 1]."""
    if name == "digits":
        return load_digits()
    if name in TORCHVISION_SETS:
        return load_torchvision(name, data_dir)
    path = Path(name)
    if path.is_dir():
        return load_image_folder(path)
    if path.exists():
        raise GenflowError(f"dataset {name!r} is a file; give a folder of images or one of {', '.join(DATASETS)}")
    if len(path.parts) > 1 or name.startswith("."):
        raise GenflowError(f"dataset folder {name} does not exist; give a folder of images or one of {', '.join(DATASETS)}")
    raise GenflowError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} or a folder of images")


def load_digits() -> Tensor:
    """scikit-learn's digits: 8x8 values 0..16, mapped to [-1, 1] by ``x / 8 - 1``."""
    from sklearn.datasets import load_digits as sklearn_digits

    images = sklearn_digits().images.astype(np.float32)
    return torch.from_numpy(images / 8.0 - 1.0).unsqueeze(1)


def load_torchvision(name: str, data_dir: str | Path | None) -> Tensor:
    import torchvision

    if data_dir is None:
        raise GenflowError(f"dataset {name!r} needs --data-dir pointing at torchvision's files (nothing is downloaded)")
    cls = getattr(torchvision.datasets, TORCHVISION_SETS[name])
    try:
        dataset = cls(root=str(data_dir), train=True, download=False)
    except RuntimeError as error:
        raise GenflowError(f"cannot read {name!r} under {data_dir}: {error}") from None
    array = np.asarray(dataset.data)
    if array.ndim == 3:
        array = array[..., None]
    return uint8_to_unit_range(torch.from_numpy(array).permute(0, 3, 1, 2))


def load_image_folder(path: Path) -> Tensor:
    """Every image under ``path`` (recursively); all must share one size and channel count."""
    from PIL import Image

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise GenflowError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {path}")
    arrays = []
    for file in files:
        try:
            with Image.open(file) as image:
                array = np.asarray(image.convert("L" if image.mode in ("L", "1", "P", "I;16") else "RGB"))
        except OSError as error:
            raise GenflowError(f"cannot read image {file}: {error}") from None
        arrays.append(array[..., None] if array.ndim == 2 else array)
        if arrays[-1].shape != arrays[0].shape:
            raise GenflowError(
                f"images differ in size or channels: {files[0].name} is {arrays[0].shape}, {file.name} is {arrays[-1].shape}"
            )
    return uint8_to_unit_range(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))


def uint8_to_unit_range(images: Tensor) -> Tensor:
    """uint8 images (0..255) as floats in [-1, 1]; the inverse of :func:`to_uint8`."""
    return images.float() / 127.5 - 1.0


def to_unit_interval(images: Tensor) -> Tensor:
    """[-1, 1] floats to [0, 1] (what image writers take), clipping what falls outside."""
    return (images.float().clamp(-1, 1) + 1) / 2


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] floats to uint8, clipping what falls outside."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
