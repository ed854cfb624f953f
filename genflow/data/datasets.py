"""Datasets in memory, shape (N, C, H, W), as uint8 pixels (:func:`load_pixels`, what training
holds: 4x smaller than floats) or as floats in [-1, 1] (:func:`load_labelled_dataset`), with
their class labels.

``digits`` (scikit-learn's 8x8 handwritten digits, 1797 images with 17 grey levels) ships
inside the scikit-learn wheel and is the default; ``mnist`` and ``fashion-mnist`` are read
from their idx files by torchvision, ``cifar10`` from its binary (or, through a restricted
unpickler, python) batches by :mod:`genflow.data.cifar`, all from ``--data-dir`` and never
downloaded; any other value is a folder of images (:mod:`genflow.data.folders`, which also streams
folders too large for memory). Labels come from scikit-learn's targets, the datasets' own,
or an image folder's first-level subfolders (one class each, names sorted); a flat folder
has none.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from genflow.data.pixels import Dataset, resized
from genflow.errors import GenflowError
from genflow.lazy import lazy_import

if TYPE_CHECKING:
    from torch import Tensor

np = lazy_import("numpy")

torch = lazy_import("torch")

TORCHVISION_SETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
"""Read through torchvision's idx readers (no pickle)."""

DATASETS = ("digits", *TORCHVISION_SETS, "cifar10")


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
    resized and center-cropped to that square (:func:`genflow.data.pixels.center_crop`)."""
    if name == "digits":
        if resolution is not None:
            raise GenflowError("the digits are 8x8 and take no resolution; --resolution resizes other datasets and image folders")
        return Dataset(load_digits(), digit_labels(), tuple(str(k) for k in range(10)))
    if name in DATASETS:
        return resized(load_named_set(name, data_dir), resolution)
    path = Path(name)
    if path.is_dir():
        from genflow.data.folders import load_folder_pixels

        return load_folder_pixels(path, resolution, bad_images)
    if path.exists():
        raise GenflowError(f"dataset {name!r} is a file; give a folder of images or one of {', '.join(DATASETS)}")
    if len(path.parts) > 1 or name.startswith("."):
        raise GenflowError(f"dataset folder {name} does not exist; give a folder of images or one of {', '.join(DATASETS)}")
    raise GenflowError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} or a folder of images")


def load_named_set(name: str, data_dir: str | Path | None) -> Dataset:
    """MNIST or Fashion-MNIST (torchvision's idx reader) or CIFAR-10 (:mod:`genflow.data.cifar`,
    which never unpickles untrusted files) from the files under ``data_dir``, as uint8."""
    if data_dir is None:
        raise GenflowError(f"dataset {name!r} needs --data-dir pointing at its files (nothing is downloaded)")
    if name == "cifar10":
        from genflow.data.cifar import read_cifar10

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
