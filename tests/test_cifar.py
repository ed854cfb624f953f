"""genflow.data.cifar: both CIFAR-10 layouts read alike, and hostile or damaged files are refused."""

from __future__ import annotations

import codecs
import itertools
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from genflow.data.cifar import read_cifar10
from genflow.errors import GenflowError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_SIZES = (7, 5, 1, 2, 4)  # data_batch_1 .. data_batch_5
TEST_SIZE = 3


@dataclass(frozen=True)
class Batch:
    """One batch file's contents: flat CIFAR rows (N, 3072) uint8 and labels (N,)."""

    flat: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Fake:
    train: list[Batch]
    test: Batch


def make_fake(seed: int) -> Fake:
    """Batches cut from one random uint8 array and random labels."""
    rng = np.random.default_rng(seed)
    total = sum(TRAIN_SIZES) + TEST_SIZE
    flat = rng.integers(0, 256, size=(total, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=total).astype(np.int64)
    cuts = np.cumsum((0, *TRAIN_SIZES, TEST_SIZE))
    batches = [Batch(flat[a:b], labels[a:b]) for a, b in itertools.pairwise(cuts)]
    return Fake(batches[:-1], batches[-1])


def batch_names() -> list[str]:
    return [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_binary(root: Path, fake: Fake) -> Path:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, batch in zip(batch_names(), [*fake.train, fake.test]):
        records = np.concatenate([batch.labels.astype(np.uint8)[:, None], batch.flat], axis=1)
        records.tofile(folder / f"{name}.bin")
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n\n\n")
    return folder


def write_python(root: Path, fake: Fake) -> Path:
    """Pickles shaped like the official ones: dicts with bytes keys, protocol 2."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, batch in zip(batch_names(), [*fake.train, fake.test]):
        content = {
            b"batch_label": f"{name} of the fake set".encode(),
            b"labels": batch.labels.tolist(),
            b"data": batch.flat,
            b"filenames": [f"image_{i}.png".encode() for i in range(len(batch.labels))],
        }
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": 10000, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def expected(batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
    flat = np.concatenate([b.flat for b in batches])
    labels = np.concatenate([b.labels for b in batches])
    return torch.from_numpy(flat.reshape(-1, 3, 32, 32)), torch.from_numpy(labels)


def refused(root: Path, train: bool = True) -> str:
    """The message of the GenflowError that reading ``root`` raises; it must be one line."""
    with pytest.raises(GenflowError) as info:
        read_cifar10(root, train=train)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- 1, 2: both layouts, both splits -----------------------------------------------------------


@pytest.fixture
def fake() -> Fake:
    return make_fake(seed=0)


def test_binary_and_python_layouts_load_the_same_nchw_tensors(tmp_path: Path, fake: Fake) -> None:
    binary = read_cifar10(write_binary(tmp_path / "bin", fake).parent)
    python = read_cifar10(write_python(tmp_path / "py", fake).parent)
    images, labels = expected(fake.train)
    for data in (binary, python):
        assert data.images.dtype == torch.uint8 and data.images.shape == (sum(TRAIN_SIZES), 3, 32, 32)
        assert data.labels.dtype == torch.int64 and data.labels.shape == (sum(TRAIN_SIZES),)
        assert data.classes == CLASSES
        assert torch.equal(data.images, images)
        assert torch.equal(data.labels, labels)
    assert torch.equal(binary.images, python.images) and torch.equal(binary.labels, python.labels)


def test_pixel_planes_are_red_green_blue_and_row_major(tmp_path: Path, fake: Fake) -> None:
    """Image 0 of data_batch_2 (index 7 overall), pixel at row 3, column 5: each channel's
    byte sits at plane * 1024 + row * 32 + column of its record."""
    row = fake.train[1].flat[0]
    red, green, blue, transposed = (int(row[i]) for i in (3 * 32 + 5, 1024 + 3 * 32 + 5, 2048 + 3 * 32 + 5, 5 * 32 + 3))
    assert len({red, green, blue, transposed}) == 4  # the seed makes a mixup detectable
    for data in (read_cifar10(write_binary(tmp_path / "bin", fake)), read_cifar10(write_python(tmp_path / "py", fake))):
        assert [int(v) for v in data.images[7, :, 3, 5]] == [red, green, blue]


def test_root_may_be_the_batches_folder_itself(tmp_path: Path, fake: Fake) -> None:
    images, labels = expected(fake.train)
    for folder in (write_binary(tmp_path, fake), write_python(tmp_path / "other", fake)):
        data = read_cifar10(folder)
        assert torch.equal(data.images, images) and torch.equal(data.labels, labels)


def test_train_false_reads_test_batch(tmp_path: Path, fake: Fake) -> None:
    images, labels = expected([fake.test])
    for root in (write_binary(tmp_path / "bin", fake).parent, write_python(tmp_path / "py", fake).parent):
        data = read_cifar10(root, train=False)
        assert data.images.shape == (TEST_SIZE, 3, 32, 32)
        assert torch.equal(data.images, images) and torch.equal(data.labels, labels)


def test_numpy_1_pickles_load(tmp_path: Path, fake: Fake) -> None:
    """The official files name numpy.core.multiarray._reconstruct (numpy 1), not numpy._core."""
    folder = write_python(tmp_path, fake)
    path = folder / "data_batch_1"
    original = path.read_bytes()
    renamed = original.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in renamed and renamed != original
    path.write_bytes(renamed)
    images, _ = expected(fake.train)
    assert torch.equal(read_cifar10(tmp_path).images, images)


# --- 3: hostile pickles ------------------------------------------------------------------------


class Payload:
    """Unpickles as ``call(*args)``."""

    def __init__(self, call: object, args: tuple[object, ...]) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.call, self.args


def plant(folder: Path, name: str, payload: Payload) -> None:
    """Replace a pickle of ``folder`` by a batch- or meta-shaped dict carrying ``payload``."""
    key = b"label_names" if name == "batches.meta" else b"data"
    (folder / name).write_bytes(pickle.dumps({key: payload, b"labels": [0]}, protocol=2))


@pytest.mark.parametrize(
    ("name", "call", "refused_global"),
    [
        ("data_batch_1", "system", f"{os.system.__module__}.system"),
        ("data_batch_1", "open", f"{open.__module__}.open"),
        ("data_batch_3", "eval", "__builtin__.eval"),  # protocol 2 spells builtins as __builtin__
        ("batches.meta", "eval", "__builtin__.eval"),
    ],
)
def test_malicious_pickle_is_refused_without_running(
    tmp_path: Path, fake: Fake, name: str, call: str, refused_global: str
) -> None:
    folder = write_python(tmp_path, fake)
    marker = tmp_path / "pwned"
    payloads = {
        "system": Payload(os.system, (f"touch {marker}",)),
        "open": Payload(open, (str(marker), "w")),
        "eval": Payload(eval, (f"open({str(marker)!r}, 'w')",)),
    }
    plant(folder, name, payloads[call])
    message = refused(tmp_path)
    assert f"refuses to unpickle {refused_global}:" in message
    assert name in message and "cifar-10-batches-bin" in message
    assert not marker.exists()


def test_codecs_encode_is_admitted_only_for_latin1(tmp_path: Path, fake: Fake) -> None:
    folder = write_python(tmp_path, fake)
    plant(folder, "data_batch_2", Payload(codecs.encode, ("abc", "rot13")))
    assert "refuses to unpickle _codecs.encode with encoding 'rot13'" in refused(tmp_path)


def test_damaged_pickle_is_refused(tmp_path: Path, fake: Fake) -> None:
    path = write_python(tmp_path, fake) / "data_batch_4"
    path.write_bytes(path.read_bytes()[:-40])
    message = refused(tmp_path)
    assert "damaged pickle" in message and str(path) in message


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ({b"data": np.zeros((2, 3072), np.int64), b"labels": [0, 1]}, "int64 pixels"),
        ({b"data": np.zeros((2, 3, 32, 32), np.uint8), b"labels": [0, 1]}, "shape (2, 3, 32, 32)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "1 labels for 2 images"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "label 10"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, "1"]}, "not a list of integers"),
        ({b"labels": [0, 1]}, "no b'data' entry"),
        ([1, 2], "no b'data' entry"),
    ],
)
def test_python_batch_with_wrong_contents_is_refused(tmp_path: Path, fake: Fake, content: object, words: str) -> None:
    path = write_python(tmp_path, fake) / "data_batch_5"
    path.write_bytes(pickle.dumps(content, protocol=2))
    message = refused(tmp_path)
    assert words in message and str(path) in message


# --- 4: missing and damaged binary files -------------------------------------------------------


def test_missing_files_are_named_in_one_line(tmp_path: Path, fake: Fake) -> None:
    folder = write_binary(tmp_path, fake)
    (folder / "data_batch_3.bin").unlink()
    (folder / "batches.meta.txt").unlink()
    message = refused(tmp_path)
    assert "batches.meta.txt, data_batch_3.bin" in message
    assert "data_batch_1.bin" not in message and "test_batch.bin" not in message
    assert "cifar-10-binary.tar.gz" in message and "https://www.cs.toronto.edu/~kriz/cifar.html" in message


def test_a_split_needs_only_its_own_files(tmp_path: Path, fake: Fake) -> None:
    folder = write_binary(tmp_path, fake)
    (folder / "test_batch.bin").unlink()
    assert read_cifar10(tmp_path).images.shape[0] == sum(TRAIN_SIZES)
    assert "lacks test_batch.bin:" in refused(tmp_path, train=False)


def test_no_cifar_folder_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path)
    assert "cifar-10-batches-bin/" in message and "cifar-10-batches-py/" in message and "downloads nothing" in message


@pytest.mark.parametrize("size", [0, 3073 * 2 - 1, 3073 + 1])
def test_bin_of_wrong_size_is_refused(tmp_path: Path, fake: Fake, size: int) -> None:
    path = write_binary(tmp_path, fake) / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:size])
    assert path.stat().st_size == size
    message = refused(tmp_path)
    assert str(path) in message and f"has {size} bytes" in message and "3073" in message


def test_bin_label_10_is_refused(tmp_path: Path, fake: Fake) -> None:
    path = write_binary(tmp_path, fake) / "data_batch_4.bin"
    records = bytearray(path.read_bytes())
    records[3073] = 10  # the label byte of the second record
    path.write_bytes(bytes(records))
    message = refused(tmp_path)
    assert str(path) in message and "label 10" in message


def test_meta_with_wrong_class_count_is_refused(tmp_path: Path, fake: Fake) -> None:
    meta = write_binary(tmp_path, fake) / "batches.meta.txt"
    meta.write_text("\n".join(CLASSES[:9]) + "\n")
    message = refused(tmp_path)
    assert str(meta) in message and "9 classes" in message


# --- 5: binary preferred -----------------------------------------------------------------------


def test_binary_layout_is_preferred_when_both_exist(tmp_path: Path) -> None:
    binary, python = make_fake(seed=1), make_fake(seed=2)
    write_binary(tmp_path, binary)
    write_python(tmp_path, python)
    binary_images, binary_labels = expected(binary.train)
    python_images, _ = expected(python.train)
    assert not torch.equal(binary_images, python_images)
    data = read_cifar10(tmp_path)
    assert torch.equal(data.images, binary_images) and torch.equal(data.labels, binary_labels)


# --- through the command line ------------------------------------------------------------------


def test_genflow_trains_conditionally_on_cifar10_from_its_binary_batches(tmp_path: Path, fake: Fake) -> None:
    from conftest import TINY_MODEL, invoke

    from genflow import api

    write_binary(tmp_path / "data", fake)
    model = [f"model.{key}={value}".replace("'", "").replace("False", "false") for key, value in TINY_MODEL.items()]
    options = [arg for assignment in model for arg in ("-o", assignment)]
    result = invoke("train", "--dataset", "cifar10", "--data-dir", tmp_path / "data", "--conditional", "--resolution", 16,
                    "--steps", 2, "--batch-size", 8, "-o", "sample_every=0", "--no-final-grid", "--device", "cpu", *options,
                    "--out", tmp_path / "run")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = api.read_run(tmp_path / "run").config
    assert record["data"]["images"] == sum(TRAIN_SIZES) and record["data"]["classes"] == list(CLASSES)
    assert record["model"]["channels"] == 3 and record["model"]["resolution"] == 16
