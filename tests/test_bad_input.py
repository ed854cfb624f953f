"""The catalogue of bad input: each case gets one line naming the fix, exit code 2, no
traceback, and leaves every file and folder of its workspace exactly as it was."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import expect_usage_error, invoke, tiny_preset
from PIL import Image
from safetensors.torch import save_file


@dataclass
class Workspace:
    root: Path
    run: Path
    preset: Path

    def path(self, name: str) -> Path:
        return self.root / name

    def copy_of_run(self, name: str) -> Path:
        return Path(shutil.copytree(self.run, self.root / name, symlinks=True))

    def image_folder(self, name: str, images: list[tuple[str, int]]) -> Path:
        """A folder of images, each (PIL mode, size)."""
        folder = self.root / name
        folder.mkdir()
        for i, (mode, size) in enumerate(images):
            Image.new(mode, (size, size)).save(folder / f"{i}.png")
        return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("workspace")
    preset = tiny_preset(root / "tiny.toml", steps=6, batch_size=16, log_every=3, sample_every=0, sample_steps=2, checkpoint_every=3, device="cpu")
    trained = invoke("train", "--config", preset, "--out", root / "run")
    assert trained.exit_code == 0, trained.output
    return Workspace(root, root / "run", preset)


def truncated(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def with_pickled_weights(ws: Workspace) -> Path:
    run = ws.copy_of_run("pickled")
    (run / "ema.safetensors").write_bytes(pickle.dumps({"conv_in.weight": torch.zeros(3)}))
    return run


def with_foreign_weights(ws: Workspace) -> Path:
    run = ws.copy_of_run("foreign")
    save_file({"conv_in.weight": torch.zeros(8, 3, 3, 3)}, str(run / "ema.safetensors"))
    return run


def with_only_a_corrupt_checkpoint(ws: Workspace) -> Path:
    run = ws.copy_of_run("corrupt-checkpoints")
    for checkpoint in (run / "checkpoints").glob("step-*"):
        truncated(checkpoint / "model.safetensors")
    return run


def without_checkpoints(ws: Workspace) -> Path:
    run = ws.copy_of_run("no-checkpoints")
    shutil.rmtree(run / "checkpoints")
    return run


def nan_weights(path: Path) -> None:
    """Every weight in the safetensors file ``path`` made NaN, as a diverged run's would be."""
    from safetensors.torch import load_file

    save_file({name: value * float("nan") for name, value in load_file(str(path)).items()}, str(path))


def with_nan_weights(ws: Workspace) -> Path:
    run = ws.copy_of_run("nan")
    nan_weights(run / "ema.safetensors")
    return run


def with_a_nan_checkpoint(ws: Workspace) -> Path:
    """A run (its budget raised, so a resume has steps to take) whose every checkpoint holds NaN
    model weights under a manifest that verifies: what a resume would otherwise train on."""
    run = ws.copy_of_run("nan-checkpoints")
    for checkpoint in (run / "checkpoints").glob("step-*"):
        nan_weights(checkpoint / "model.safetensors")
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        manifest["files"]["model.safetensors"] = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
        (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    return run


def samples_file(ws: Workspace, name: str, count: int) -> Path:
    """A samples file of ``count`` blank 8x8 grey images (uint8 NHWC under arr_0)."""
    path = ws.path(name)
    np.savez(path, np.zeros((count, 8, 8, 1), dtype=np.uint8))
    return path


def existing_file(ws: Workspace, name: str) -> Path:
    path = ws.path(name)
    path.write_bytes(b"precious")
    return path


# name: (arguments built in the workspace, fragments the one-line message must hold)
CASES: dict[str, tuple[Callable[[Workspace], list], tuple[str, ...]]] = {
    "missing dataset folder": (lambda ws: ["train", "--dataset", ws.path("no-such-folder"), "--steps", 1], ("dataset folder", "does not exist")),
    "empty dataset folder": (lambda ws: ["train", "--dataset", ws.image_folder("empty", []), "--steps", 1], ("no images",)),
    "images of mixed sizes": (lambda ws: ["train", "--dataset", ws.image_folder("sizes", [("L", 8), ("RGB", 16)])], ("differ in size", "0.png is 8x8, 1.png is 16x16", "resize")),
    "torchvision set without files": (lambda ws: ["train", "--dataset", "mnist", "--data-dir", ws.path("nothing")],
                                      ("cannot read 'mnist'", "train-images-idx3-ubyte, train-labels-idx1-ubyte", "nothing/MNIST/raw", "gunzip")),
    "cifar10 without files": (lambda ws: ["train", "--dataset", "cifar10", "--data-dir", ws.path("nothing")],
                              ("no CIFAR-10 under", "nothing", "cifar-10-batches-bin/", "cifar-10-binary.tar.gz", "downloads nothing")),
    "data dir without a dataset": (lambda ws: ["train", "--data-dir", ws.image_folder("imgs", [("L", 8)]), "--steps", 1], ("read no --data-dir", "--dataset FOLDER")),
    "resolution for the digits": (lambda ws: ["train", "--resolution", 16, "--steps", 1], ("digits are 8x8", "--resolution")),
    "resolution of zero": (lambda ws: ["train", "--dataset", ws.image_folder("tiny", [("L", 8)]), "--resolution", 0], ("resolution must be",)),
    "unknown bad_images": (lambda ws: ["train", "-o", "bad_images=ignore"], ("bad_images must be one of error, skip",)),
    "unknown process": (lambda ws: ["train", "--process", "rectified_flow"], ("did you mean 'rectified-flow'",)),
    "unknown process option": (lambda ws: ["train", "--process", "sde", "--coupling", "ot"], ("unknown option for process 'sde'",)),
    "unknown solver": (lambda ws: ["sample", ws.run, "--solver", "huen"], ("did you mean 'heun'",)),
    "solver without the capability": (
        lambda ws: ["sample", ws.run, "--solver", "euler-maruyama", "--diffusion", "natural"],
        ("--diffusion sigma",),
    ),
    "option the solver lacks": (lambda ws: ["sample", ws.run, "--solver", "heun", "--eta", 0.5], ("'heun' takes no options",)),
    "unknown grid": (lambda ws: ["sample", ws.run, "--grid", "karas"], ("did you mean 'karras'",)),
    "train steps zero": (lambda ws: ["train", "--steps", 0], ("steps must be a whole number >= 1",)),
    "train steps negative": (lambda ws: ["train", "--steps", -3], ("steps must be a whole number >= 1",)),
    "train steps beyond any run": (lambda ws: ["train", "--steps", 10**21], ("steps must be at most 1000000000",)),
    "sample steps beyond any solver": (lambda ws: ["sample", ws.run, "--steps", 10**9], ("steps must be a whole number from 1 to 100000",)),
    "sample n beyond any score": (lambda ws: ["sample", ws.run, "--n", 10**9], ("--n must be a whole number from 1 to 1000000",)),
    "batch size zero": (lambda ws: ["train", "--batch-size", 0], ("--batch-size must be a whole number >= 1",)),
    "batch larger than the data": (lambda ws: ["train", "--batch-size", 5000, "--out", ws.path("big-batch")], ("lower --batch-size",)),
    "learning rate beyond float32": (lambda ws: ["train", "--lr", 1e39], ("lr must be a positive number",)),
    "negative checkpoint interval": (lambda ws: ["train", "--checkpoint-every", -1], ("checkpoint_every",)),
    "sample steps zero": (lambda ws: ["sample", ws.run, "--steps", 0], ("steps must be",)),
    "sample n zero": (lambda ws: ["sample", ws.run, "--n", 0], ("--n must be a whole number from 1 to 1000000",)),
    "sample n negative": (lambda ws: ["sample", ws.run, "--n", -4], ("--n must be a whole number from 1 to 1000000",)),
    "eval n zero": (lambda ws: ["eval", ws.run, "--n", 0], ("--n must be a whole number from 1",)),
    "eval n one": (lambda ws: ["eval", ws.run, "--n", 1], ("--n must be >= 4", "nearest neighbours", "not 1")),
    "eval n three": (lambda ws: ["eval", ws.run, "--n", 3], ("--n must be >= 4", "not 3")),
    "eval n too large": (lambda ws: ["eval", ws.run, "--n", 2000], ("n must be at most 898", "not 2000")),
    "eval samples file too small": (lambda ws: ["eval", "--samples", samples_file(ws, "three.npz", 3)], ("images in", "must be >= 4", "not 3")),
    "backbone channels not a list": (lambda ws: ["train", "-o", "model.block_channels=abc", "--out", ws.path("m1")], ("model.block_channels must be a list",)),
    "backbone channels negative": (lambda ws: ["train", "-o", "model.block_channels=[16,-32]", "--out", ws.path("m2")], ("model.block_channels must be",)),
    "backbone norm groups zero": (lambda ws: ["train", "-o", "model.norm_groups=0", "--out", ws.path("m3")], ("model.norm_groups must be a whole number >= 1",)),
    "backbone dropout nan": (lambda ws: ["train", "-o", "model.dropout=nan", "--out", ws.path("m4")], ("model.dropout must be a number from 0",)),
    "backbone attention not booleans": (lambda ws: ["train", "-o", "model.attention=[1,0]", "--out", ws.path("m5")], ("model.attention must be a list of true/false",)),
    "backbone layers fractional": (lambda ws: ["train", "-o", "model.layers_per_block=1.5", "--out", ws.path("m6")], ("model.layers_per_block",)),
    "backbone key in print-config": (lambda ws: ["train", "-o", "model.block_channels=abc", "--print-config"], ("model.block_channels must be a list",)),
    "sample of NaN weights": (lambda ws: ["sample", with_nan_weights(ws), "--out", ws.path("nan.png")], ("ema.safetensors holds non-finite weights",)),
    "eval of NaN weights": (lambda ws: ["eval", ws.path("nan")], ("ema.safetensors holds non-finite weights",)),
    "export of NaN weights": (lambda ws: ["export", ws.path("nan"), ws.path("nan-export")], ("non-finite weights",)),
    "resume from NaN weights": (lambda ws: ["train", "--resume", with_a_nan_checkpoint(ws), "--steps", 12], ("model.safetensors holds non-finite weights",)),
    "out is a file": (lambda ws: ["train", "--steps", 1, "--out", existing_file(ws, "a-file")], ("is a file, not a folder",)),
    "sample on an unknown device": (lambda ws: ["sample", ws.run, "--device", "tpu", "--out", ws.path("tpu.png")], ("device must be one of auto, cpu, cuda, mps",)),
    "eval on an unknown device": (lambda ws: ["eval", ws.run, "--device", "tpu"], ("device must be one of",)),
    "sample seed beyond 64 bits": (lambda ws: ["sample", ws.run, "--seed", 2**70, "--out", ws.path("seed.png")], ("seed must be a whole number from",)),
    "train seed beyond 64 bits": (lambda ws: ["train", "--seed", 2**70, "--out", ws.path("seed-run")], ("seed must be a whole number from",)),
    "missing run": (lambda ws: ["sample", ws.path("no-such-run")], ("does not exist",)),
    "folder that is not a run": (lambda ws: ["sample", ws.image_folder("not-a-run", [])], ("not a genflow run",)),
    "resume a folder that is not a run": (lambda ws: ["train", "--resume", ws.image_folder("not-a-run-either", [])], ("not a genflow run",)),
    "resume under another process": (lambda ws: ["train", "--resume", ws.run, "--process", "ddpm"], ("process is 'rectified-flow', not 'ddpm'",)),
    "resume with another model": (lambda ws: ["train", "--resume", ws.run, "--prediction", "eps"], ("process option prediction is 'velocity', not 'eps'",)),
    "resume with --out": (lambda ws: ["train", "--resume", ws.run, "--out", ws.path("elsewhere")], ("drop --config, --out",)),
    "resume with no valid checkpoint": (lambda ws: ["train", "--resume", with_only_a_corrupt_checkpoint(ws)], ("verifies",)),
    "resume a finished run without checkpoints": (lambda ws: ["train", "--resume", without_checkpoints(ws)], ("no checkpoint to resume from",)),
    "weights of another model": (lambda ws: ["sample", with_foreign_weights(ws)], ("does not fit the model",)),
    "pickle where safetensors is expected": (lambda ws: ["sample", with_pickled_weights(ws)], ("not a valid safetensors file",)),
    "truncated safetensors": (lambda ws: ["sample", truncated(ws.copy_of_run("truncated") / "ema.safetensors").parent], ("not a valid safetensors file",)),
    "sample output exists": (lambda ws: ["sample", ws.run, "--out", existing_file(ws, "kept.png")], ("exists", "--overwrite")),
    "train output exists": (lambda ws: ["train", "--config", ws.preset, "--out", ws.run], ("--overwrite",)),
    "sample output of unknown kind": (lambda ws: ["sample", ws.run, "--out", ws.path("x.jpg")], ("use a .png",)),
    "unwritable sample output": (lambda ws: ["sample", ws.run, "--out", existing_file(ws, "a-file") / "grid.png"], ("cannot write",)),
    "sample output parent missing": (lambda ws: ["sample", ws.run, "--out", ws.path("no-dir") / "grid.png"], ("no-dir does not exist", "create it first")),
    "sample PNG folder with a missing parent": (lambda ws: ["sample", ws.run, "--out", ws.path("no-dir") / "pngs"], ("no-dir does not exist",)),
    "sample output in an unwritable place": (lambda ws: ["sample", ws.run, "--out", existing_file(ws, "c-file") / "sub" / "x.npz"],
                                             ("cannot write", "c-file is a file")),
    "sample scale zero": (lambda ws: ["sample", ws.run, "--scale", 0], ("scale must be a whole number from 1",)),
    "unwritable run directory": (lambda ws: ["train", "--config", ws.preset, "--out", existing_file(ws, "b-file") / "run"], ("cannot create run directory",)),
    "unreadable config": (lambda ws: ["train", "--config", existing_file(ws, "bad.toml")], ("cannot read config",)),
    "missing config": (lambda ws: ["train", "--config", ws.path("missing.toml")], ("does not exist",)),
    "backbone too narrow for attention": (lambda ws: ["train", "--config", narrow_backbone(ws)], ("need at least 32 channels",)),
    "process option not a whole number": (lambda ws: ["train", "--process", "ddpm", "-o", "timesteps=1.5", "--steps", 5], ("process option timesteps must be a whole number, not 1.5",)),
    "process option not a number": (lambda ws: ["train", "--process", "ddpm", "-o", "timesteps=abc"], ("timesteps must be a whole number, not 'abc'",)),
    "config key of the wrong type": (lambda ws: ["train", "-o", "lr=fast"], ("lr must be a number, not 'fast'",)),
    "unknown -o key": (lambda ws: ["train", "-o", "log_evry=1"], ("unknown option 'log_evry'", "did you mean 'log_every'")),
    "print the config of a resumed run": (lambda ws: ["train", "--resume", ws.run, "--print-config"], ("shows a new run's config",)),
    "eta beyond one": (lambda ws: ["sample", ws.run, "--solver", "ddim", "--eta", 5], ("eta must be in [0, 1], not 5.0",)),
    "steps for an adaptive solver": (lambda ws: ["sample", ws.run, "--solver", "dopri5", "--steps", 20], ("dopri5 is adaptive", "--rtol")),
}


def narrow_backbone(ws) -> Path:
    """A preset whose last block (which feeds the middle block's attention) has 16 channels."""
    path = ws.path("narrow.toml")
    path.write_text('steps = 2\n\n[model]\nblock_channels = [8, 16]\nattention = [false, false]\nnorm_groups = 8\n')
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content hash (folders as '/')."""
    return {str(p.relative_to(root)): "/" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_damages_nothing(case, workspace, monkeypatch):
    build, fragments = CASES[case]
    monkeypatch.chdir(workspace.root)  # a stray default output (runs/...) would show in the snapshot
    arguments = build(workspace)
    before = snapshot(workspace.root)
    expect_usage_error(invoke(*arguments), *fragments)
    assert snapshot(workspace.root) == before


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc, a folder that takes no new files even for root")
def test_an_output_in_proc_is_refused_before_sampling(workspace, monkeypatch):
    def sample_run(*args, **kwargs):
        raise AssertionError("sampled before checking the output")

    monkeypatch.setattr("genflow.api.sample_run", sample_run)
    expect_usage_error(invoke("sample", workspace.run, "--out", "/proc/x.png"), "cannot write /proc/x.png")


def test_more_samples_than_memory_holds_are_refused_naming_the_most_that_fit(workspace, monkeypatch):
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 100}  # a machine of 400 KiB: 1600 float32 8x8 images
    monkeypatch.setattr("genflow.runs.loaded.os.sysconf", lambda name: pages[name])
    refused = invoke("sample", workspace.run, "--n", 2000, "--out", workspace.path("many.npz"))
    expect_usage_error(refused, "2000 samples of 1x8x8 need", "ask for at most 1600")
    assert not Path(workspace.path("many.npz")).exists()
