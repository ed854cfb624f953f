"""Sample quality in the feature space of a small classifier, offline.

- Frechet distance (Heusel et al. 2017, eq. 6) and kernel inception distance (Binkowski et
  al. 2018, eq. 4, unbiased, cubic polynomial kernel), both on classifier features; for the
  digits, genflow ships the classifier (``scripts/train_digits_classifier.py``).
- Improved precision and recall (Kynkaenniemi et al. 2019): k-nearest-neighbour balls.
- Memorization: the share of samples closer to a training image than real images are to
  each other.
- The real-data floor: each distance between two disjoint halves of the real data at the
  same sample size; a score means little without it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from genflow.errors import GenflowError
from genflow.storage import sha256_file

ASSETS = Path(__file__).parent / "assets"
DIGITS_CLASSIFIER = ASSETS / "digits_classifier.safetensors"
DIGITS_CLASSIFIER_CARD = ASSETS / "digits_classifier.json"


class DigitsClassifier(nn.Module):
    """A three-convolution classifier for 8x8 images; ``features`` is its 128-d penultimate layer."""

    FEATURES = 128

    def __init__(self, channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(64, self.FEATURES, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(self.FEATURES, classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def load_digits_classifier() -> DigitsClassifier:
    """The shipped classifier, after checking its file against the recorded sha256."""
    from safetensors.torch import load_file

    card = json.loads(DIGITS_CLASSIFIER_CARD.read_text())
    if sha256_file(DIGITS_CLASSIFIER) != card["sha256"]:
        raise GenflowError(f"{DIGITS_CLASSIFIER} does not match its recorded sha256; reinstall genflow")
    model = DigitsClassifier()
    model.load_state_dict(load_file(str(DIGITS_CLASSIFIER)))
    return model.eval()


@torch.no_grad()
def extract_features(classifier: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Float64 features of images in [-1, 1], computed in batches on the classifier's device."""
    device = next(classifier.parameters()).device
    chunks = [classifier.features(images[i : i + batch_size].to(device).float()) for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).double().cpu()


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))`` between Gaussians fitted to two
    feature sets; the trace of the matrix square root is taken as the sum of square roots of
    the eigenvalues of ``C_a^(1/2) C_b C_a^(1/2)``, which is symmetric and stable."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = psd_sqrt(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def psd_sqrt(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def kernel_distance(a: Tensor, b: Tensor, subsets: int = 50, subset_size: int = 500, seed: int = 0) -> float:
    """KID: unbiased MMD^2 with kernel ``(x.y / d + 1)^3``, averaged over random subsets."""
    generator = torch.Generator().manual_seed(seed)
    m = min(subset_size, len(a), len(b))
    dim = a.shape[1]
    total = 0.0
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=generator)[:m]]
        y = b[torch.randperm(len(b), generator=generator)[:m]]
        kxx, kyy, kxy = ((x @ x.T) / dim + 1) ** 3, ((y @ y.T) / dim + 1) ** 3, ((x @ y.T) / dim + 1) ** 3
        off_diagonal = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        total += float(off_diagonal - 2 * kxy.mean())
    return total / subsets


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Share of fake samples inside the union of real k-NN balls, and of real inside fake ones."""

    def radii(x: Tensor) -> Tensor:
        return torch.cdist(x, x).kthvalue(k + 1, dim=1).values  # the 0th neighbour is the point itself

    def covered(points: Tensor, centres: Tensor, centre_radii: Tensor) -> float:
        return float((torch.cdist(points, centres) <= centre_radii[None]).any(dim=1).double().mean())

    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def memorization(samples: Tensor, training: Tensor, quantile: float = 0.01) -> float:
    """Share of samples nearer (in pixels) to a training image than the ``quantile`` of
    training images' distances to their nearest other training image (so about
    ``quantile`` for fresh real data)."""
    flat_train = training.flatten(1).double()
    between = torch.cdist(flat_train, flat_train)
    between.fill_diagonal_(float("inf"))
    threshold = torch.quantile(between.min(dim=1).values, quantile)
    nearest = torch.cdist(samples.flatten(1).double(), flat_train).min(dim=1).values
    return float((nearest < threshold).double().mean())


@dataclass
class QualityReport:
    """Scores of samples against real data, each beside its real-data floor."""

    n: int
    fd: float
    fd_floor: float
    kid: float
    kid_floor: float
    precision: float
    recall: float
    memorized: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def real_halves(real: Tensor, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two disjoint random halves of the real data, ``n`` images each."""
    if 2 * n > len(real):
        raise GenflowError(
            f"the real data has {len(real)} images; at most n = {len(real) // 2} keeps the floor's halves disjoint"
        )
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
    return real[order[:n]], real[order[n : 2 * n]]


def evaluate(samples: Tensor, real: Tensor, classifier: nn.Module, seed: int = 0) -> QualityReport:
    """Every score of ``samples`` against one half of ``real``, and the floors from the two halves."""
    n = len(samples)
    half_a, half_b = real_halves(real, n, seed)
    fake_f, a_f, b_f = (extract_features(classifier, x) for x in (samples, half_a, half_b))
    precision, recall = precision_recall(a_f, fake_f)
    return QualityReport(
        n=n,
        fd=frechet_distance(fake_f, a_f),
        fd_floor=frechet_distance(b_f, a_f),
        kid=kernel_distance(fake_f, a_f, seed=seed),
        kid_floor=kernel_distance(b_f, a_f, seed=seed),
        precision=precision,
        recall=recall,
        memorized=memorization(samples, real),
    )
