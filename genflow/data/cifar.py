"""CIFAR-10 from the official archives, without ever unpickling untrusted data.

torchvision's ``CIFAR10`` reads the python batches with :func:`pickle.load`, and unpickling
runs whatever callable the file names: a crafted ``data_batch_1`` executes code on the machine
that reads it. This module reads either distribution described on the file-format page,
https://www.cs.toronto.edu/~kriz/cifar.html (A. Krizhevsky, *Learning Multiple Layers of
Features from Tiny Images*, tech. report, University of Toronto, 2009):

* the binary one (``cifar-10-binary.tar.gz`` -> ``cifar-10-batches-bin/``), preferred: each
  record is one label byte then 3072 pixel bytes (1024 red, 1024 green, 1024 blue, each plane
  32x32 row-major), read with numpy and no pickle at all;
* the python one (``cifar-10-python.tar.gz`` -> ``cifar-10-batches-py/``): Python 2 pickles,
  read only through :class:`_CifarUnpickler`, whose ``find_class`` admits just the globals that
  rebuild numpy arrays and refuses everything else.

Both layouts end in the same validation and conversion to NCHW uint8 tensors. genflow
downloads nothing; every problem is a one-line :class:`~genflow.errors.GenflowError`.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genflow.errors import GenflowError

try:  # numpy >= 2; the numpy 1 name below is still how the official files spell it
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core.multiarray import _reconstruct

__all__ = ["CifarData", "read_cifar10"]

SIDE = 32
PIXELS = 3 * SIDE * SIDE  # 3072 bytes per image: the red, green and blue planes
RECORD = 1 + PIXELS  # one label byte, then the pixels
NUM_CLASSES = 10
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html"
USE_BINARY = "use the binary distribution cifar-10-batches-bin"


@dataclass(frozen=True)
class CifarData:
    """One split of CIFAR-10: uint8 images (N, 3, 32, 32), int64 labels (N,), the 10 class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]


@dataclass(frozen=True)
class _Layout:
    """Where one distribution keeps its files and how to read them."""

    folder: str
    archive: str
    suffix: str
    meta: str
    read_meta: Callable[[Path], tuple[str, ...]]
    read_batch: Callable[[Path], tuple[np.ndarray, np.ndarray]]  # (N, 3072) uint8, (N,) int64


def read_cifar10(root: Path, train: bool = True) -> CifarData:
    """The training (``data_batch_1`` .. ``_5``) or test (``test_batch``) split under ``root``:
    the folder holding ``cifar-10-batches-bin/`` or ``cifar-10-batches-py/`` (binary preferred
    when both exist), or one of those folders itself."""
    root = Path(root)
    folder, layout = _find_layout(root)
    batches = [folder / (name + layout.suffix) for name in (TRAIN_BATCHES if train else (TEST_BATCH,))]
    meta = folder / layout.meta
    _require_files(folder, layout, [meta, *batches])
    classes = _checked_classes(layout.read_meta(meta), meta)
    parts = [_checked_batch(*layout.read_batch(path), path) for path in batches]
    images = np.concatenate([data for data, _ in parts]).reshape(-1, 3, SIDE, SIDE)
    labels = np.concatenate([labels for _, labels in parts])
    return CifarData(torch.from_numpy(images), torch.from_numpy(labels), classes)


# --- finding the files ----------------------------------------------------------------------


def _find_layout(root: Path) -> tuple[Path, _Layout]:
    """The folder to read and its layout: a subfolder of ``root`` first, else ``root`` itself."""
    for layout in _LAYOUTS:
        if (root / layout.folder).is_dir():
            return root / layout.folder, layout
    for layout in _LAYOUTS:
        if root.name == layout.folder or (root / layout.meta).is_file():
            return root, layout
    raise GenflowError(
        f"no CIFAR-10 under {root}: found neither cifar-10-batches-bin/ nor cifar-10-batches-py/; {_extract_hint(root)}"
    )


def _require_files(folder: Path, layout: _Layout, paths: list[Path]) -> None:
    """Raise naming every file of ``paths`` that is missing from ``folder``."""
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise GenflowError(
            f"{folder} lacks {', '.join(missing)}: the {layout.archive} archive is incompletely extracted; {_extract_hint(folder.parent)}"
        )


def _extract_hint(into: Path) -> str:
    return f"extract cifar-10-binary.tar.gz from {SOURCE} into {into} (genflow downloads nothing)"


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise GenflowError(f"cannot read {path}: {exc.strerror or exc}; check its permissions or extract it again") from None


# --- the binary layout ----------------------------------------------------------------------


def _read_bin_meta(path: Path) -> tuple[str, ...]:
    """``batches.meta.txt``: one class name a line, blank lines ignored."""
    try:
        text = _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise GenflowError(
            f"{path} is not text: expected one CIFAR-10 class name a line; extract cifar-10-binary.tar.gz again"
        ) from None
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _read_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A ``.bin`` batch: records of one label byte then 3072 pixel bytes."""
    raw = np.frombuffer(_read_bytes(path), dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise GenflowError(
            f"{path} has {raw.size} bytes, not a positive multiple of {RECORD} (a label byte and {PIXELS} pixel bytes per image): "
            "it is truncated or not a CIFAR-10 binary batch; extract cifar-10-binary.tar.gz again"
        )
    records = raw.reshape(-1, RECORD)
    return records[:, 1:], records[:, 0].astype(np.int64)


# --- the python layout ----------------------------------------------------------------------


class _Refused(pickle.UnpicklingError):
    """A pickle asked for a global outside :data:`_ALLOWED_GLOBALS`."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _latin1_encode(text: object, encoding: object) -> bytes:
    """``_codecs.encode`` restricted to what Python 3 writes for ``bytes`` at protocol 2:
    ``_codecs.encode(text, "latin1")``; any other codec is refused."""
    if not isinstance(text, str) or encoding != "latin1":
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# Exactly the globals a pickled numpy array references (protocol 2, see pickletools.dis on
# pickle.dumps(np.zeros((2, 3), np.uint8), protocol=2)): ``_reconstruct`` builds an empty
# ndarray whose state is then set, and ``dtype`` its element type. numpy 1 (the official
# files) spells the module numpy.core.multiarray, numpy 2 numpy._core.multiarray. Python 3
# spells ``bytes`` at protocol 2 as ``_codecs.encode(str, "latin1")``, admitted only for latin1.
_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}

# What a damaged or hostile pickle can raise while it is decoded.
_DAMAGED = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    MemoryError,
    RecursionError,
)


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild numpy arrays and plain containers."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def _unpickle(path: Path) -> object:
    """The object pickled in ``path`` (Python 2 strings kept as bytes), through :class:`_CifarUnpickler`."""
    stream = io.BytesIO(_read_bytes(path))
    try:
        return _CifarUnpickler(stream, encoding="bytes").load()
    except _Refused as exc:
        raise GenflowError(f"{path}: genflow refuses to unpickle {exc.what}: not a CIFAR-10 batch; {USE_BINARY}") from None
    except _DAMAGED as exc:
        detail = " ".join(str(exc).split())[:200]
        raise GenflowError(
            f"{path} is a damaged pickle ({type(exc).__name__}: {detail}); extract cifar-10-python.tar.gz again or {USE_BINARY}"
        ) from None


def _field(path: Path, batch: object, key: bytes) -> object:
    """``batch[key]`` of an unpickled dict, or a one-line error."""
    if not isinstance(batch, dict) or key not in batch:
        raise GenflowError(f"{path} is not a CIFAR-10 pickle: it has no {key!r} entry; {USE_BINARY}")
    return batch[key]


def _read_py_meta(path: Path) -> tuple[str, ...]:
    """``batches.meta``: a dict whose ``b"label_names"`` lists the class names as bytes."""
    names = _field(path, _unpickle(path), b"label_names")
    if not isinstance(names, list) or not all(isinstance(name, bytes) for name in names):
        raise GenflowError(f"{path}: b'label_names' is not a list of byte strings; {USE_BINARY}")
    try:
        return tuple(name.decode("utf-8") for name in names)
    except UnicodeDecodeError:
        raise GenflowError(f"{path}: b'label_names' is not text; {USE_BINARY}") from None


def _read_py_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A python batch: a dict with ``b"data"`` (an array) and ``b"labels"`` (a list of ints)."""
    batch = _unpickle(path)
    data = _field(path, batch, b"data")
    labels = _field(path, batch, b"labels")
    if not isinstance(data, np.ndarray):
        raise GenflowError(f"{path}: b'data' is a {type(data).__name__}, not a numpy array; {USE_BINARY}")
    if not isinstance(labels, list) or not all(type(label) is int for label in labels):
        raise GenflowError(f"{path}: b'labels' is not a list of integers; {USE_BINARY}")
    return data, np.asarray(labels, dtype=np.int64).reshape(-1)


# --- shared validation ----------------------------------------------------------------------


def _checked_classes(names: tuple[str, ...], path: Path) -> tuple[str, ...]:
    if len(names) != NUM_CLASSES or not all(names):
        raise GenflowError(
            f"{path} names {len(names)} classes, not CIFAR-10's {NUM_CLASSES}; extract the archive again or {USE_BINARY}"
        )
    return names


def _checked_batch(data: np.ndarray, labels: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(data, labels)`` once they are uint8 (N, 3072) pixels with N labels in 0..9."""
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS or data.shape[0] == 0:
        raise GenflowError(
            f"{path} holds {data.dtype} pixels of shape {data.shape}, not uint8 (N, {PIXELS}): not a CIFAR-10 batch; {USE_BINARY}"
        )
    if labels.shape != (data.shape[0],):
        raise GenflowError(f"{path} holds {labels.size} labels for {data.shape[0]} images: not a CIFAR-10 batch; {USE_BINARY}")
    bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]
    if bad.size:
        raise GenflowError(
            f"{path} holds label {int(bad[0])}, outside 0..{NUM_CLASSES - 1}: not a CIFAR-10 batch; extract the archive again"
        )
    return data, labels


_LAYOUTS = (
    _Layout("cifar-10-batches-bin", "cifar-10-binary.tar.gz", ".bin", "batches.meta.txt", _read_bin_meta, _read_bin_batch),
    _Layout("cifar-10-batches-py", "cifar-10-python.tar.gz", "", "batches.meta", _read_py_meta, _read_py_batch),
)
