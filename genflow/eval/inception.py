"""FID and KID in the standard Inception-v3 feature space, offline, from a local weights file.

- The network and its input resize are torch-fidelity's (``FeatureExtractorInceptionV3``,
  ``inception-v3-compat``): Inception-v3 (Szegedy et al. 2016) as the TensorFlow FID code ran
  it, images resized to 299x299 by ``interpolate_bilinear_2d_like_tensorflow1x``; the features
  are its 2048-d pool layer.
- FID: the Frechet distance between Gaussians fitted to the features of the samples and of the
  real data (Heusel et al. 2017, eq. 6). KID: the unbiased squared MMD with the cubic polynomial
  kernel, averaged over random subsets (Binkowski et al. 2018).
- genflow downloads nothing: the weights come from a file the user names (``--inception-weights
  FILE`` or :data:`INCEPTION_ENV`). The file is read once, hashed, and loaded without running
  pickled code (``torch.load(weights_only=True)`` or safetensors), its names and shapes checked,
  and only then handed to torch-fidelity (which would otherwise unpickle it freely). Published
  FIDs use the 2015-12-05 weights (sha256 ``6726825d...``); scores from other weights are marked
  ``standard_weights: false``.
- The real data's statistics (mean, covariance and a random subset of feature rows for KID) are
  computed once per dataset fingerprint and weights, and cached as an ``.npz`` (see
  :func:`reference_statistics`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from genflow.errors import GenflowError
from genflow.eval.metrics import frechet_from_moments, kernel_distance
from genflow.storage import atomic_write

INCEPTION_ENV = "GENFLOW_INCEPTION_WEIGHTS"
CACHE_ENV = "GENFLOW_CACHE_DIR"
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
STANDARD_SHA256_PREFIX = "6726825d"
NONSTANDARD_NOTE = "not the 2015-12-05 FID weights: not comparable with published FID"
FEATURES = 2048
PAPER_SAMPLES = 50_000  # the sample count FIDs in papers use
KID_ROWS = 10_000  # reference feature rows kept for KID
KID_SUBSETS = 100  # torch-fidelity's defaults for KID
KID_SUBSET_SIZE = 1000
EXTRACTOR_NAME = "inception-v3-compat"
OPTIONAL_KEY_SUFFIX = "num_batches_tracked"  # BatchNorm counters, unused in eval mode
# What torch.load(weights_only=True) raises for a pickle with code, a damaged archive or another kind of file.
UNREADABLE = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
              OverflowError, MemoryError, RecursionError)  # fmt: skip


def inception_weights_path(given: str | Path | None) -> Path:
    """The weights file: ``given`` (``--inception-weights``), else :data:`INCEPTION_ENV`."""
    chosen = given if given is not None else os.environ.get(INCEPTION_ENV)
    if not chosen:
        raise GenflowError(
            f"FID needs the Inception-v3 weights file, which genflow never downloads: download {WEIGHTS_URL} once, "
            f"then pass --inception-weights FILE or set {INCEPTION_ENV}=FILE"
        )
    return Path(chosen).expanduser()


def is_standard(sha256: str) -> bool:
    """Whether weights with this sha256 are the 2015-12-05 FID weights of published scores."""
    return sha256.startswith(STANDARD_SHA256_PREFIX)


class InceptionFeatures(nn.Module):
    """torch-fidelity's Inception-v3 with verified weights: uint8 NCHW RGB images of any size in,
    float32 (N, 2048) pool features out. ``sha256`` is the weights file's; ``standard`` whether
    it is the 2015-12-05 FID weights."""

    def __init__(self, extractor: nn.Module, sha256: str, path: Path) -> None:
        super().__init__()
        self.extractor = extractor
        self.sha256 = sha256
        self.standard = is_standard(sha256)
        self.path = path

    def forward(self, images: Tensor) -> Tensor:
        return self.extractor(images)[0]


def load_inception(path: str | Path) -> InceptionFeatures:
    """The network with the weights in ``path`` (``.pth``/``.pt`` holding a plain state dict, or
    ``.safetensors``), loaded once per file version (path and modification time)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GenflowError(
            f"Inception weights file {path} does not exist; download {WEIGHTS_URL} and pass --inception-weights FILE "
            f"or set {INCEPTION_ENV}"
        )
    stat = path.stat()
    return cached_inception(path.resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def cached_inception(path: Path, mtime_ns: int, size: int) -> InceptionFeatures:
    """The network for one version of a weights file (the arguments after ``path`` key the cache)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    data = path.read_bytes()
    state = checked_state_dict(path, read_tensors(path, data))
    verified = io.BytesIO()
    torch.save(state, verified)  # torch-fidelity unpickles what it is given: only these tensors
    verified.seek(0)
    extractor = FeatureExtractorInceptionV3(EXTRACTOR_NAME, ["2048"], feature_extractor_weights_path=verified)
    return InceptionFeatures(extractor, hashlib.sha256(data).hexdigest(), path)


def read_tensors(path: Path, data: bytes) -> dict:
    """The tensors in a weights file's bytes, never running pickled code."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            return load(data)
        except (SafetensorError, ValueError, TypeError) as error:
            raise GenflowError(f"{path} is not a valid safetensors file ({str(error)[:120]})") from None
    try:
        with warnings.catch_warnings():  # a bare pickle's protocol warning: the refusal says it all
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except UNREADABLE:
        raise GenflowError(
            f"{path} is not a plain tensor file (it holds pickled code or is damaged); genflow loads weights only as "
            f"plain tensors: use {WEIGHTS_URL}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise GenflowError(f"{path} is not Inception-v3 FID weights: it holds a {type(state).__name__}, not a dict of tensors")
    return state


@functools.cache
def expected_shapes() -> dict[str, tuple[int, ...]]:
    """The names and shapes of torch-fidelity's Inception-v3 state dict (built on the meta
    device, without weights)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # only the layout is wanted

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with torch.device("meta"):
        skeleton = Skeleton(EXTRACTOR_NAME, ["2048"], feature_extractor_weights_path=empty)
    return {name: tuple(value.shape) for name, value in skeleton.state_dict().items()}


def checked_state_dict(path: Path, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` when its names and shapes are Inception-v3's (missing BatchNorm counters are
    filled in), else one line naming what differs."""
    expected = expected_shapes()
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_KEY_SUFFIX)]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} (needs {expected[k]})"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    problems = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if keys]  # fmt: skip
    if problems:
        raise GenflowError(f"{path} is not Inception-v3 FID weights: {'; '.join(problems)}; use {WEIGHTS_URL}")
    counters = {k: torch.zeros((), dtype=torch.long) for k in expected if k not in state}
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()} | counters


def as_uint8_rgb(images: Tensor) -> Tensor:
    """uint8 NCHW with 3 channels: genflow's float images in [-1, 1] are quantized as a PNG
    would be, and 1-channel images repeated to 3 channels."""
    from genflow.data.pixels import to_uint8

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise GenflowError(f"Inception-v3 scores NCHW images with 1 or 3 channels, not shape {tuple(images.shape)}")
    images = images if images.dtype == torch.uint8 else to_uint8(images)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


@torch.inference_mode()
def inception_features(
    model: InceptionFeatures, images: Tensor, batch_size: int = 200, device: str | torch.device | None = None
) -> Tensor:
    """Float64 (N, 2048) features of NCHW ``images``: floats in [-1, 1] (converted with
    :func:`genflow.data.pixels.to_uint8`) or uint8, of any size (resized to 299x299 inside), 1-channel
    images repeated to 3 channels. ``device``: where the network runs (default: where it is)."""
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    chunks = [
        model(as_uint8_rgb(images[i : i + batch_size]).to(device)).double().cpu() for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.empty(0, FEATURES, dtype=torch.float64)


@dataclass
class ReferenceStats:
    """Inception statistics of ``count`` real images: the features' mean ``mu`` (float64, 2048)
    and covariance ``sigma`` (float64, 2048x2048), and ``rows``, a seeded random subset of up to
    :data:`KID_ROWS` feature rows (float32) for KID; ``fingerprint`` names the data and
    ``weights_sha256`` the network."""

    mu: Tensor
    sigma: Tensor
    count: int
    rows: Tensor
    fingerprint: str
    weights_sha256: str

    def valid(self, fingerprint: str, weights_sha256: str) -> bool:
        """Whether these are whole, finite statistics of this data under these weights."""
        return (
            (self.fingerprint, self.weights_sha256) == (fingerprint, weights_sha256)
            and tuple(self.mu.shape) == (FEATURES,)
            and tuple(self.sigma.shape) == (FEATURES, FEATURES)
            and self.count >= 2
            and self.rows.ndim == 2
            and 2 <= len(self.rows) <= min(self.count, KID_ROWS)
            and self.rows.shape[1] == FEATURES
            and all(bool(torch.isfinite(t).all()) for t in (self.mu, self.sigma, self.rows))
        )


def cache_root() -> Path:
    """``$GENFLOW_CACHE_DIR``, else ``$XDG_CACHE_HOME/genflow``, else ``~/.cache/genflow``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "genflow"


def reference_cache_path(fingerprint: str, weights_sha256: str) -> Path:
    return cache_root() / "fid" / f"{fingerprint[:16]}-{weights_sha256[:16]}.npz"


def reference_statistics(
    name: str, fingerprint: str, batches: Callable[[], Iterable[Tensor]], count: int, model: InceptionFeatures, seed: int = 0
) -> ReferenceStats:
    """The statistics of the ``count`` real images that ``batches()`` yields (NCHW, as
    :func:`inception_features` takes them), read from the cache when it holds them for this
    ``fingerprint`` (a sha256 of the data, the caller's) and these weights; otherwise computed in
    one pass and cached (written whole or not at all). A damaged cache file is recomputed."""
    path = reference_cache_path(fingerprint, model.sha256)
    cached = read_reference(path)
    if cached is not None and cached.valid(fingerprint, model.sha256):
        return cached
    stats = compute_reference(name, fingerprint, batches, count, model, seed)
    try:
        atomic_write(path, lambda tmp: write_reference(tmp, stats))
    except OSError as error:
        print(f"genflow: note: cannot cache the reference statistics in {path} ({error.strerror or error})", file=sys.stderr)
    return stats


def compute_reference(
    name: str, fingerprint: str, batches: Callable[[], Iterable[Tensor]], count: int, model: InceptionFeatures, seed: int = 0
) -> ReferenceStats:
    """One pass over the real images: shifted sums for the moments, and the rows kept for KID."""
    if count < 2:
        raise GenflowError(f"{name} holds {count} images; FID needs at least 2 real images")
    keep = torch.zeros(count, dtype=torch.bool)
    keep[torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:KID_ROWS]] = True
    moments, rows, seen = Moments(), [], 0
    for batch in batches():
        if seen + len(batch) > count:
            raise GenflowError(f"the real data {name} holds more images than the {count} expected")
        features = inception_features(model, batch)
        moments.add(features)
        rows.append(features[keep[seen : seen + len(features)]].float())
        seen += len(features)
    if seen != count:
        raise GenflowError(f"the real data {name} holds {seen} images, not the {count} expected")
    mu, sigma = moments.mean_and_covariance()
    return ReferenceStats(mu, sigma, count, torch.cat(rows), fingerprint, model.sha256)


class Moments:
    """Streaming mean and covariance in float64, about the first batch's mean (for precision)."""

    def __init__(self) -> None:
        self.count = 0
        self.shift = self.total = self.outer = None

    def add(self, features: Tensor) -> None:
        if self.shift is None:
            self.shift = features.mean(0)
            self.total, self.outer = torch.zeros_like(self.shift), torch.zeros(FEATURES, FEATURES, dtype=torch.float64)
        centred = features - self.shift
        self.total += centred.sum(0)
        self.outer += centred.T @ centred
        self.count += len(features)

    def mean_and_covariance(self) -> tuple[Tensor, Tensor]:
        offset = self.total / self.count
        covariance = (self.outer - self.count * torch.outer(offset, offset)) / (self.count - 1)
        return self.shift + offset, covariance


def write_reference(path: Path, stats: ReferenceStats) -> None:
    arrays = {"mu": stats.mu.numpy(), "sigma": stats.sigma.numpy(), "count": np.int64(stats.count), "rows": stats.rows.numpy()}
    with path.open("wb") as file:
        np.savez(file, **arrays, fingerprint=np.str_(stats.fingerprint), weights_sha256=np.str_(stats.weights_sha256))


def read_reference(path: Path) -> ReferenceStats | None:
    """The statistics cached in ``path``; ``None`` when it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            tensors = {key: torch.from_numpy(archive[key].copy()) for key in ("mu", "sigma", "rows")}
            count, fingerprint, sha = int(archive["count"]), str(archive["fingerprint"]), str(archive["weights_sha256"])
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile, zlib.error):  # missing, truncated, foreign
        return None
    if tensors["mu"].dtype != torch.float64 or tensors["sigma"].dtype != torch.float64:
        return None
    return ReferenceStats(tensors["mu"], tensors["sigma"], count, tensors["rows"], fingerprint, sha)


def fid_scores(sample_features: Tensor, reference: ReferenceStats, seed: int = 0) -> dict:
    """FID (Heusel et al. 2017) and KID (Binkowski et al. 2018; torch-fidelity's 100 subsets of
    up to 1000) of the samples' Inception features against the reference, the sample count
    ``n``, ``reference_images``, and whether the weights are the standard FID weights."""
    features = sample_features.double()
    if len(features) < 2:
        raise GenflowError(f"FID and KID need at least 2 samples, not {len(features)}")
    fid = frechet_from_moments(features.mean(0), torch.cov(features.T), reference.mu, reference.sigma)
    kid = kernel_distance(features, reference.rows.double(), subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, seed=seed)
    return {
        "fid": fid,
        "kid": kid,
        "n": len(features),
        "reference_images": reference.count,
        "standard_weights": is_standard(reference.weights_sha256),
        "inception_sha256": reference.weights_sha256,
    }
