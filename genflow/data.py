"""Datasets in memory, shape (N, C, H, W), as uint8 pixels (:func:`load_pixels`, what training
holds: 4x smaller than floats) or as floats in [-1, 1] (:func:`load_labelled_dataset`), with
their class labels.

``digits`` (scikit-learn's 8x8 handwritten digits, 1797 images with 17 grey levels) ships
inside the scikit-learn wheel and is the default; ``mnist`` and ``fashion-mnist`` are read
from their idx files by torchvision, ``cifar10`` from its binary (or, through a restricted
unpickler, python) batches by :mod:`genflow.cifar`, all from ``--data-dir`` and never
downloaded; any other value is a folder of images (:mod:`genflow.folders`, which also streams
folders too large for memory). Labels come from scikit-learn's targets, the datasets' own,
or an image folder's first-level subfolders (one class each, names sorted); a flat folder
has none.
"""

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

TORCHVISION_SETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
"""Read through torchvision's idx readers (no pickle)."""
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
DATASETS = ("digits", *TORCHVISION_SETS, "cifar10")


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


def load_dataset(name: str, data_dir: str | Path | None = None) -> Tensor:
    """The named dataset, or the image folder at path ``name``, as a float tensor in [-1, 1]."""
    return load_labelled_dataset(name, data_dir).images


def load_labelled_dataset(name: str, data_dir: str | Path | None = None, resolution: int | None = None) -> Dataset:
    """The named dataset, or the image folder at path ``name``, with its labels where it has
    them, as floats in [-1, 1]."""
    return load_pixels(name, data_dir, resolution).in_unit_range()


def load_pixels(name: str, data_dir: str | Path | None = None, resolution: int | None = None, bad_images: str = "error") -> Dataset:
    """The named dataset, or the image folder at path ``name``, in memory as uint8 (the digits,
    whose 17 levels are not bytes, as floats in [-1, 1]); with ``resolution``, every image
    resized and center-cropped to that square (:func:`genflow.folders.center_crop`)."""
    if name == "digits":
        if resolution is not None:
            raise GenflowError("the digits are 8x8 and take no resolution; --resolution resizes other datasets and image folders")
        return Dataset(load_digits(), digit_labels(), tuple(str(k) for k in range(10)))
    if name in DATASETS:
        return resized(load_named_set(name, data_dir), resolution)
    path = Path(name)
    if path.is_dir():
        from genflow.folders import load_folder_pixels

        return load_folder_pixels(path, resolution, bad_images)
    if path.exists():
        raise GenflowError(f"dataset {name!r} is a file; give a folder of images or one of {', '.join(DATASETS)}")
    if len(path.parts) > 1 or name.startswith("."):
        raise GenflowError(f"dataset folder {name} does not exist; give a folder of images or one of {', '.join(DATASETS)}")
    raise GenflowError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} or a folder of images")


def resized(data: Dataset, resolution: int | None) -> Dataset:
    """``data`` (uint8) with every image resized and center-cropped to ``resolution``."""
    if resolution is None or data.images.shape[-2:] == (resolution, resolution):
        return data
    from PIL import Image

    from genflow.folders import center_crop

    channels = data.images.shape[1]
    rows = [np.asarray(center_crop(Image.fromarray(hwc.squeeze(-1) if channels == 1 else hwc), resolution)) for hwc in data.images.permute(0, 2, 3, 1).numpy()]
    images = torch.from_numpy(np.stack(rows).reshape(len(rows), resolution, resolution, channels)).permute(0, 3, 1, 2)
    return Dataset(images.contiguous(), data.labels, data.classes)


def load_named_set(name: str, data_dir: str | Path | None) -> Dataset:
    """MNIST or Fashion-MNIST (torchvision's idx reader) or CIFAR-10 (:mod:`genflow.cifar`,
    which never unpickles untrusted files) from the files under ``data_dir``, as uint8."""
    if data_dir is None:
        raise GenflowError(f"dataset {name!r} needs --data-dir pointing at its files (nothing is downloaded)")
    if name == "cifar10":
        from genflow.cifar import read_cifar10

        cifar = read_cifar10(Path(data_dir))
        return Dataset(cifar.images, cifar.labels, cifar.classes)
    return load_torchvision(name, data_dir)


def load_digits() -> Tensor:
    """scikit-learn's digits: 8x8 values 0..16, mapped to [-1, 1] by ``x / 8 - 1``."""
    from sklearn.datasets import load_digits as sklearn_digits

    images = sklearn_digits().images.astype(np.float32)
    return torch.from_numpy(images / 8.0 - 1.0).unsqueeze(1)


def digit_labels() -> Tensor:
    """scikit-learn's digit targets (0..9), in the order of :func:`load_digits`."""
    from sklearn.datasets import load_digits as sklearn_digits

    return torch.from_numpy(sklearn_digits().target.astype(np.int64))


def load_torchvision(name: str, data_dir: str | Path) -> Dataset:
    """MNIST or Fashion-MNIST through torchvision, which reads the idx files (no pickle), as uint8."""
    import torchvision

    cls = getattr(torchvision.datasets, TORCHVISION_SETS[name])
    try:
        dataset = cls(root=str(data_dir), train=True, download=False)
    except (RuntimeError, OSError, ValueError, AssertionError) as error:  # torchvision asserts on a malformed idx file
        raise GenflowError(torchvision_files_message(name, Path(data_dir), error)) from None
    array = np.asarray(dataset.data)
    if array.ndim == 3:
        array = array[..., None]
    images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)
    return Dataset(images, labels, tuple(str(c) for c in dataset.classes))


def torchvision_files(name: str, root: Path) -> tuple[Path, list[str], str]:
    """The folder torchvision's class for ``name`` reads under ``root``, the files it checks
    there (all of them, test split included), and how to get them."""
    import torchvision

    cls = getattr(torchvision.datasets, TORCHVISION_SETS[name])
    needed = [Path(file).stem for file, _ in cls.resources]  # MNIST family: the unzipped idx files
    return root / cls.__name__ / "raw", needed, f"download the .gz files from {cls.mirrors[0]} and gunzip them there"


def torchvision_files_message(name: str, root: Path, error: Exception) -> str:
    """One line: which of torchvision's files for ``name`` are missing, where they go, where to get them."""
    folder, needed, source = torchvision_files(name, root)
    missing = [file for file in needed if not (folder / file).is_file()]
    if missing:
        problem = "no files there" if len(missing) == len(needed) else f"missing {', '.join(missing)}"
    else:
        problem = f"the files there are damaged or not torchvision's ({error or type(error).__name__})"
    return (
        f"cannot read {name!r} under {root}: genflow reads {', '.join(needed)} in {folder} and downloads nothing; "
        f"{problem}; {source}"
    )


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
