"""Pixels: the one in-memory form of images (:class:`Dataset`, uint8 or floats in [-1, 1]), decoding an
image file by its content (grey or RGB, 16-bit scaled), guided-diffusion's centre crop, and the conversions
between uint8 pixels, [-1, 1] floats and [0, 1] floats. Every reader of images (named datasets, folders,
CIFAR-10, sample files) shares these."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from genflow.errors import GenflowError
from genflow.lazy import lazy_import

if TYPE_CHECKING:
    from PIL.Image import Image
    from torch import Tensor

np = lazy_import("numpy")

torch = lazy_import("torch")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class Dataset:
    """Images of shape (N, C, H, W), as uint8 pixels or floats in [-1, 1], and, where the data
    has classes, their labels (long, shape (N,), values ``0..len(classes) - 1``) and the class names."""

    images: Tensor
    labels: Tensor | None = None
    classes: tuple[str, ...] | None = None

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def in_unit_range(self) -> Dataset:
        """This data with its images as floats in [-1, 1]."""
        return Dataset(as_unit_range(self.images), self.labels, self.classes)


def resized(data: Dataset, resolution: int | None) -> Dataset:
    """``data`` (uint8) with every image resized and center-cropped to ``resolution``."""
    if resolution is None or data.images.shape[-2:] == (resolution, resolution):
        return data
    from PIL import Image

    channels = data.images.shape[1]
    rows = [np.asarray(center_crop(Image.fromarray(hwc.squeeze(-1) if channels == 1 else hwc), resolution)) for hwc in data.images.permute(0, 2, 3, 1).numpy()]
    images = torch.from_numpy(np.stack(rows).reshape(len(rows), resolution, resolution, channels)).permute(0, 3, 1, 2)
    return Dataset(images.contiguous(), data.labels, data.classes)


def folder_classes(relative: list[Path]) -> tuple[Tensor | None, tuple[str, ...] | None]:
    """Labels and class names from image paths relative to the folder: the first-level
    subfolder of each, when every image has one; ``(None, None)`` otherwise."""
    if any(len(file.parts) < 2 for file in relative):
        return None, None
    classes = tuple(sorted({file.parts[0] for file in relative}))
    index = {name: k for k, name in enumerate(classes)}
    return torch.tensor([index[file.parts[0]] for file in relative], dtype=torch.int64), classes


GREY_MODES = ("1", "L", "LA", "La")

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit PNGs open as I;16 (older Pillow: I)


def image_pixels(image: Image) -> np.ndarray:
    """A PIL image's pixels by content: one channel when every pixel is grey, whatever the mode, else RGB;
    alpha dropped, 16-bit values scaled to 0..255."""
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.clip(np.asarray(image).astype(np.float64), 0, 65535)
        return np.round(wide * (255 / 65535)).astype(np.uint8)[..., None]
    if image.mode in GREY_MODES:
        return np.asarray(image.convert("L"))[..., None]
    # palettes via RGBA keep transparent entries exact; colour modes holding only grey pixels are grey
    rgb = np.asarray(image.convert("RGBA" if image.mode in ("P", "PA") else "RGB"))[..., :3]
    return rgb[..., :1] if is_grey(rgb) else rgb


def is_grey(rgb: np.ndarray) -> bool:
    """Whether every pixel of an (H, W, 3) array has equal red, green and blue."""
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def as_unit_range(images: Tensor) -> Tensor:
    """Images as floats in [-1, 1]: uint8 pixels mapped by :func:`uint8_to_unit_range`, floats as they are."""
    return uint8_to_unit_range(images) if images.dtype == torch.uint8 else images


def uint8_to_unit_range(images: Tensor) -> Tensor:
    """uint8 images (0..255) as floats in [-1, 1]; the inverse of :func:`to_uint8`."""
    return images.float() / 127.5 - 1.0


def to_unit_interval(images: Tensor) -> Tensor:
    """[-1, 1] floats to [0, 1] (what image writers take), clipping what falls outside."""
    return (images.float().clamp(-1, 1) + 1) / 2


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] floats to uint8, clipping what falls outside."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def read_pixels(file: Path, resolution: int | None = None) -> np.ndarray:
    """One image file as uint8 ``(H, W, 1)`` or ``(H, W, 3)``, resized and cropped to
    ``resolution`` when given."""
    from PIL import Image

    try:
        with Image.open(file) as image:
            pixels = image_pixels(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:  # ValueError: a mode PIL cannot convert
        raise GenflowError(f"cannot read image {file}: {error}") from None
    if resolution is None:
        return pixels
    cropped = center_crop(Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels), resolution)
    return np.asarray(cropped).reshape(resolution, resolution, pixels.shape[2])


def center_crop(image, resolution: int):
    """``image`` resized so its shorter side is ``resolution``, then its central square
    (guided-diffusion's ``center_crop_arr``: BOX halvings while at least twice the target,
    then BICUBIC, so a large image is not aliased)."""
    from PIL import Image

    while min(*image.size) >= 2 * resolution:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.Resampling.BOX)
    scale = resolution / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.Resampling.BICUBIC)
    left, top = (image.size[0] - resolution) // 2, (image.size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def is_grey_mode(mode: str) -> bool:
    return mode in GREY_MODES or mode in SIXTEEN_BIT_MODES
