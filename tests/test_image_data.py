"""Image folders load by what their pixels hold (palette, grey, colour, alpha, 16-bit), and
samples are written where asked, grids upscaled, arrays and PNG folders at native size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import invoke, tiny_preset
from PIL import Image

from genflow.data.datasets import load_dataset
from genflow.data.image_files import save_samples
from genflow.errors import GenflowError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def palette_image(colours: list[tuple[int, int, int]], size: int = 8) -> Image.Image:
    """A mode-P image whose rows cycle through ``colours`` (palette entries 0, 1, ...)."""
    image = Image.new("P", (size, size))
    image.putpalette([value for colour in colours for value in colour])
    image.putdata([(y % len(colours)) for y in range(size) for _ in range(size)])
    return image


def folder_of(tmp_path: Path, images: list[Image.Image], name: str = "images") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for i, image in enumerate(images):
        image.save(folder / f"{i:02d}.png")
    return folder


def as_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW back to 0..255 NHWC (the loader's exact inverse)."""
    return ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_a_colour_palette_folder_loads_as_rgb_with_its_colours(tmp_path):
    folder = folder_of(tmp_path, [palette_image([RED, GREEN, BLUE])] * 2)
    pixels = as_uint8(load_dataset(str(folder)))
    assert pixels.shape == (2, 8, 8, 3)
    assert [tuple(pixels[0, row, 0]) for row in range(3)] == [RED, GREEN, BLUE]


def test_a_colour_palette_folder_trains_with_three_channels(tmp_path):
    folder = folder_of(tmp_path, [palette_image([RED, GREEN, BLUE])] * 8)
    preset = tiny_preset(tmp_path / "tiny.toml", steps=1, batch_size=4, log_every=1, sample_every=0, sample_steps=1, device="cpu")
    result = invoke("train", "--config", preset, "--dataset", folder, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["channels"] == 3


def test_a_grey_palette_stays_one_channel(tmp_path):
    greys = [(0, 0, 0), (128, 128, 128), (255, 255, 255)]
    pixels = as_uint8(load_dataset(str(folder_of(tmp_path, [palette_image(greys)]))))
    assert pixels.shape == (1, 8, 8, 1)
    assert [pixels[0, row, 0, 0] for row in range(3)] == [0, 128, 255]


def test_grey_and_colour_images_load_together_as_rgb(tmp_path):
    folder = folder_of(tmp_path, [Image.new("L", (8, 8), 77), Image.new("RGB", (8, 8), RED)])
    pixels = as_uint8(load_dataset(str(folder)))
    assert pixels.shape == (2, 8, 8, 3)
    assert tuple(pixels[0, 0, 0]) == (77, 77, 77) and tuple(pixels[1, 0, 0]) == RED


def test_alpha_is_dropped_one_bit_and_sixteen_bit_images_are_scaled(tmp_path):
    sixteen = Image.fromarray(np.full((8, 8), 65535 // 3, dtype=np.uint16))  # mode I;16
    images = [Image.new("LA", (8, 8), (10, 0)), Image.new("1", (8, 8), 1), sixteen]
    pixels = as_uint8(load_dataset(str(folder_of(tmp_path, images))))
    assert pixels.shape == (3, 8, 8, 1)
    assert [pixels[i, 0, 0, 0] for i in range(3)] == [10, 255, 85]
    rgba = folder_of(tmp_path, [Image.new("RGBA", (8, 8), (1, 2, 3, 0))], "rgba")
    assert tuple(as_uint8(load_dataset(str(rgba)))[0, 0, 0]) == (1, 2, 3)


def test_only_grids_are_upscaled_and_a_scale_below_one_is_refused(tmp_path):
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    save_samples(images, tmp_path / "a.npz")
    assert np.load(tmp_path / "a.npz")["arr_0"].shape == (4, 8, 8, 1)
    save_samples(images, tmp_path / "pngs", scale=3)
    assert Image.open(tmp_path / "pngs" / "000000.png").size == (8, 8)
    save_samples(images, tmp_path / "grid.png")
    assert Image.open(tmp_path / "grid.png").size == (2 * 33 + 1, 2 * 33 + 1)
    with pytest.raises(GenflowError, match="scale must be a whole number from 1"):
        save_samples(images, tmp_path / "zero.png", scale=0)
    assert not (tmp_path / "zero.png").exists()


def test_only_the_folder_asked_for_is_created(tmp_path):
    images = torch.zeros(2, 1, 8, 8)
    with pytest.raises(GenflowError, match="does not exist; create it first"):
        save_samples(images, tmp_path / "missing" / "pngs")
    assert not (tmp_path / "missing").exists()
    save_samples(images, tmp_path / "pngs")
    assert len(list((tmp_path / "pngs").iterdir())) == 2


def test_colour_files_holding_only_grey_pixels_load_as_one_channel(tmp_path):
    folder = folder_of(tmp_path, [Image.new("RGB", (8, 8), (90, 90, 90)), Image.new("RGBA", (8, 8), (7, 7, 7, 255))])
    pixels = as_uint8(load_dataset(str(folder)))
    assert pixels.shape == (2, 8, 8, 1) and [pixels[0, 0, 0, 0], pixels[1, 0, 0, 0]] == [90, 7]


def test_grid_tiles_on_black_are_kept_apart_by_grey_lines(tmp_path):
    save_samples(-torch.ones(4, 1, 8, 8), tmp_path / "black.png", scale=1)  # black backgrounds, as the digits have
    grid = np.asarray(Image.open(tmp_path / "black.png").convert("L"))
    assert grid.shape == (2 * 9 + 1, 2 * 9 + 1)
    assert (grid[:, 9] == 128).all() and (grid[9, :] == 128).all()  # the line between the columns and between the rows
    assert (grid[1:9, 1:9] == 0).all()
