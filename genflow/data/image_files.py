"""Samples on disk: a ``.png`` grid, an ``.npz`` of uint8 NHWC images under ``arr_0`` (the
layout of the reference FID tools), or a folder of one PNG per sample; and ``.npz`` files of
samples made by any program, read back for scoring."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genflow.data.pixels import to_uint8, to_unit_interval, uint8_to_unit_range
from genflow.errors import GenflowError
from genflow.storage import atomic_write

OUTPUT_SUFFIXES = ("", ".png", ".npz")
MIN_TILE_PIXELS = 32  # the automatic grid scale makes each tile at least this high
GAP_GREY = 0.5
"""The 1-pixel lines between a grid's tiles: grey, so that tiles on black (or white) backgrounds stay apart."""

def check_output(out: Path, overwrite: bool) -> None:
    """Refuse, before any sampling, an output of unknown kind, one that exists (unless
    ``overwrite``), or one that cannot be written: its parent folder missing (only a PNG
    folder itself is created, never its parents), not a folder, or not writable."""
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise GenflowError(f"unsupported output {out}: use a .png (grid), a .npz (array) or a directory")
    if out.exists() and not overwrite and (out.is_file() or any(out.iterdir())):
        raise GenflowError(f"{out} exists; choose another --out or pass --overwrite")
    check_writable_folder(out if out.is_dir() else out.parent, out)


def check_writable_folder(folder: Path, out: Path) -> None:
    """Refuse writing ``out`` in ``folder`` unless it is an existing folder that takes new files."""
    if not folder.exists():
        blocker = next((p for p in folder.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise GenflowError(f"cannot write {out}: {blocker} is a file, not a folder")
        raise GenflowError(f"cannot write {out}: folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise GenflowError(f"cannot write {out}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise GenflowError(f"cannot write {out}: no permission to write in {folder}")
    try:  # root passes os.access everywhere; only creating a file tells (/proc, read-only mounts)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise GenflowError(f"cannot write {out}: {folder} takes no new files ({error.strerror or error})") from None


def grid_scale(scale: int | None, height: int) -> int:
    """The upscaling of a grid's tiles: ``scale`` if given (>= 1), else the least whole factor
    that makes tiles of ``height`` pixels at least :data:`MIN_TILE_PIXELS` high."""
    return scale if scale is not None else max(1, math.ceil(MIN_TILE_PIXELS / height))


MAX_SCALE = 64


def check_scale(scale: int | None) -> None:
    """Refuse a grid scale below 1 (``None`` is the automatic scale)."""
    if scale is not None and not 1 <= scale <= MAX_SCALE:
        raise GenflowError(f"scale must be a whole number from 1 (the native size) to {MAX_SCALE}, not {scale}")


def save_samples(
    images: Tensor, out: Path, overwrite: bool = False, scale: int | None = None, columns: int | None = None
) -> Path:
    """By the path: ``.png`` a grid (``columns`` wide, default as square as it gets), ``.npz``
    uint8 NHWC under ``arr_0``, otherwise a directory of one PNG per sample. An existing output
    is refused unless ``overwrite``; the parent folder must exist. Only a grid is upscaled,
    ``scale`` times by nearest neighbour (default: tiles at least 32 pixels high). Files are
    written whole under a temporary name, then renamed."""
    from torchvision.utils import save_image

    check_scale(scale)
    check_output(out, overwrite)
    suffix = out.suffix.lower()
    images = images.detach().float().cpu()
    try:
        if suffix == ".png":
            nrow = columns or max(1, int(np.ceil(np.sqrt(len(images)))))
            grid = upscale(to_unit_interval(images), grid_scale(scale, images.shape[-2]))
            atomic_write(out, lambda tmp: save_image(grid, tmp, format="png", nrow=nrow, padding=1, pad_value=GAP_GREY))
        elif suffix == ".npz":
            array = to_uint8(images).permute(0, 2, 3, 1).numpy()
            atomic_write(out, lambda tmp: write_npz(tmp, array))
        else:
            out.mkdir(exist_ok=True)
            for i, image in enumerate(images):
                save_image(to_unit_interval(image), out / f"{i:06d}.png")
    except OSError as error:
        raise GenflowError(f"cannot write {out}: {error.strerror or error}") from None
    return out


def upscale(images: Tensor, scale: int) -> Tensor:
    """NCHW images with every pixel repeated ``scale`` times down and across (nearest neighbour)."""
    if scale == 1:
        return images
    return images.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


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
        why = "it holds Python objects, which genflow never unpickles" if "allow_pickle" in str(error) else str(error)
        raise GenflowError(f"{path} is not an .npz with uint8 NHWC images under arr_0 ({why})") from None
    if array.dtype != np.uint8 or array.ndim != 4:
        raise GenflowError(f"{path}: arr_0 must be uint8 of shape (N, H, W, C), not {array.dtype} {array.shape}")
    return uint8_to_unit_range(torch.from_numpy(array).permute(0, 3, 1, 2))
