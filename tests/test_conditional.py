"""Class-conditional runs end to end: training on labels (every process, OT coupling within
classes), bit-identical resume, sampling by class from the command line, and the bad inputs
that come with labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, expect_usage_error, invoke, tiny_preset
from PIL import Image
from test_checkpoints import Recorder, assert_same_run, interrupted_run, tiny_config

from genflow import api
from genflow.errors import GenflowError

TILE = 33  # an 8x8 digit upscaled 4 times, plus the grid's 1-pixel padding


def labelled_folder(path: Path, classes: dict[str, int]) -> Path:
    """``count`` 8x8 grey images in a subfolder per class, each class a different brightness."""
    for k, (name, count) in enumerate(classes.items()):
        (path / name).mkdir(parents=True)
        for i in range(count):
            Image.new("L", (8, 8), color=40 * k + i).save(path / name / f"{i}.png")
    return path


@pytest.mark.parametrize("process", [{}, {"process": "cnf", "process_options": {"coupling": "ot"}}], ids=["rf", "cnf-ot"])
def test_a_conditional_run_stopped_and_resumed_is_bit_identical(process, tmp_path):
    """Label dropout draws from the run's noise stream and the labels travel with the data order,
    so a resumed conditional run (also with OT pairing inside each class) is the same run."""
    changes = {"conditional": True, "label_dropout": 0.3, **process}
    reference = api.train(tiny_config(**changes), tmp_path / "reference")
    interrupted_run(tmp_path / "run", at=15, **changes)
    api.resume(tmp_path / "run", reporter=Recorder())
    assert_same_run(tmp_path / "run", reference)
    record = json.loads((reference / "config.json").read_text())
    assert record["model"]["num_classes"] == 10 and record["data"]["classes"] == [str(k) for k in range(10)]
    assert record["train"]["conditional"] is True and len(record["data"]["labels_sha256"]) == 64


def test_resume_refuses_changed_labels_and_a_changed_conditioning(tmp_path):
    folder = labelled_folder(tmp_path / "images", {"cat": 10, "dog": 10})
    run = api.train(tiny_config(steps=2, batch_size=8, dataset=str(folder), conditional=True), tmp_path / "run")
    with pytest.raises(GenflowError, match="cannot resume: this run's label_dropout is 0.1, not 0.5"):
        api.resume(run, {"steps": 4, "label_dropout": 0.5})
    shutil.move(folder / "cat" / "0.png", folder / "dog" / "x.png")  # same images, one relabelled
    (folder / "dog" / "x.png").rename(folder / "dog" / "0b.png")
    with pytest.raises(GenflowError, match="cannot resume: this run's (data|labels) sha256"):
        api.resume(run, {"steps": 4})


def test_a_labelled_folder_trains_a_conditional_run_whose_classes_are_its_subfolders(tmp_path):
    folder = labelled_folder(tmp_path / "images", {"zebra": 8, "ant": 8, "moth": 8})
    preset = tiny_preset(tmp_path / "preset.toml", steps=3, batch_size=8, conditional=True, sample_every=0, device="cpu")
    assert invoke("train", "--config", preset, "--dataset", folder, "--out", tmp_path / "run").exit_code == 0
    loaded = api.load(tmp_path / "run", device="cpu")
    assert loaded.classes == ("ant", "moth", "zebra")
    grid = Image.open(tmp_path / "run" / "samples" / "step-000003.png")
    assert grid.size == (8 * TILE + 1, 3 * TILE + 1)  # one row of 8 per class
    result = invoke("sample", tmp_path / "run", "--class", "moth,0", "--n", "2", "--steps", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["classes"] == ["moth", "ant"]


def test_conditional_on_data_without_labels_is_one_line_and_writes_nothing(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(8):
        Image.new("L", (8, 8), color=i).save(flat / f"{i}.png")
    result = invoke("train", "--conditional", "--dataset", flat, "--steps", "2", "--out", tmp_path / "run")
    expect_usage_error(result, "--conditional needs labelled data", "one subfolder per class")
    assert not (tmp_path / "run").exists()
    expect_usage_error(invoke("train", "--conditional", "-o", "label_dropout=1", "--out", tmp_path / "run"), "label_dropout")


def test_class_all_samples_one_row_per_class_with_the_same_seeds_in_every_row(conditional_run, tmp_path):
    out = tmp_path / "grid.png"
    result = invoke("sample", conditional_run, "--class", "all", "--n", "3", "--steps", "4", "--seed", "5", "--out", out)
    assert result.exit_code == 0, result.output
    assert "classes 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 (guidance 1)" in result.stdout
    assert Image.open(out).size == (3 * TILE + 1, 10 * TILE + 1)
    loaded = api.load(conditional_run, device="cpu")
    request = api.ClassRequest.of(loaded, "all", 3, seed=5)
    rows, _ = api.sample_run(loaded, request.n, steps=4, seed=request.seeds, labels=request.labels)
    alone, _ = api.sample_run(loaded, 3, steps=4, seed=5, labels=[7, 7, 7])  # row 7 on its own: seeds 5, 6, 7
    torch.testing.assert_close(rows[21:24], alone, atol=1e-5, rtol=0)


def test_guided_sampling_reports_twice_the_nfe(conditional_run):
    runs = [
        invoke("sample", conditional_run, "--class", "3", "--n", "4", "--steps", "5", "--guidance", g, "--json") for g in (1, 3)
    ]
    plain, guided = (json.loads(r.stdout) for r in runs)
    assert (plain["nfe"], guided["nfe"]) == (5, 10)
    assert guided["guidance"] == 3 and guided["classes"] == ["3"]


def test_a_guidance_interval_in_noise_levels_is_the_same_noise_for_every_process(conditional_run, tmp_path):
    """``sigma=LO,HI`` bounds EDM's noise level sigma/alpha; on rectified flow it is t / (1 - t),
    so sigma=1,3 is t in [1/2, 3/4]: the same samples as those times."""
    args = ("sample", conditional_run, "--class", "3", "--n", "4", "--steps", "8", "--guidance", "3", "--json")
    by_level = json.loads(invoke(*args, "--guidance-interval", "sigma=1,3", "--out", tmp_path / "level.npz").stdout)
    assert by_level["guidance_interval"] == pytest.approx([0.5, 0.75], abs=1e-12)
    by_time = json.loads(invoke(*args, "--guidance-interval", "0.5,0.75", "--out", tmp_path / "time.npz").stdout)
    assert by_level["nfe"] == by_time["nfe"] == 8 + 3  # t = 0.75, 0.625, 0.5 guided


def test_info_names_the_classes(conditional_run):
    result = invoke("info", conditional_run)
    assert result.exit_code == 0 and "classes" in result.stdout and "label dropout 0.1" in result.stdout


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--class", "10"], ["class 10 is out of range", "0..9"]),
        (["--class", "seven"], ["unknown class 'seven'"]),
        (["--class", "1,,2"], ["--class takes 'all' or comma-separated classes"]),
        (["--class", "1", "--guidance", "-1"], ["guidance must be a finite number >= 0"]),
        (["--class", "1", "--guidance", "inf"], ["guidance must be a finite number >= 0"]),
        (["--guidance", "2"], ["--guidance needs --class"]),
        (["--class", "1", "--guidance-interval", "0.8,0.2"], ["0 <= LO < HI <= 1"]),
        (["--class", "1", "--guidance-interval", "a,b"], ["--guidance-interval takes two times"]),
        (["--class", "1", "--guidance-interval", "sigma=5,1"], ["noise levels must satisfy 0 <= LO < HI"]),
        (["--class", "1", "--guidance-interval", "sigma=1"], ["two noise levels sigma=LO,HI"]),
    ],
)
def test_bad_class_and_guidance_arguments_are_one_line(conditional_run, tmp_path, args, fragments):
    out = tmp_path / "never.png"
    expect_usage_error(invoke("sample", conditional_run, *args, "--out", out), *fragments)
    assert not out.exists()


def test_class_and_guidance_on_an_unconditional_run_are_one_line(tmp_path):
    preset = tiny_preset(tmp_path / "preset.toml", steps=2, batch_size=16, sample_every=0, final_grid=False, device="cpu")
    assert invoke("train", "--config", preset, "--out", tmp_path / "run").exit_code == 0
    expect_usage_error(invoke("sample", tmp_path / "run", "--class", "3"), "is unconditional", "--conditional")
    expect_usage_error(invoke("sample", tmp_path / "run", "--guidance", "2"), "is unconditional")
    assert "classes" not in json.loads(invoke("sample", tmp_path / "run", "--n", "4", "--steps", "2", "--json").stdout)
    assert TINY_MODEL  # the preset's backbone
