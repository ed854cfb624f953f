"""Samples on disk: a ``.png`` grid, an ``.npz`` of uint8 NHWC images under ``arr_0`` (the
layout of the reference FID tools), or a folder of one PNG per sample; and ``.npz`` files of
samples made by any program, read back for scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genflow.data import to_uint8, to_unit_interval, uint8_to_unit_range
from genflow.errors import GenflowError
from genflow.storage import atomic_write

OUTPUT_SUFFIXES = ("", ".png", ".npz")


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output of unknown kind, or one that exists, unless ``overwrite``."""
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise GenflowError(f"unsupported output {out}: use a .png (grid), a .npz (array) or a directory")
    if out.exists() and not overwrite and (out.is_file() or any(out.iterdir())):
        raise GenflowError(f"{out} exists; choose another --out or pass --overwrite")


def save_samples(images: Tensor, out: Path, overwrite: bool = False) -> Path:
    """By the path: ``.png`` a grid, ``.npz`` uint8 NHWC under ``arr_0``, otherwise a
    directory of one PNG per sample. An existing output is refused unless ``overwrite``.
    Files are written whole under a temporary name, then renamed."""
    from torchvision.utils import save_image

    check_output(out, overwrite)
    suffix = out.suffix.lower()
    images = images.detach().float().cpu()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".png":
            nrow = max(1, int(np.ceil(np.sqrt(len(images)))))
            grid = to_unit_interval(images)
            atomic_write(out, lambda tmp: save_image(grid, tmp, format="png", nrow=nrow, padding=1))
        elif suffix == ".npz":
            array = to_uint8(images).permute(0, 2, 3, 1).numpy()
            atomic_write(out, lambda tmp: write_npz(tmp, array))
        else:
            out.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images):
                save_image(to_unit_interval(image), out / f"{i:06d}.png")
    except OSError as error:
        raise GenflowError(f"cannot write {out}: {error.strerror or error}") from None
    return out


def write_npz(path: Path, array: np.ndarray) -> None:
    """``arr_0`` in an .npz at exactly ``path`` (np.savez would append .npz to a bare name)."""
    with path.open("wb") as file:
        np.savez(file, array)


def read_samples_file(path: Path) -> Tensor:
    """Images from an ``.npz`` holding uint8 NHWC under ``arr_0``, as NCHW floats in [-1, 1]."""
    if not path.is_file():
        raise GenflowError(f"samples file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            array = archive["arr_0"]
    except (OSError, ValueError, KeyError) as error:
        raise GenflowError(f"{path} is not an .npz with uint8 NHWC images under arr_0 ({error})") from None
    if array.dtype != np.uint8 or array.ndim != 4:
        raise GenflowError(f"{path}: arr_0 must be uint8 of shape (N, H, W, C), not {array.dtype} {array.shape}")
    return uint8_to_unit_range(torch.from_numpy(array).permute(0, 3, 1, 2))
