"""Labels from the data: scikit-learn's digit targets, torchvision's MNIST targets (from idx
files written here), and an image folder's first-level subfolders."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits

from genflow.data.datasets import load_labelled_dataset


def test_digits_carry_scikit_learns_targets():
    data = load_labelled_dataset("digits")
    assert data.classes == tuple(str(k) for k in range(10))
    assert torch.equal(data.labels, torch.from_numpy(load_digits().target).long())
    assert len(data.labels) == len(data.images) == 1797


def image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), color=value).save(path)


def test_class_is_the_first_level_subfolder_and_names_are_sorted(tmp_path):
    image(tmp_path / "dog" / "a.png", 10)
    image(tmp_path / "cat" / "b.png", 20)
    image(tmp_path / "cat" / "indoor" / "c.png", 30)  # deeper: still a cat
    data = load_labelled_dataset(str(tmp_path))
    assert data.classes == ("cat", "dog")
    by_value = {round((float(x.mean()) + 1) * 127.5): int(k) for x, k in zip(data.images, data.labels, strict=True)}
    assert by_value == {10: 1, 20: 0, 30: 0}


def test_a_flat_folder_or_images_beside_class_folders_have_no_labels(tmp_path):
    image(tmp_path / "flat" / "a.png", 1)
    image(tmp_path / "flat" / "b.png", 2)
    assert load_labelled_dataset(str(tmp_path / "flat")).labels is None
    image(tmp_path / "mixed" / "cat" / "a.png", 1)
    image(tmp_path / "mixed" / "stray.png", 2)
    mixed = load_labelled_dataset(str(tmp_path / "mixed"))
    assert mixed.labels is None and mixed.classes is None and len(mixed.images) == 2


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file (LeCun's MNIST format): magic with the uint8 type code and rank, sizes, data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_files_give_their_targets(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    targets = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    images = np.arange(6 * 28 * 28, dtype=np.int64).reshape(6, 28, 28) % 256
    for split, count in (("train", 6), ("t10k", 2)):
        write_idx(raw / f"{split}-images-idx3-ubyte", images[:count])
        write_idx(raw / f"{split}-labels-idx1-ubyte", targets[:count])
    data = load_labelled_dataset("mnist", tmp_path)
    assert data.labels.tolist() == targets.tolist()
    assert len(data.classes) == 10 and data.images.shape == (6, 1, 28, 28)
    torch.testing.assert_close(data.images[:, 0], torch.from_numpy(images).float() / 127.5 - 1)  # in the labels' order
