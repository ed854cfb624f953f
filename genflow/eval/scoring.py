"""Scoring: a run's samples or a samples file against the real data in a classifier's feature
space (:mod:`genflow.eval.metrics`) or as FID/KID in the standard Inception-v3 feature space
(:mod:`genflow.eval.inception`), and a run's negative log-likelihood through its probability-flow ODE
(:mod:`genflow.sampling.likelihood`)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from genflow.config import TrainConfig
from genflow.data.datasets import DATASETS, load_dataset, load_labelled_dataset, load_pixels
from genflow.data.folders import ImageFiles, default_workers, image_loader, scan_folder
from genflow.data.image_files import read_samples_file
from genflow.data.pixels import Dataset
from genflow.errors import GenflowError
from genflow.eval.inception import (
    INCEPTION_ENV,
    PAPER_SAMPLES,
    InceptionFeatures,
    ReferenceStats,
    fid_scores,
    inception_features,
    inception_weights_path,
    load_inception,
    reference_statistics,
)
from genflow.eval.metrics import check_class_counts, check_sample_count, evaluate, evaluate_classes, load_digits_classifier
from genflow.processes import GaussianProcess
from genflow.runs.files import data_fingerprint
from genflow.runs.loaded import LoadedRun, check_conditioning, sample_run
from genflow.runtime.base import Runtime, pick_device
from genflow.sampling.likelihood import bits_per_dim, dequantize, log_likelihood
from genflow.sampling.sample import SamplingStats
from genflow.sampling.sample import sample as sample_model
from genflow.solvers import SOLVERS
from genflow.solvers.guidance import FULL_INTERVAL, balanced_labels, parse_classes

METRICS = ("classifier", "fid")
CLASSIFIER_DATASETS = ("digits",)
REFERENCE_BATCH = 200


@functools.cache
def feature_classifier(dataset: str) -> nn.Module:
    """The shipped digits classifier (loaded once); other datasets have none yet."""
    if dataset != "digits":
        raise GenflowError(
            "genflow eval ships a feature classifier for the digits only; score other data with "
            "--metric fid --inception-weights FILE"
        )
    return load_digits_classifier()


def score(images: Tensor, real: Tensor, dataset: str, seed: int = 0) -> dict[str, float]:
    """Frechet distance, KID (each with its real-data floor), precision, recall and
    memorization of ``images`` against ``real``, in the feature space of ``dataset``'s classifier."""
    return evaluate(images.cpu(), real, feature_classifier(dataset), seed=seed).to_dict()


def run_dataset(loaded: LoadedRun) -> tuple[str, Dataset]:
    """The name of the data a run was trained on, and the data: its images, and its labels
    where it has them, at the run's resolution."""
    train = loaded.config["train"]
    return train["dataset"], load_labelled_dataset(train["dataset"], train.get("data_dir"), train.get("resolution"))


@dataclass
class EvalPlan:
    """What ``genflow eval`` samples and scores against: ``n`` samples with ``labels`` (one per
    sample; ``None`` for an unconditional run) and the real images (and their labels) of the
    classes sampled, which are ``names`` (label -> class name; ``None`` when unconditional)."""

    n: int
    labels: list[int] | None
    real: Tensor
    real_labels: Tensor | None = None
    names: dict[int, str] | None = None


def plan_evaluation(
    data: Dataset, class_names: Sequence[str] | None, n: int | None, classes: str | Sequence[int] | None = None
) -> EvalPlan:
    """An unconditional run: ``n`` samples (default: half the real images) against all of them.
    A conditional run: ``n`` samples whose labels cover ``classes`` (``--class`` text or
    labels; default all of ``class_names``) evenly, against the real images of those classes;
    ``n`` defaults to the most that leaves each class at most half its real images. Every
    count is checked here, before sampling."""
    if class_names is None:
        n = len(data.images) // 2 if n is None else n
        check_sample_count(n, len(data.images))
        return EvalPlan(n, None, data.images)
    chosen = chosen_classes(class_names, classes)
    names = {label: class_names[label] for label in chosen}
    real_counts = {names[label]: int((data.labels == label).sum()) for label in chosen}
    n = len(chosen) * (min(real_counts.values()) // 2) if n is None else n
    labels = [chosen[i] for i in balanced_labels(n, len(chosen))]
    keep = torch.isin(data.labels, torch.tensor(chosen))
    check_sample_count(n, int(keep.sum()))
    check_class_counts({names[label]: labels.count(label) for label in chosen}, real_counts)
    return EvalPlan(n, labels, data.images[keep], data.labels[keep], names)


def chosen_classes(class_names: Sequence[str], classes: str | Sequence[int] | None) -> list[int]:
    """The labels ``--class`` names (every class when ``None``), each once, in the order given."""
    if classes is None:
        return list(range(len(class_names)))
    labels = parse_classes(classes, class_names) if isinstance(classes, str) else [int(k) for k in classes]
    if not labels or not all(0 <= k < len(class_names) for k in labels):
        raise GenflowError(f"classes must be labels 0..{len(class_names) - 1} of this run, not {list(classes)!r:.80}")
    return list(dict.fromkeys(labels))


def class_scores(images: Tensor, plan: EvalPlan, dataset: str, seed: int = 0) -> dict:
    """Class agreement and per-class Frechet distance with floors (:func:`genflow.eval.metrics.evaluate_classes`)
    of a conditional run's samples made as ``plan`` says."""
    labels = torch.tensor(plan.labels)
    report = evaluate_classes(images.cpu(), labels, plan.real, plan.real_labels, feature_classifier(dataset), plan.names, seed)
    return report.to_dict()


def negative_log_likelihood(loaded: LoadedRun, n: int, seed: int = 0, steps: int = 0) -> dict:
    """Bits per dimension of ``n`` real images, uniformly dequantized at the data's levels;
    adaptive dopri5 when ``steps`` is 0, else ``steps`` Heun steps."""
    dataset, data = run_dataset(loaded)
    real = data.images
    levels = 17 if dataset == "digits" else 256
    generator = torch.Generator().manual_seed(seed)
    chosen = real[torch.randperm(len(real), generator=generator)[:n]]
    x, width = dequantize(chosen, levels, generator)
    device = next(loaded.model.parameters()).device
    method = "heun" if steps else "dopri5"
    log_px = log_likelihood(loaded.model, loaded.process, x.to(device), method=method, steps=steps, seed=seed).cpu()
    bpd = bits_per_dim(log_px, x[0].numel(), width)
    return {"nll_bits_per_dim": float(bpd.mean()), "nll_n": n, "nll_levels": levels, "nll_method": method}


def evaluate_samples_file(
    path: Path, dataset: str = "digits", seed: int = 0, metric: str | None = None, inception_weights: str | Path | None = None,
    device: str = "cpu", data_dir: str | Path | None = None, resolution: int | None = None,
) -> dict:  # fmt: skip
    """Score images made by any program against ``dataset`` (its files under ``data_dir``, at
    ``resolution``): with the digits classifier, floors included, or as FID/KID (``metric``; see
    :func:`choose_metric`; Inception runs on ``device``)."""
    if choose_metric(metric, dataset, inception_weights) == "fid":
        return fid_of_samples_file(path, dataset, inception_weights, seed, device, data_dir, resolution)
    feature_classifier(dataset)
    real = load_dataset(dataset)
    images = read_samples_file(path)
    if images.shape[1:] != real.shape[1:]:
        raise GenflowError(f"{path} holds images of shape {tuple(images.shape[1:])}, {dataset} has {tuple(real.shape[1:])}")
    check_sample_count(len(images), len(real), name=f"the number of images in {path}")
    return score(images, real, dataset, seed)


def choose_metric(metric: str | None, dataset: str, inception_weights: str | Path | None) -> str:
    """``metric`` when given; else ``fid`` when Inception weights are named by ``--inception-weights``,
    or by the environment variable for data without a shipped classifier; else ``classifier``."""
    if metric is not None:
        if metric not in METRICS:
            raise GenflowError(f"unknown metric {metric!r}; use {' or '.join(METRICS)}")
        return metric
    if inception_weights is not None or (os.environ.get(INCEPTION_ENV) and dataset not in CLASSIFIER_DATASETS):
        return "fid"
    return "classifier"


def reference_for_dataset(
    name: str, data_dir: str | Path | None, model: InceptionFeatures, resolution: int | None = None, bad_images: str = "error"
) -> ReferenceStats:
    """The Inception statistics of every image of dataset ``name`` at ``resolution`` (cached per
    data fingerprint and weights; :func:`genflow.eval.inception.reference_statistics`): the one place
    FID reads real data. An image folder streams from its files in worker processes, whatever
    its size; other datasets are read into memory as uint8."""
    if name not in DATASETS and Path(name).is_dir():
        files = scan_folder(Path(name), resolution, bad_images)
        return reference_statistics(name, files.fingerprint(), functools.partial(folder_batches, files), len(files), model)
    images = load_pixels(name, data_dir, resolution).images

    def batches() -> Iterator[Tensor]:
        return (images[i : i + REFERENCE_BATCH] for i in range(0, len(images), REFERENCE_BATCH))

    return reference_statistics(name, data_fingerprint(images), batches, len(images), model)


def folder_batches(files: ImageFiles) -> Iterator[Tensor]:
    """Every image of ``files`` in order, uint8, in batches decoded by worker processes."""
    starts = range(0, len(files), REFERENCE_BATCH)
    index_lists = iter([list(range(start, min(start + REFERENCE_BATCH, len(files)))) for start in starts])
    for _, images, problems in image_loader(files, index_lists, default_workers()):
        if problems:
            raise GenflowError(problems[0])
        yield images


@dataclass(frozen=True)
class FidPipeline:
    """The one way genflow scores FID and KID (Heusel et al. 2017; Binkowski et al. 2018): Inception-v3
    loaded once on a device and the reference statistics of a dataset's every image. A samples
    file, a run (sampled in chunks) and ``--eval-every`` all score through it."""

    model: InceptionFeatures
    reference: ReferenceStats

    @classmethod
    def of_dataset(
        cls, weights: str | Path | None, device: torch.device | str, dataset: str, data_dir: str | Path | None = None,
        resolution: int | None = None, bad_images: str = "error",
    ) -> FidPipeline:  # fmt: skip
        """The weights file ``weights`` (or the environment variable's) verified and loaded on
        ``device``, and the reference statistics of ``dataset`` (:func:`reference_for_dataset`)."""
        model = load_inception(inception_weights_path(weights)).to(device)
        return cls(model, reference_for_dataset(dataset, data_dir, model, resolution, bad_images))

    def features(self, images: Tensor) -> Tensor:
        """Inception pool features of ``images`` (NCHW in [-1, 1], 1 or 3 channels, any size)."""
        return inception_features(self.model, images, device=next(self.model.parameters()).device).float()

    def scores(self, features: Tensor, seed: int = 0) -> dict:
        """FID and KID of these features against the reference (:func:`genflow.eval.inception.fid_scores`)."""
        return {"metric": "fid"} | fid_scores(features, self.reference, seed)


def check_fid_input(channels: int, count: int, source: str) -> None:
    """Refuse, before any work, images Inception cannot score and counts FID cannot use."""
    if channels not in (1, 3):
        raise GenflowError(f"{source} has {channels}-channel images; FID scores 1- or 3-channel images")
    if count < 2:
        raise GenflowError(f"FID and KID need at least 2 samples, not {count}")


def fid_of_samples_file(
    path: Path, dataset: str, inception_weights: str | Path | None, seed: int = 0, device: str = "cpu",
    data_dir: str | Path | None = None, resolution: int | None = None,
) -> dict:  # fmt: skip
    """FID/KID of the images in ``path`` (any size; 1 or 3 channels) against all of ``dataset``
    (its files under ``data_dir``, at ``resolution``); Inception runs on ``device`` (``auto``:
    CUDA, then MPS, then the CPU)."""
    images = read_samples_file(path)
    check_fid_input(images.shape[1], len(images), str(path))
    fid = FidPipeline.of_dataset(inception_weights, pick_device(device), dataset, data_dir, resolution)
    return fid.scores(fid.features(images), seed)


FID_CHUNK = 2000
"""Samples made, scored by Inception and dropped at a time, so 50,000 large samples never sit in memory at once."""


def fid_of_run(
    loaded: LoadedRun, n: int | None, classes: str | Sequence[int] | None, seed: int, inception_weights: str | Path | None,
    sample: Callable[..., tuple[Tensor | None, SamplingStats]],
) -> dict | None:  # fmt: skip
    """FID/KID of ``n`` samples (default 50,000, as papers use) made by ``sample(count, seed=seeds,
    labels=labels)`` against all the run's real data, made and scored :data:`FID_CHUNK` at a time
    (per-sample seeds: the samples do not depend on the chunking). A conditional run's samples
    cover all its classes evenly; ``classes`` is refused, because FID against one class's few
    real images is not the FID papers report. ``None`` on the processes of a distributed run
    other than the main one (every process samples its share of each chunk)."""
    if classes is not None:
        raise GenflowError("--metric fid scores samples of every class against all the real data; drop --class")
    n = PAPER_SAMPLES if n is None else n
    check_fid_input(loaded.model.config.channels, n, str(loaded.path))
    train, device = loaded.config["train"], next(loaded.model.parameters()).device
    fid = FidPipeline.of_dataset(inception_weights, device, train["dataset"], train.get("data_dir"), train.get("resolution"),
                                 train.get("bad_images", "error"))  # fmt: skip
    labels = None if loaded.classes is None else balanced_labels(n, len(loaded.classes))
    features, costs = [], []
    for start in range(0, n, FID_CHUNK):
        chunk = slice(start, min(start + FID_CHUNK, n))
        images, stats = sample(chunk.stop - start, seed=list(range(seed + start, seed + chunk.stop)),
                               labels=None if labels is None else labels[chunk])  # fmt: skip
        costs.append((stats, chunk.stop - start))
        if images is not None:
            features.append(fid.features(images))
    if not features:
        return None
    return sampling_fields(combined(costs)) | fid.scores(torch.cat(features), seed)


def combined(costs: Sequence[tuple[SamplingStats, int]]) -> SamplingStats:
    """The stats of samples made in parts ``(stats, count)``: the seconds summed, the NFE per sample averaged."""
    first, count = costs[0][0], sum(part for _, part in costs)
    nfe = sum(stats.nfe * part for stats, part in costs) / count
    return SamplingStats(first.solver, first.grid, first.steps, nfe, sum(stats.seconds for stats, _ in costs))


def sampling_fields(stats: SamplingStats) -> dict:
    """How samples were made, as ``genflow eval`` reports it."""
    fields = ("solver", "grid", "steps", "nfe")
    return {field: getattr(stats, field) for field in fields} | {"seconds": round(stats.seconds, 4)}


def training_evaluator(
    config: TrainConfig, process: GaussianProcess, real: Callable[[], Tensor], image_shape: Sequence[int], device: torch.device,
    num_classes: int = 0,
) -> Callable[[nn.Module], dict]:  # fmt: skip
    """The scores of ``eval_n`` EMA samples with the run's own sampler (:meth:`TrainConfig.own_sampler`),
    for ``--eval-every``: FID and KID in Inception-v3 features when the run names Inception weights
    (``inception_weights``, or the environment variable for data without a classifier), else the
    Frechet distance (and its floor) in the digits classifier's features against ``real()``. A
    conditional run's samples cover its ``num_classes`` classes evenly (guidance 1). Missing
    weights or a dataset without a classifier are refused here, before training."""
    def samples(ema: nn.Module) -> Tensor:
        solver, sample_steps = config.own_sampler(process.default_solver)
        steps = SOLVERS.get(solver).fixed_steps(sample_steps)
        labels = balanced_labels(config.eval_n, num_classes)
        shape = (config.eval_n, *image_shape)
        return sample_model(ema, process, shape=shape, solver=solver, steps=steps, seed=0, device=device, labels=labels)

    if choose_metric(None, config.dataset, config.inception_weights) == "fid":
        return inception_evaluator(config, image_shape, device, samples)
    feature_classifier(config.dataset)
    images = real()
    check_sample_count(config.eval_n, len(images), name="eval_n")

    def scores(ema: nn.Module) -> dict:
        report = score(samples(ema), images, config.dataset)
        return {"fd": report["fd"], "fd_floor": report["fd_floor"], "kid": report["kid"]}

    return scores


def inception_evaluator(
    config: TrainConfig, image_shape: Sequence[int], device: torch.device, samples: Callable[[nn.Module], Tensor]
) -> Callable[[nn.Module], dict]:
    """FID and KID of ``samples(ema)`` against the run's data, for ``--eval-every``; the weights are
    checked and the reference statistics computed (or read from the cache) now, before training, so
    no process of a distributed run waits on them inside the loop."""
    check_fid_input(image_shape[0], config.eval_n, "eval_n")
    fid = FidPipeline.of_dataset(config.inception_weights, device, config.dataset, config.data_dir, config.resolution,
                                 config.bad_images)  # fmt: skip

    def scores(ema: nn.Module) -> dict:
        result = fid.scores(fid.features(samples(ema)))
        return {"fid": result["fid"], "kid": result["kid"]}

    return scores


def check_data_shape(loaded: LoadedRun, dataset: str, images: Tensor) -> None:
    """Refuse to score a run against data of another shape (an imported model's, for one)."""
    config = loaded.model.config
    made, real = (config.channels, config.resolution, config.resolution), tuple(images.shape[1:])
    if made != real:
        made_text, real_text = ("x".join(map(str, dims)) for dims in (made, real))
        raise GenflowError(
            f"{loaded.path} makes {made_text} images and {dataset} holds {real_text}; score its samples against data of "
            "their shape with 'genflow sample RUN --out FILE.npz' and 'genflow eval --samples FILE.npz --dataset NAME'"
        )


def evaluate_run(loaded: LoadedRun, n: int | None = None, solver: str | None = None, steps: int | None = None,
                 grid: str | None = None, seed: int = 0, batch_size: int | None = None,
                 classes: str | Sequence[int] | None = None, guidance: float = 1.0,
                 guidance_interval: Sequence[float] = FULL_INTERVAL, runtime: Runtime | None = None,
                 metric: str | None = None, inception_weights: str | Path | None = None,
                 **solver_options: float | str) -> dict | None:  # fmt: skip
    """Sample ``n`` images and score them against the real data, floors included (``n``
    defaults to the most the data allows). A conditional run's samples cover ``classes``
    (``--class`` text or labels; default all) evenly at ``guidance``, and are scored against
    the real images of those classes, with class agreement and per-class Frechet distance
    beside per-class floors added (:func:`genflow.eval.scoring.plan_evaluation`). Classes or
    guidance for an unconditional run, and counts the scores cannot use, are refused before
    the real data is loaded or anything sampled. Under a distributed ``runtime`` every process
    samples its share and the main process scores them; the others get ``None``.

    ``metric`` ``fid`` (:func:`genflow.eval.scoring.choose_metric` picks when ``None``) scores FID
    and KID in Inception-v3 features instead, with the weights file ``inception_weights``
    (:func:`genflow.eval.scoring.fid_of_run`)."""
    conditional = loaded.classes is not None
    labelled = [] if conditional or classes is not None else None  # eval labels every sample of a conditional run
    check_conditioning(loaded, labelled, guidance, guidance_interval)
    guided = {"guidance": guidance, "guidance_interval": list(guidance_interval)} if conditional else {}
    if choose_metric(metric, loaded.config["train"]["dataset"], inception_weights) == "fid":
        sample = functools.partial(sample_run, loaded, solver=solver, steps=steps, grid=grid, seed=seed, batch_size=batch_size,
                                   guidance=guidance, guidance_interval=guidance_interval, runtime=runtime, **solver_options)  # fmt: skip
        result = fid_of_run(loaded, n, classes, seed, inception_weights, sample)
        return None if result is None else result | guided
    feature_classifier(loaded.config["train"]["dataset"])  # refuses a dataset without one before loading or sampling
    dataset, data = run_dataset(loaded)
    check_data_shape(loaded, dataset, data.images)
    plan = plan_evaluation(data, loaded.classes, n, classes)
    images, stats = sample_run(loaded, plan.n, solver, steps, grid, seed, batch_size, plan.labels, guidance, guidance_interval,
                               runtime, **solver_options)  # fmt: skip
    if images is None:
        return None
    result = sampling_fields(stats) | score(images, plan.real, dataset, seed)
    if conditional:
        result |= guided | class_scores(images, plan, dataset, seed)
    return result
