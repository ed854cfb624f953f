"""Sample quality in the feature space of a small classifier, offline.

- Frechet distance (Heusel et al. 2017, eq. 6) and kernel inception distance (Binkowski et
  al. 2018, eq. 4, unbiased, cubic polynomial kernel), both on classifier features; for the
  digits, genflow ships the classifier (``scripts/train_digits_classifier.py``).
- Improved precision and recall (Kynkaenniemi et al. 2019): k-nearest-neighbour balls.
- Memorization: the share of samples closer to a training image than real images are to
  each other.
- The real-data floor and the fresh real data (see :func:`evaluate`): the samples are scored
  against a reference of ``n`` real images; the floor is the score of ``n`` images drawn with
  replacement from all the real data, which is what a model that reproduces its training set
  exactly would get, and the fresh score is that of the ``n`` real images outside the
  reference. A score means little without them.
- Per class, for class-conditional samples: class agreement (the share of samples of class
  ``k`` that the classifier calls ``k``) and each class's Frechet distance against the real
  images of that class, beside that class's own floor and fresh score (:func:`evaluate_classes`).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from genflow.errors import GenflowError
from genflow.storage import sha256_file

ASSETS = Path(__file__).resolve().parents[1] / "assets"  # genflow/assets, shipped as package data
DIGITS_CLASSIFIER = ASSETS / "digits_classifier.safetensors"
DIGITS_CLASSIFIER_CARD = ASSETS / "digits_classifier.json"
NEIGHBOURS = 3  # k of the k-NN balls in precision and recall (Kynkaenniemi et al. 2019 use 3)
MIN_SAMPLES = NEIGHBOURS + 1  # the k-th neighbour besides the point itself; KID and FD need only 2
MIN_CLASS_SAMPLES = 2  # per class only FD is scored, and a covariance needs 2 points
KID_SUBSETS = 50
FLOOR_DRAWS = 10  # resampled sets averaged into the floor (KID splits its subsets between them)


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
def batched(classifier: nn.Module, function: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 512) -> Tensor:
    """``function`` of images in [-1, 1], computed in batches on the classifier's device, on the CPU."""
    device = next(classifier.parameters()).device
    chunks = [function(images[i : i + batch_size].to(device).float()) for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).cpu()


def extract_features(classifier: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Float64 features of images in [-1, 1] (the classifier's ``features``)."""
    return batched(classifier, classifier.features, images, batch_size).double()


def classify(classifier: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """The class the classifier calls each image in [-1, 1]: the argmax of its logits."""
    return batched(classifier, classifier, images, batch_size).argmax(dim=1)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets (rows are points);
    see :func:`frechet_from_moments`."""
    return frechet_from_moments(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))


def frechet_from_moments(mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, cov_b: Tensor) -> float:
    """``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))`` (Heusel et al. 2017, eq. 6) from
    two means and covariances; the trace of the matrix square root is taken as the sum of square
    roots of the eigenvalues of ``C_a^(1/2) C_b C_a^(1/2)``, which is symmetric and stable."""
    mean_a, cov_a, mean_b, cov_b = (torch.as_tensor(x) for x in (mean_a, cov_a, mean_b, cov_b))
    root_a = psd_sqrt(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def psd_sqrt(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def kernel_distance(a: Tensor, b: Tensor, subsets: int = KID_SUBSETS, subset_size: int = 500, seed: int = 0) -> float:
    """KID: unbiased MMD^2 with kernel ``(x.y / d + 1)^3``, averaged over random subsets
    (Binkowski et al. 2018, eq. 4). Unbiased means its mean over draws is the true MMD^2, which
    is 0 for one distribution, so a single estimate is as often below 0 as above it then."""
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


def precision_recall(real: Tensor, fake: Tensor, k: int = NEIGHBOURS) -> tuple[float, float]:
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
    """Scores of samples against the reference, each beside the floor (training images
    resampled) and the fresh real images' score; see :func:`evaluate`."""

    n: int
    fd: float
    fd_floor: float
    fd_fresh: float
    fd_spread: float
    """The standard deviation of FD between the floor's draws of ``n`` images: how far one score
    moves with the draw alone. At small ``n`` it can exceed the gap between the floor and the
    fresh score, and then the two yardsticks (and scores within about twice it) are not told apart."""
    kid: float
    kid_floor: float
    kid_fresh: float
    precision: float
    recall: float
    memorized: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def check_sample_count(n: int, real_count: int | None = None, name: str = "n") -> None:
    """Refuse, before anything is sampled, a count the scores cannot use: precision and recall
    need each point's ``NEIGHBOURS``-th nearest neighbour besides itself (KID's unbiased
    estimator and FD's covariances need only 2), and the reference and the fresh real images are
    disjoint ``n``-subsets of the ``real_count`` real images (unchecked when it is None)."""
    if n < MIN_SAMPLES:
        raise GenflowError(
            f"{name} must be >= {MIN_SAMPLES} to score samples (precision and recall use each one's "
            f"{NEIGHBOURS} nearest neighbours), not {n}"
        )
    if real_count is not None and 2 * n > real_count:
        raise GenflowError(
            f"{name} must be at most {real_count // 2} (half of the {real_count} real images, so the "
            f"reference and the fresh real images are disjoint), not {n}"
        )


def reference_and_fresh(count: int, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Indices of two disjoint random ``n``-subsets of ``count`` real images."""
    check_sample_count(n, count)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[:n], order[n : 2 * n]


@dataclass
class Yardsticks:
    """The features of a reference of ``n`` real images and of the ``n`` fresh real images
    outside it, and the floor: FD and KID of ``n`` real images drawn with replacement from all
    of them against that reference (:func:`resampled_floor`)."""

    reference: Tensor
    fresh: Tensor
    fd_floor: float
    kid_floor: float
    fd_spread: float


def yardsticks(real_f: Tensor, n: int, seed: int = 0) -> Yardsticks:
    """The reference, the fresh real images and the floor for ``n`` samples, from the features
    of all the real images."""
    reference, fresh = reference_and_fresh(len(real_f), n, seed)
    fd_floor, kid_floor, fd_spread = resampled_floor(real_f, real_f[reference], n, seed)
    return Yardsticks(real_f[reference], real_f[fresh], fd_floor, kid_floor, fd_spread)


def resampled_floor(real_f: Tensor, reference_f: Tensor, n: int, seed: int = 0) -> tuple[float, float, float]:
    """FD and KID against the reference of ``n`` features drawn with replacement from all the
    real ones, averaged over ``FLOOR_DRAWS`` draws (KID's ``KID_SUBSETS`` split between them),
    and the standard deviation of FD between the draws. Such a draw is a sample of the training
    set's own distribution, so it is what a model that reproduces its training data exactly scores."""
    generator = torch.Generator().manual_seed(seed)
    fds, kids = [], []
    for draw in range(FLOOR_DRAWS):
        copy = real_f[torch.randint(len(real_f), (n,), generator=generator)]
        fds.append(frechet_distance(copy, reference_f))
        kids.append(kernel_distance(copy, reference_f, subsets=KID_SUBSETS // FLOOR_DRAWS, seed=seed + draw))
    return sum(fds) / FLOOR_DRAWS, sum(kids) / FLOOR_DRAWS, statistics.stdev(fds)


def evaluate(samples: Tensor, real: Tensor, classifier: nn.Module, seed: int = 0) -> QualityReport:
    """Every score of ``samples`` against a reference of ``n`` random real images, beside the
    floor and the fresh real images' score, all measured against that same reference.

    The model was trained on all of ``real``, reference included, so a model that fits its
    training data well lands nearer the reference than new real images do: against two disjoint
    halves of the real data a good model scored FD 1.14 where the halves scored 1.59 (n = 898).
    Hence two yardsticks: the floor, ``n`` images drawn with replacement from all of ``real``
    (:func:`resampled_floor`), which is a perfect fit of the training set and which no model
    trained on it beats beyond noise; and the fresh score, of the ``n`` real images outside the
    reference, which is where a model that generalizes perfectly (new images from the data's
    distribution, none of them nearer the reference than chance) lands. The fresh KID has mean 0;
    the floor's KID has mean ``-(E k(x, x) - E k(x, x')) / len(real)`` < 0, since each drawn image
    is a reference image with probability ``1 / len(real)``."""
    n = len(samples)
    real_f, fake_f = extract_features(classifier, real), extract_features(classifier, samples)
    sticks = yardsticks(real_f, n, seed)
    precision, recall = precision_recall(sticks.reference, fake_f)
    return QualityReport(
        n=n,
        fd=frechet_distance(fake_f, sticks.reference),
        fd_floor=sticks.fd_floor,
        fd_fresh=frechet_distance(sticks.fresh, sticks.reference),
        fd_spread=sticks.fd_spread,
        kid=kernel_distance(fake_f, sticks.reference, seed=seed),
        kid_floor=sticks.kid_floor,
        kid_fresh=kernel_distance(sticks.fresh, sticks.reference, seed=seed),
        precision=precision,
        recall=recall,
        memorized=memorization(samples, real),
    )


def check_class_counts(per_class: Mapping[str, int], real_counts: Mapping[str, int], name: str = "n") -> None:
    """Refuse, before anything is sampled, per-class sample counts that per-class FD cannot use:
    each class needs ``MIN_CLASS_SAMPLES`` samples (a covariance) and at most half its real
    images (its reference and its fresh real images are disjoint). One message gives the
    usable range of ``name`` for classes covered evenly."""
    classes, fewest = len(per_class), min(real_counts.values())
    low, high = MIN_CLASS_SAMPLES * classes, classes * (fewest // 2)
    for label, count in per_class.items():
        if not MIN_CLASS_SAMPLES <= count <= real_counts[label] // 2:
            raise GenflowError(
                f"{name} must be between {low} and {high} to score each of the {classes} classes: class {label} would get "
                f"{count} samples, and per-class FD needs at least {MIN_CLASS_SAMPLES} and at most half of its "
                f"{real_counts[label]} real images"
            )


@dataclass
class ClassReport:
    """Class-conditional samples scored class by class, keyed by class name: the share the
    classifier calls by their class, and Frechet distance against the real images of their
    class beside that class's floor and fresh score (see :func:`evaluate_classes`)."""

    class_agreement: float
    class_agreement_per_class: dict[str, float]
    fd_per_class: dict[str, float]
    fd_floor_per_class: dict[str, float]
    fd_fresh_per_class: dict[str, float]

    def to_dict(self) -> dict:
        """The fields, and the mean over classes of each per-class FD (``fd_per_class_mean``, ...)."""
        keys = ("fd_per_class", "fd_floor_per_class", "fd_fresh_per_class")
        return asdict(self) | {f"{key}_mean": mean(getattr(self, key).values()) for key in keys}


def mean(values: Iterable[float]) -> float:
    """The arithmetic mean."""
    values = list(values)
    return sum(values) / len(values)


def agreement(predicted: Tensor, labels: Tensor) -> float:
    """The share of ``predicted`` equal to ``labels``."""
    return float((predicted == labels).double().mean())


def class_frechet(fake_f: Tensor, real_f: Tensor, seed: int = 0) -> tuple[float, float, float]:
    """FD of one class's sample features, its floor and its fresh score, against a reference of
    as many real images of that class (:func:`yardsticks` within the class)."""
    sticks = yardsticks(real_f, len(fake_f), seed)
    return frechet_distance(fake_f, sticks.reference), sticks.fd_floor, frechet_distance(sticks.fresh, sticks.reference)


def evaluate_classes(
    samples: Tensor, labels: Tensor, real: Tensor, real_labels: Tensor, classifier: nn.Module, names: Mapping[int, str],
    seed: int = 0,
) -> ClassReport:  # fmt: skip
    """Per-class scores of ``samples`` made for ``labels``, for the classes in ``names`` (label
    -> name; the classifier's class ``k`` must be label ``k``): class agreement, overall and per
    class, and per class the Frechet distance of that class's ``n_k`` samples against ``n_k`` of
    its real images, with the floor and fresh score measured the same way as :func:`evaluate`
    does over all classes, but within the class. With few samples per class (``n_k`` below the
    128 feature dimensions) FD is biased upwards, and its floor equally, so compare the two."""
    predicted = classify(classifier, samples)
    fake_f, real_f = extract_features(classifier, samples), extract_features(classifier, real)
    agree, fd, floor, fresh = {}, {}, {}, {}
    for label, name in names.items():
        mine, theirs = labels == label, real_labels == label
        agree[name] = agreement(predicted[mine], labels[mine])
        fd[name], floor[name], fresh[name] = class_frechet(fake_f[mine], real_f[theirs], seed)
    return ClassReport(agreement(predicted, labels), agree, fd, floor, fresh)
