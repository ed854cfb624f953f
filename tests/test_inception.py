"""FID and KID in Inception-v3 features (Szegedy et al. 2016; FID: Heusel et al. 2017; KID:
Binkowski et al. 2018) through torch-fidelity's network, offline, from a local weights file.

No test downloads anything: the weights are torch-fidelity's Inception-v3 with random
initial parameters, saved once per session; the Frechet distance is checked against
pytorch-fid's reference implementation."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import expect_usage_error, invoke
from PIL import Image
from torch import nn

from genflow.errors import GenflowError
from genflow.eval import inception
from genflow.eval.inception import (
    INCEPTION_ENV,
    KID_SUBSET_SIZE,
    KID_SUBSETS,
    fid_scores,
    inception_features,
    inception_weights_path,
    load_inception,
    reference_cache_path,
    reference_statistics,
)
from genflow.eval.metrics import frechet_distance, frechet_from_moments, kernel_distance
from genflow.eval.scoring import choose_metric, fid_of_run


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    """torch-fidelity's Inception-v3 state dict with random initial parameters (about 95 MB),
    built without loading any weights: its ``load_state_dict`` is a no-op while it is made."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    folder = tmp_path_factory.mktemp("inception")
    empty = folder / "empty.pth"
    torch.save({}, empty)
    torch.manual_seed(0)
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *args, **kwargs: None):
        network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    path = folder / "random-inception.pth"
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GENFLOW_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def random_images(count: int, size: tuple[int, int], channels: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, channels, *size), generator=generator, dtype=torch.uint8)


# --- the Frechet distance ----------------------------------------------------------------
@pytest.mark.parametrize("count, dim", [(300, 64), (100, 256)])
def test_frechet_from_moments_matches_pytorch_fid(count, dim):
    """Full-rank (300 x 64) and singular (100 points in 256-d) covariances alike."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    generator = np.random.default_rng(0)
    a, b = generator.normal(size=(count, dim)), 1.3 * generator.normal(size=(count, dim)) + 0.2
    moments = [a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)]
    ours = frechet_from_moments(*(torch.from_numpy(m) for m in moments))
    assert ours == pytest.approx(calculate_frechet_distance(*moments), rel=1e-6)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ours, rel=1e-9)


# --- loading weights -----------------------------------------------------------------------
def test_features_are_torch_fidelitys_with_its_tensorflow_compatible_resize(random_weights):
    """Our features equal torch-fidelity's extractor called directly with the same weights on the
    same uint8 images; the resize is checked with a hook on the first convolution, whose input
    must be ``interpolate_bilinear_2d_like_tensorflow1x`` of the images, scaled to [-1, 1)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    model = load_inception(random_weights)
    images = random_images(2, (20, 28))
    seen = []
    hook = model.extractor.Conv2d_1a_3x3.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        ours = inception_features(model, images, batch_size=1)
    finally:
        hook.remove()
    direct = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(random_weights))
    assert ours.shape == (2, 2048) and ours.dtype == torch.float64 and ours.std(0).max() > 0
    assert torch.equal(ours.float(), direct(images)[0])
    resized = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
    assert torch.equal(torch.cat(seen), (resized - 128) / 128)
    assert load_inception(random_weights) is model  # loaded once per file version


def test_float_and_grey_images_are_converted(random_weights):
    """Images in [-1, 1] score as their uint8 quantization; 1-channel images as 3 equal channels."""
    from genflow.data.pixels import uint8_to_unit_range

    model = load_inception(random_weights)
    grey = random_images(2, (16, 16), channels=1, seed=1)
    from_uint8 = inception_features(model, grey.repeat(1, 3, 1, 1))
    assert torch.equal(inception_features(model, uint8_to_unit_range(grey)), from_uint8)
    with pytest.raises(GenflowError, match="1 or 3 channels"):
        inception_features(model, random_images(1, (16, 16), channels=2))


def test_random_weights_are_marked_non_standard(random_weights):
    model = load_inception(random_weights)
    assert not model.standard and len(model.sha256) == 64
    assert inception.is_standard("6726825d" + "0" * 56)


def test_pickled_code_is_refused_and_never_run(tmp_path):
    """A weights file whose unpickling would create a marker file (it does, loaded unsafely) is
    refused in one line, and the marker never appears."""

    def crafted(marker: Path) -> Path:
        class Payload:
            def __reduce__(self):
                return open, (str(marker), "w")

        path = tmp_path / f"{marker.stem}.pth"
        torch.save({"fc.weight": Payload()}, path)
        return path

    proof = tmp_path / "proof"
    torch.load(crafted(proof), weights_only=False)
    assert proof.exists()  # the payload works when unpickled freely
    marker = tmp_path / "marker"
    with pytest.raises(GenflowError, match="is not a plain tensor file") as error:
        load_inception(crafted(marker))
    assert "\n" not in str(error.value)
    assert not marker.exists()


def test_safetensors_weights_work(random_weights, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(random_weights, weights_only=True)
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    images = random_images(1, (12, 12), seed=2)
    model = load_inception(path)
    assert torch.equal(inception_features(model, images), inception_features(load_inception(random_weights), images))
    assert model.sha256 != load_inception(random_weights).sha256


def test_missing_weights_name_the_option_and_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    with pytest.raises(GenflowError) as error:
        inception_weights_path(None)
    assert "--inception-weights" in str(error.value) and INCEPTION_ENV in str(error.value)
    monkeypatch.setenv(INCEPTION_ENV, str(tmp_path / "from-env.pth"))
    assert inception_weights_path(None) == tmp_path / "from-env.pth"
    assert inception_weights_path(tmp_path / "given.pth") == tmp_path / "given.pth"
    with pytest.raises(GenflowError, match="from-env.pth does not exist.*--inception-weights"):
        load_inception(inception_weights_path(None))


@pytest.mark.parametrize(
    "state, fragments",
    [
        ({"fc.weight": torch.zeros(10, 10)}, ["not Inception-v3 FID weights", "missing keys", "wrong shapes fc.weight"]),
        ({"extra": torch.zeros(1)}, ["not Inception-v3 FID weights", "unexpected keys extra"]),
        ([torch.zeros(1)], ["not Inception-v3 FID weights", "not a dict of tensors"]),
    ],
)
def test_other_tensor_files_are_refused(tmp_path, state, fragments):
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(GenflowError) as error:
        load_inception(path)
    assert all(fragment in str(error.value) for fragment in fragments) and "\n" not in str(error.value)


# --- reference statistics ------------------------------------------------------------------
class CheapFeatures(nn.Module):
    """A stand-in for Inception: 2048 random projections of the pixels (fast), with a sha256."""

    def __init__(self, sha256: str = "ab" * 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.project = nn.Linear(3 * 8 * 8, 2048, dtype=torch.float64)
        self.sha256 = sha256

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(images.double().flatten(1) / 255)


class CountedBatches:
    """The reference images in batches of 7, counting how often they are read."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.calls = images, 0

    def __call__(self):
        self.calls += 1
        return (self.images[i : i + 7] for i in range(0, len(self.images), 7))


def test_reference_statistics_are_exact_and_cached(cache_dir):
    model, images = CheapFeatures(), random_images(30, (8, 8))
    batches = CountedBatches(images)
    stats = reference_statistics("toy", "f" * 64, batches, len(images), model)
    features = inception_features(model, images)
    assert torch.allclose(stats.mu, features.mean(0), rtol=1e-9, atol=1e-12)
    assert torch.allclose(stats.sigma, torch.cov(features.T), rtol=1e-9, atol=1e-12)
    assert stats.rows.dtype == torch.float32 and len(stats.rows) == 30 and stats.count == 30
    path = reference_cache_path("f" * 64, model.sha256)
    assert path == cache_dir / "fid" / f"{'f' * 16}-{'ab' * 8}.npz" and path.is_file()
    again = reference_statistics("toy", "f" * 64, batches, len(images), model)
    assert batches.calls == 1 and torch.equal(again.sigma, stats.sigma) and torch.equal(again.rows, stats.rows)
    reference_statistics("toy", "e" * 64, batches, len(images), model)  # other data
    reference_statistics("toy", "f" * 64, batches, len(images), CheapFeatures("cd" * 32))  # other weights
    assert batches.calls == 3


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped byte", "wrong shape"])
def test_a_damaged_cache_file_is_recomputed(cache_dir, damage):
    model, images = CheapFeatures(), random_images(12, (8, 8))
    batches = CountedBatches(images)
    stats = reference_statistics("toy", "f" * 64, batches, len(images), model)
    path = reference_cache_path("f" * 64, model.sha256)
    if damage == "garbage":
        path.write_bytes(b"not an npz")
    elif damage == "truncated":  # still starts with the zip signature
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "flipped byte":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        arrays = dict(np.load(path)) | {"mu": np.zeros(10)}
        with path.open("wb") as file:
            np.savez(file, **arrays)
    again = reference_statistics("toy", "f" * 64, batches, len(images), model)
    assert batches.calls == 2 and torch.equal(again.mu, stats.mu)
    assert inception.read_reference(path).valid("f" * 64, model.sha256)  # rewritten whole


def test_a_wrong_image_count_is_refused(cache_dir):
    with pytest.raises(GenflowError, match="holds 12 images, not the 13"):
        reference_statistics("toy", "f" * 64, CountedBatches(random_images(12, (8, 8))), 13, CheapFeatures())


def test_fid_scores_are_frechet_and_kid_against_the_reference(cache_dir):
    """Features of the reference images shifted by ``delta`` have the same covariance, so their
    FID is exactly ``|delta|^2`` (one 2048-d Frechet distance: each costs seconds on a CPU)."""
    model = CheapFeatures()
    real = random_images(40, (8, 8))
    reference = reference_statistics("toy", "f" * 64, CountedBatches(real), len(real), model)
    delta = torch.linspace(-0.1, 0.1, 2048, dtype=torch.float64)
    shifted = inception_features(model, real) + delta
    scores = fid_scores(shifted, reference)
    assert scores["fid"] == pytest.approx(float(delta.square().sum()), rel=1e-5)  # rank-39 covariances in 2048-d
    expected_kid = kernel_distance(shifted, reference.rows.double(), subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE)
    assert scores["kid"] == pytest.approx(expected_kid, rel=1e-12) and scores["kid"] > 0
    assert (scores["n"], scores["reference_images"], scores["standard_weights"]) == (40, 40, False)


# --- choosing the metric and the command line -----------------------------------------------
def test_metric_choice(monkeypatch):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    assert choose_metric(None, "digits", None) == "classifier"
    assert choose_metric(None, "cifar10", Path("w.pth")) == "fid"
    monkeypatch.setenv(INCEPTION_ENV, "w.pth")
    assert (choose_metric(None, "cifar10", None), choose_metric(None, "digits", None)) == ("fid", "classifier")
    with pytest.raises(GenflowError, match="unknown metric 'is'"):
        choose_metric("is", "digits", None)


def test_fid_refuses_classes_before_sampling():
    loaded = SimpleNamespace(classes=("a", "b"), model=None, path=Path("run"))
    with pytest.raises(GenflowError, match="drop --class"):
        fid_of_run(loaded, 10, "a", 0, None, sample=None)


@pytest.fixture
def folder_and_samples(tmp_path) -> tuple[Path, Path]:
    """An image folder of 10 random 16x16 RGB PNGs, and an .npz of 6 samples of another size (few:
    Inception-v3 at 299x299 is slow on a CPU)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(random_images(10, (16, 16)).permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    samples = tmp_path / "samples.npz"
    np.savez(samples, random_images(6, (24, 24), seed=3).permute(0, 2, 3, 1).numpy())
    return folder, samples


@pytest.mark.slow
def test_eval_samples_file_with_fid(random_weights, folder_and_samples, cache_dir, monkeypatch):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    folder, samples = folder_and_samples
    args = ("eval", "--samples", samples, "--dataset", folder, "--metric", "fid", "--inception-weights", random_weights)
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert {"fid", "kid"} <= scores.keys() and scores["fid"] > 0
    assert (scores["n"], scores["reference_images"], scores["standard_weights"]) == (6, 10, False)
    assert "not comparable with published FID" in result.stderr
    table = invoke(*args)  # the reference statistics now come from the cache
    assert table.exit_code == 0, table.output
    assert "FID" in table.stdout and "KID" in table.stdout and "n=6; papers use 50,000" in table.stdout
    assert f"{scores['fid']:.3f}" in table.stdout
    assert len(list((cache_dir / "fid").glob("*.npz"))) == 1


def test_eval_fid_without_weights_fails_in_one_line(folder_and_samples, monkeypatch):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    folder, samples = folder_and_samples
    result = invoke("eval", "--samples", samples, "--dataset", folder, "--metric", "fid")
    expect_usage_error(result, "--inception-weights", INCEPTION_ENV)


def test_torch_fidelity_gets_only_the_verified_tensors(random_weights, monkeypatch):
    """torch-fidelity (which unpickles freely) is handed an in-memory copy of the tensors that
    were loaded safely and checked, never the user's file."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    given, real_init = [], FeatureExtractorInceptionV3.__init__

    def recording_init(self, *args, **kwargs):
        given.append(kwargs["feature_extractor_weights_path"])
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(FeatureExtractorInceptionV3, "__init__", recording_init)
    inception.cached_inception.cache_clear()
    load_inception(random_weights)
    assert len(given) == 1 and isinstance(given[0], io.BytesIO)


@pytest.mark.slow
def test_a_run_on_a_streamed_folder_is_scored_with_fid_in_training_eval_and_sweep(random_weights, cache_dir, tmp_path, monkeypatch):
    """The run-level paths: ``train --eval-every`` logs FID, ``eval RUN --metric fid`` samples in
    chunks that do not change the samples, and ``sweep --metric fid`` tabulates FID."""
    from conftest import TINY_MODEL
    from test_streaming import write_folder

    from genflow import api
    from genflow.eval import scoring

    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    folder = write_folder(tmp_path / "images", 12, classes=1)
    model = [arg for key, value in TINY_MODEL.items() for arg in ("-o", f"model.{key}={json.dumps(value)}")]
    trained = invoke("train", "--dataset", folder, "--steps", 2, "--batch-size", 4, "--eval-every", 2, "-o", "eval_n=4",
                     "-o", f"inception_weights={random_weights}", "-o", "data_in_memory_mb=0", "-o", "data_workers=0",
                     "-o", "sample_every=0", "--no-final-grid", "--device", "cpu", *model, "--out", tmp_path / "run")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("step") == 2 and row.get("fid", 0) > 0 and "kid" in row for row in logged), logged

    scored = invoke("eval", tmp_path / "run", "--metric", "fid", "--n", 5, "--steps", 2, "--inception-weights", random_weights, "--json")
    assert scored.exit_code == 0, scored.output
    scores = json.loads(scored.stdout)
    assert (scores["n"], scores["reference_images"], scores["steps"]) == (5, 12, 2)
    loaded = api.load(tmp_path / "run", "cpu")
    monkeypatch.setattr(scoring, "FID_CHUNK", 2)  # three chunks of the same per-sample seeds
    chunked = api.evaluate_run(loaded, 5, steps=2, metric="fid", inception_weights=random_weights)
    assert chunked["fid"] == pytest.approx(scores["fid"], rel=1e-6) and chunked["nfe"] == scores["nfe"]

    swept = invoke("sweep", tmp_path / "run", "--solvers", "euler", "--steps", "2", "--n", 4, "--metric", "fid",
                   "--inception-weights", random_weights, "--out", tmp_path / "sweep")  # fmt: skip
    assert swept.exit_code == 0, swept.output
    rows = [json.loads(line) for line in (tmp_path / "sweep" / "sweep.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["fid"] > 0 and "FID=" in swept.stderr
