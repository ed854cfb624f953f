"""Image folders that stream from disk: batches decoded by worker processes equal the in-memory
path's (resized, center-cropped, randomly flipped, across an epoch), a streamed run trains
exactly the in-memory run and resumes mid-epoch to the same weights, and unreadable or
odd-sized files are named, or left out and counted."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, expect_usage_error, invoke
from PIL import Image

from genflow import api
from genflow.config import TrainConfig
from genflow.data.folders import files_in_memory, scan_folder
from genflow.data.pixels import center_crop, read_pixels
from genflow.errors import GenflowError, TrainingInterrupted
from genflow.progress import SilentReporter
from genflow.train import TrainingData

STREAMED = {"data_in_memory_mb": 0, "data_workers": 2}
RUN = {"steps": 12, "batch_size": 32, "lr": 3e-3, "warmup_steps": 2, "log_every": 3, "sample_every": 0, "sample_steps": 2,
       "checkpoint_every": 4, "final_grid": False, "device": "cpu", "model": TINY_MODEL}  # fmt: skip


def write_folder(folder: Path, count: int, sizes: tuple[tuple[int, int], ...] = ((8, 8),), classes: int = 2, seed: int = 0) -> Path:
    """``count`` random colour PNGs in ``classes`` subfolders, cycling through ``sizes`` (width, height)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        (folder / f"class{i % classes}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"class{i % classes}" / f"{i:05d}.png")
    return folder


@pytest.fixture(scope="module")
def thousands(tmp_path_factory) -> Path:
    """A few thousand small PNGs, the folder a streamed run trains on."""
    return write_folder(tmp_path_factory.mktemp("thousands") / "images", 2000)


def batches_of(folder: Path, count: int, streamed: bool, workers: int = 2, **options) -> list[dict[str, torch.Tensor]]:
    files = scan_folder(folder, options.pop("resolution", None))
    data = TrainingData({"labels": files.labels}, files) if streamed else TrainingData({"images": files_in_memory(files).images, "labels": files.labels})
    stream = data.batches(batch_size=16, seed=3, workers=workers, **options)
    return [stream.next() for _ in range(count)]


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
def test_streamed_batches_equal_the_in_memory_ones_resized_flipped_across_epochs(tmp_path, workers):
    folder = write_folder(tmp_path / "mixed", 40, sizes=((12, 9), (9, 12), (10, 10)))  # 2 batches of 16 per epoch
    ours = batches_of(folder, 5, streamed=True, workers=workers, resolution=8, flip=True)
    theirs = batches_of(folder, 5, streamed=False, resolution=8, flip=True)
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.keys() == reference.keys() == {"images", "labels"}
        assert mine["images"].shape == (16, 3, 8, 8) and mine["images"].dtype == torch.float32
        assert torch.equal(mine["images"], reference["images"]) and torch.equal(mine["labels"], reference["labels"])
    unflipped = batches_of(folder, 5, streamed=True, resolution=8, flip=False)
    assert not all(torch.equal(a["images"], b["images"]) for a, b in zip(ours, unflipped, strict=True))


def test_random_flip_mirrors_exactly_the_images_its_coins_pick(tmp_path):
    folder = write_folder(tmp_path / "flat", 16, classes=1)
    files = scan_folder(folder)
    stream = TrainingData({"images": files_in_memory(files).images, "index": torch.arange(16)}).batches(16, seed=0, flip=True)
    flips = stream.order.flips.clone()
    batch = stream.next()
    originals = files_in_memory(files).images[batch["index"]].float() / 127.5 - 1
    coins = flips[stream.order.position - 16 : stream.order.position]
    assert 0 < int(coins.sum()) < 16
    for image, original, coin in zip(batch["images"], originals, coins, strict=True):
        assert torch.equal(image, original.flip(-1) if coin else original)


def test_center_crop_keeps_the_middle_of_the_shorter_side(tmp_path):
    columns = np.tile(np.arange(12, dtype=np.uint8)[None, :, None] * 20, (6, 1, 3))  # 12 wide, 6 high: column k is 20 k
    Image.fromarray(columns).save(tmp_path / "wide.png")
    pixels = read_pixels(tmp_path / "wide.png", resolution=6)
    assert pixels.shape == (6, 6, 1)  # grey content stays one channel
    assert pixels[0, :, 0].tolist() == list(range(60, 180, 20))  # columns 3..8, the centre
    big = Image.fromarray(np.zeros((64, 40), np.uint8))
    assert center_crop(big, 10).size == (10, 10)  # halved by BOX while at least twice the target, then bicubic


def test_a_streamed_run_trains_the_in_memory_run_and_resumes_mid_epoch(thousands, tmp_path):
    memory = api.train(TrainConfig.from_dict({**RUN, "dataset": str(thousands)}), tmp_path / "memory")

    class StopAt(SilentReporter):
        def step(self, step: int, loss: float, lr: float) -> None:
            if step == 6:  # mid-epoch: 2000 images are 62 batches of 32
                signal.raise_signal(signal.SIGINT)

    streamed_config = TrainConfig.from_dict({**RUN, **STREAMED, "dataset": str(thousands)})
    with pytest.raises(TrainingInterrupted):
        api.train(streamed_config, tmp_path / "streamed", reporter=StopAt())
    api.resume(tmp_path / "streamed")
    for name in ("model.safetensors", "ema.safetensors"):
        assert (tmp_path / "streamed" / name).read_bytes() == (memory / name).read_bytes(), name
    record = api.read_run(tmp_path / "streamed").config
    assert record["data"]["images"] == 2000 and record["train"]["data_in_memory_mb"] == 0


def test_resume_refuses_a_folder_whose_files_changed(tmp_path):
    folder = write_folder(tmp_path / "images", 64)
    config = TrainConfig.from_dict({**RUN, **STREAMED, "steps": 4, "dataset": str(folder)})
    run = api.train(config, tmp_path / "run")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "class0" / "extra.png")
    with pytest.raises(GenflowError, match="data sha256"):
        api.resume(run, {"steps": 8})


def test_an_unreadable_file_is_named_or_left_out_and_counted(tmp_path):
    folder = write_folder(tmp_path / "images", 40)
    (folder / "class0" / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "class1" / "big.png")
    truncated = folder / "class1" / "truncated.png"  # a good header, pixels cut off: found only when decoded
    truncated.write_bytes((folder / "class1" / "00001.png").read_bytes()[:-30])
    args = ["train", "--dataset", folder, "--steps", 1, "--batch-size", 8, "-o", "sample_every=0", "--no-final-grid", "--device", "cpu"]
    expect_usage_error(invoke(*args, "--out", tmp_path / "a"), "cannot read image", "broken.png", "bad_images=skip")
    assert not (tmp_path / "a").exists()
    result = invoke(*args, "--out", tmp_path / "b", "-o", "bad_images=skip", "-o", "model.block_channels=[16,32]", "-o", "model.attention=[false,false]", "-o", "model.norm_groups=8")
    assert result.exit_code == 0, result.output
    assert "left out 2 unreadable or odd-sized images" in result.output and "broken.png" in result.output
    assert "left out 1 images" in result.output and "cannot be decoded" in result.output
    assert api.read_run(tmp_path / "b").config["data"]["images"] == 40
    (folder / "class0" / "broken.png").unlink()
    (folder / "class1" / "big.png").unlink()
    expect_usage_error(invoke(*args, "--out", tmp_path / "c"), "cannot read image", "truncated.png", "bad_images=skip")


def test_a_file_that_breaks_after_the_scan_stops_training_naming_it(tmp_path):
    folder = write_folder(tmp_path / "images", 32, classes=1)
    victim = folder / "class0" / "00003.png"
    config = TrainConfig.from_dict({**RUN, **STREAMED, "steps": 3, "batch_size": 32, "dataset": str(folder)})

    class BreakAfterScan(SilentReporter):
        def note(self, message: str) -> None:  # the run's first line, after the scan, before any image is read
            victim.write_bytes(victim.read_bytes()[:-30])  # the header still reads; the pixels do not

    with pytest.raises(GenflowError, match=r"cannot read image .*00003\.png.*resume"):
        api.train(config, tmp_path / "run", reporter=BreakAfterScan())


def test_resolution_trains_a_folder_of_mixed_sizes_from_the_command_line(tmp_path):
    folder = write_folder(tmp_path / "images", 24, sizes=((20, 14), (14, 20)))
    result = invoke("train", "--dataset", folder, "--resolution", 8, "--random-flip", "--steps", 2, "--batch-size", 8,
                    "-o", "sample_every=0", "--no-final-grid", "--device", "cpu", "-o", "model.block_channels=[16,32]", "-o", "model.attention=[false,false]", "-o", "model.norm_groups=8",
                    "--out", tmp_path / "run")  # fmt: skip
    assert result.exit_code == 0, result.output
    train = api.read_run(tmp_path / "run").config["train"]
    assert train["resolution"] == 8 and train["random_flip"] is True
    assert api.read_run(tmp_path / "run").config["model"]["resolution"] == 8


def test_a_streamed_run_with_random_flips_resumes_across_epochs_to_the_in_memory_run(tmp_path):
    folder = write_folder(tmp_path / "images", 96)  # 3 batches of 32 per epoch: 12 steps cross 3 epochs after the resume
    flipped = {**RUN, "dataset": str(folder), "random_flip": True, "log_every": 1}
    memory = api.train(TrainConfig.from_dict(flipped), tmp_path / "memory")

    class StopAt(SilentReporter):
        def step(self, step: int, loss: float, lr: float) -> None:
            if step == 5:
                signal.raise_signal(signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        api.train(TrainConfig.from_dict({**flipped, **STREAMED}), tmp_path / "streamed", reporter=StopAt())
    api.resume(tmp_path / "streamed")
    for name in ("model.safetensors", "ema.safetensors"):
        assert (tmp_path / "streamed" / name).read_bytes() == (memory / name).read_bytes(), name
    unflipped = api.train(TrainConfig.from_dict({**flipped, "random_flip": False}), tmp_path / "unflipped")
    assert (unflipped / "ema.safetensors").read_bytes() != (memory / "ema.safetensors").read_bytes()


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_saves_a_checkpoint_with_workers(thousands, tmp_path):
    """Slurm and systemd signal every process of the job; the decoding workers must not die of it."""
    import subprocess
    import sys
    import time

    model = [arg for key, value in TINY_MODEL.items() for arg in ("-o", f"model.{key}={json.dumps(value)}")]
    command = [sys.executable, "-m", "genflow", "train", "--dataset", str(thousands), "--steps", 5000, "--batch-size", 32,
               "-o", "data_in_memory_mb=0", "-o", "data_workers=2", "-o", "sample_every=0", "--no-final-grid",
               "--device", "cpu", *model, "--out", str(tmp_path / "run")]  # fmt: skip
    process = subprocess.Popen(list(map(str, command)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr and "stopped by SIGTERM" in stderr and "--resume" in stderr
