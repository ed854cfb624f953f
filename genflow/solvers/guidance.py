"""Class labels and classifier-free guidance as a model wrapper, so that no solver changes.

A class-conditional model is ``model(x, t, labels)``; its null label (``model.null_label``)
means "no class". :class:`GuidedModel` fixes the labels of a batch and a guidance scale ``s``
and is itself a plain ``model(x, t)``:

    guided = uncond + s * (cond - uncond)

(Ho & Salimans 2022, eq. 6, in diffusers' ``guidance_scale`` convention: ``s = 1`` is the
conditional model, ``s = 0`` the unconditional one). At fixed ``(x, t)`` every prediction
type (eps, x0, v, velocity) is an affine function of every other, so guiding the raw
prediction is the same as guiding the score or the velocity. Optionally guidance applies only
for ``t`` inside an interval and the conditional model is used elsewhere (Kynkaanniemi et
al. 2024, "Applying guidance in a limited interval improves sample and distribution quality
in diffusion models"). The conditional and unconditional halves run as one batched call,
which costs two backbone evaluations per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from genflow.errors import GenflowError
from genflow.lazy import lazy_import
from genflow.registry import did_you_mean

if TYPE_CHECKING:
    from torch import Tensor

    from genflow.processes.base import GaussianProcess

torch = lazy_import("torch")

ConditionalModel = Callable[..., "Tensor"]
"""``model(x, t, labels=None) -> prediction``; ``labels`` long of shape ``(B,)``."""

FULL_INTERVAL = (0.0, 1.0)


def check_guidance(scale: float, interval: Sequence[float] = FULL_INTERVAL) -> tuple[float, float]:
    """Refuse a guidance scale that is negative or not finite, and an interval that is not
    ``0 <= lo < hi <= 1``; returns the interval as a pair of floats."""
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise GenflowError(f"guidance must be a finite number >= 0 (1: the conditional model, 0: unconditional), not {scale!r}")
    if len(interval) != 2:
        raise GenflowError(f"guidance interval takes two times LO,HI, not {list(interval)!r}")
    lo, hi = (float(v) for v in interval)
    if not 0 <= lo < hi <= 1:
        raise GenflowError(f"guidance interval must satisfy 0 <= LO < HI <= 1 (process time), not {lo:g},{hi:g}")
    return lo, hi


class GuidedModel:
    """``model(x, t)`` for a conditional ``model`` with fixed per-sample ``labels``, guided with
    ``scale`` for times in ``interval`` and the conditional model elsewhere (Kynkaanniemi et
    al. 2024): inside, ``scale`` 1 is the conditional model, 0 the unconditional one, and any
    other scale ``uncond + scale (cond - uncond)`` from both halves in one batched call.

    What a call at time ``t`` computes is decided once, from the exact (float64) time the solver
    asks for (:meth:`call_at`, which :class:`~genflow.solvers.BoundModel` uses), so the choice
    and the cost that :meth:`backbone_evaluations` reports for NFE always agree, whatever the
    samples' dtype."""

    def __init__(
        self,
        model: ConditionalModel,
        labels: Tensor,
        null_label: int | None,
        scale: float = 1.0,
        interval: Sequence[float] = FULL_INTERVAL,
    ) -> None:
        self.model, self.labels, self.scale = model, labels, float(scale)
        self.interval = check_guidance(scale, interval)
        if self.scale != 1 and null_label is None:
            raise GenflowError("guidance needs a model trained with label dropout (a null label); this one has none")
        self.null_label = null_label

    def inside(self, t: float) -> bool:
        """Whether ``t`` lies in the guidance interval (the full one holds every time a solver
        asks for, also a rounding outside [0, 1])."""
        lo, hi = self.interval
        return self.interval == FULL_INTERVAL or lo <= t <= hi

    def guides(self, t: float) -> bool:
        """Whether the guided combination (both halves) is computed at ``t``."""
        return self.scale not in (0.0, 1.0) and self.inside(t)

    def backbone_evaluations(self, t: float) -> int:
        return 2 if self.guides(t) else 1

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.call_at(x, t, float(t.reshape(-1)[0]) if t.numel() else 0.0)

    def call_at(self, x: Tensor, t: Tensor, time: float) -> Tensor:
        """The model at ``x``, ``t`` (a tensor in the samples' dtype), guided or not as decided
        from ``time``, the exact time ``t`` was made from."""
        labels = self.labels.to(x.device)
        null = torch.full_like(labels, self.null_label) if self.null_label is not None else None
        if self.guides(time):
            cond, uncond = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
            return uncond + self.scale * (cond - uncond)
        return self.model(x, t, null if self.scale == 0 and self.inside(time) else labels)


def as_labels(labels: int | Sequence[int] | Tensor, n: int, null_label: int | None) -> Tensor:
    """``labels`` as a long tensor of shape ``(n,)`` (one int: every sample), each a real class
    ``0 <= label < null_label`` where the number of classes is known."""
    if isinstance(labels, int):
        labels = [labels] * n
    tensor = torch.as_tensor(labels)
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool or tensor.shape != (n,):
        raise GenflowError(f"labels must be one whole number or {n} of them (one per sample), not {labels!r:.80}")
    tensor = tensor.long()
    if null_label is not None and len(tensor) and not bool(((tensor >= 0) & (tensor < null_label)).all()):
        bad = int(tensor[(tensor < 0) | (tensor >= null_label)][0])
        raise GenflowError(f"class {bad} is out of range: this model has classes 0..{null_label - 1}")
    return tensor


def class_rows(classes: Sequence[int], per_class: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Labels and per-sample seeds for ``per_class`` samples of each class in turn, the same
    seeds ``seed .. seed + per_class - 1`` in every class: a grid with one row per class whose
    columns differ only in the class."""
    labels = [label for label in classes for _ in range(per_class)]
    return labels, [seed + i for _ in classes for i in range(per_class)]


def balanced_labels(n: int, num_classes: int) -> list[int] | None:
    """``0, 1, .., K-1, 0, 1, ..``: ``n`` labels covering the classes evenly (``None`` when unconditional)."""
    return [i % num_classes for i in range(n)] if num_classes else None


def parse_classes(spec: str, classes: Sequence[str]) -> list[int]:
    """``--class`` as label indices: ``all``, or comma-separated class names or indices (a
    name is matched first, so ``3`` is the class named "3" where there is one)."""
    if spec.strip() == "all":
        return list(range(len(classes)))
    items = [item.strip() for item in spec.split(",")]
    if not all(items):
        raise GenflowError(f"--class takes 'all' or comma-separated classes such as 0,1,2, not {spec!r}")
    return [class_index(item, classes) for item in items]


def class_index(item: str, classes: Sequence[str]) -> int:
    """The label of one class given by name or index."""
    if item in classes:
        return list(classes).index(item)
    try:
        index = int(item)
    except ValueError:
        raise GenflowError(f"unknown class {item!r}; {did_you_mean(item, classes)}, or an index 0..{len(classes) - 1}") from None
    if not 0 <= index < len(classes):
        raise GenflowError(f"class {index} is out of range: this run has classes 0..{len(classes) - 1}")
    return index


@dataclass(frozen=True)
class GuidanceInterval:
    """``--guidance-interval``: ``LO,HI`` in process time, or ``sigma=LO,HI`` in EDM's noise
    level ``sigma(t) / alpha(t)``, which means the same noise for every process, as EDM2 and
    Kynkaanniemi et al. 2024 state their intervals (``sigma=0.28,5.42``)."""

    low: float
    high: float
    in_noise_levels: bool = False

    def times(self, process: GaussianProcess) -> tuple[float, float]:
        """The interval in ``process``'s times."""
        if not self.in_noise_levels:
            return self.low, self.high
        return process.time_of_noise_level(self.low), process.time_of_noise_level(self.high)


def parse_interval(spec: str) -> GuidanceInterval:
    """``--guidance-interval LO,HI`` (two times, checked like :func:`check_guidance`) or
    ``sigma=LO,HI`` (two noise levels, ``0 <= LO < HI``)."""
    in_noise_levels = spec.startswith("sigma=")
    try:
        values = [float(item) for item in spec.removeprefix("sigma=").split(",")]
    except ValueError:
        values = []
    if len(values) != 2:
        raise GenflowError(
            f"--guidance-interval takes two times LO,HI such as 0.1,0.8, or two noise levels sigma=LO,HI such as "
            f"sigma=0.28,5.42, not {spec!r}"
        )
    if not in_noise_levels:
        return GuidanceInterval(*check_guidance(1.0, values))
    low, high = values
    if not (0 <= low < high and math.isfinite(low)):
        raise GenflowError(f"guidance noise levels must satisfy 0 <= LO < HI, not {low:g},{high:g}")
    return GuidanceInterval(low, high, in_noise_levels=True)


def conditioning(
    model: ConditionalModel,
    labels: int | Sequence[int] | Tensor | None,
    n: int,
    guidance: float = 1.0,
    interval: Sequence[float] = FULL_INTERVAL,
) -> Callable[[int, int], Callable]:
    """``conditioned(start, stop)``: the model for samples ``start:stop`` of ``n``, with their
    labels and the guidance fixed (``model`` itself when sampled without labels). Labels, the
    guidance and the interval are checked here, before the model is ever called."""
    check_guidance(guidance, interval)
    if labels is None:
        if guidance != 1:
            raise GenflowError("guidance needs labels: give the classes to guide towards")
        return lambda start, stop: model
    null = getattr(model, "null_label", None)
    if null is None:
        raise GenflowError("labels need a class-conditional model (one with a null_label); this model is unconditional")
    per_sample = as_labels(labels, n, null)
    return lambda start, stop: GuidedModel(model, per_sample[start:stop], null, guidance, interval)
