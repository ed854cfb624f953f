"""``genflow export RUN OUT_DIR``: a run as a folder in diffusers' layout (``model_index.json``,
``unet/``, ``scheduler/``) that ``diffusers.DiffusionPipeline.from_pretrained`` loads without
genflow installed.

- ``ddpm`` runs become a stock ``DDPMPipeline`` with a ``DDPMScheduler``, ``ddim`` runs a
  ``DDIMPipeline`` with a ``DDIMScheduler``: the same discrete schedule, and the backbone is
  fed diffusers' integer step index (:mod:`genflow.nn.precond`), so the pipelines sample the
  run's own model function.
- ``rectified-flow`` and ``cnf`` runs (velocity prediction) become
  :class:`~genflow.interop.flow_pipeline.GenflowFlowPipeline`, a pipeline file written beside
  the weights (diffusers' custom-pipeline mechanism) that steps with diffusers'
  ``FlowMatchEulerDiscreteScheduler``: no stock pipeline runs a ``UNet2DModel`` on a
  flow-matching schedule or scales its input as genflow's preconditioner does.
- Refused, with the reason: DiT runs (diffusers' ``DiTPipeline`` decodes latents with a VAE,
  and genflow's DiT runs are on pixels), the score SDEs (their continuous schedules have no discrete
  scheduler config that reproduces them), class-conditional runs (these pipelines take no
  labels), other predictions, and DDPM runs trained before genflow fed the step index.

An export target is one function here and one line in :data:`EXPORT_TARGETS`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from genflow.errors import GenflowError
from genflow.interop import flow_pipeline
from genflow.interop.schedulers import scheduler_config
from genflow.lazy import lazy_import
from genflow.runs.checkpoint import replace_directory
from genflow.runs.loaded import load
from genflow.storage import TEMPORARY_SUFFIX, make_shareable

diffusers = lazy_import("diffusers")

FLOW_PIPELINE_MODULE = "genflow_flow_pipeline"
"""The pipeline file's name in an export (without ``.py``), named by ``model_index.json``."""
REFUSED = {
    "sde": "the score SDEs' continuous schedules (VP, VE, sub-VP) have no diffusers scheduler config that reproduces them; "
    "train a ddpm run to export a discrete diffusion",
}


def ddpm_pipeline(loaded) -> object:
    """``DDPMPipeline`` + ``DDPMScheduler``: ancestral sampling (Ho et al. 2020, Algorithm 2)."""
    return diffusers.DDPMPipeline(unet=loaded.model.backbone, scheduler=diffusers.DDPMScheduler(**scheduler_config(loaded.process)))


def ddim_pipeline(loaded) -> object:
    """``DDIMPipeline`` + ``DDIMScheduler`` (Song, Meng & Ermon 2021), the last step to alpha_bar = 1."""
    scheduler = diffusers.DDIMScheduler(**scheduler_config(loaded.process), set_alpha_to_one=True)
    return diffusers.DDIMPipeline(unet=loaded.model.backbone, scheduler=scheduler)


def flow_pipeline_of(loaded) -> object:
    """:class:`GenflowFlowPipeline` with a ``FlowMatchEulerDiscreteScheduler`` (``sigma = t``)."""
    if loaded.process.prediction != "velocity":
        raise GenflowError(f"a flow export needs a velocity prediction, and this run predicts {loaded.process.prediction}")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    sigma_min = float(getattr(loaded.process, "sigma_min", 0.0))
    return flow_pipeline.GenflowFlowPipeline(unet=loaded.model.backbone, scheduler=scheduler, sigma_min=sigma_min)


EXPORT_TARGETS: dict[str, Callable] = {
    "ddpm": ddpm_pipeline,
    "ddim": ddim_pipeline,
    "rectified-flow": flow_pipeline_of,
    "cnf": flow_pipeline_of,
}


def pipeline_for(loaded) -> object:
    """The diffusers pipeline that samples ``loaded`` (a :class:`genflow.runs.loaded.LoadedRun`), or
    one line saying why there is none."""
    name = loaded.process.name
    if name in REFUSED:
        raise GenflowError(f"cannot export a {name} run: {REFUSED[name]}")
    if loaded.model.config.name != "unet":
        raise GenflowError(
            f"cannot export a {loaded.model.config.name} run: diffusers' DiTPipeline samples latents through a VAE, and "
            "genflow trains DiTs on pixels; sample it with genflow sample"
        )
    if loaded.model.config.num_classes:
        raise GenflowError("cannot export a class-conditional run: diffusers' unconditional pipelines take no class labels")
    if loaded.process.discrete_steps and loaded.model.config.time_embedding != "step":
        raise GenflowError(
            "cannot export this run exactly: it was trained before genflow fed a DDPM backbone diffusers' step index "
            "(model.time_embedding 999t); train it again to export it"
        )
    return EXPORT_TARGETS[name](loaded)


def check_destination(out_dir: Path, overwrite: bool, run: Path | None = None) -> None:
    """Refuse a file, a folder that holds ``run``, and an existing non-empty folder unless
    ``overwrite`` and it is an earlier export (a diffusers folder: ``model_index.json``)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise GenflowError(f"{out_dir} is a file; choose a folder to export to")
    if run is not None and out_dir.resolve() in (run.resolve(), *run.resolve().parents):
        raise GenflowError(f"{out_dir} holds the run {run}; export to another folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise GenflowError(f"{out_dir} exists and is not empty; choose another folder or pass --overwrite")
        if not (out_dir / "model_index.json").is_file():
            raise GenflowError(f"{out_dir} is not a diffusers export (no model_index.json); --overwrite replaces only those, so choose another folder")


def save_pipeline(pipeline: object, out_dir: Path, overwrite: bool) -> Path:
    """Write ``pipeline`` whole under a temporary name beside ``out_dir``, then rename it into
    place (an existing ``out_dir`` is replaced only by a complete export)."""
    check_destination(out_dir, overwrite)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=TEMPORARY_SUFFIX, dir=out_dir.parent))
    except OSError as error:
        raise GenflowError(f"cannot write in {out_dir.parent}: {error.strerror or error}") from None
    try:
        pipeline.save_pretrained(staging, safe_serialization=True)
        if isinstance(pipeline, flow_pipeline.GenflowFlowPipeline):
            name_custom_pipeline(staging)
        for path in (staging, *staging.rglob("*")):
            make_shareable(path)  # mkdtemp's folder is private (0700), as are files some writers create
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        replace_directory(staging, out_dir)
    except OSError as error:
        raise GenflowError(f"cannot write {out_dir}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def name_custom_pipeline(folder: Path) -> None:
    """Copy the pipeline's source beside the weights and name it in ``model_index.json``
    (``[module, class]``, which ``DiffusionPipeline.from_pretrained`` loads from the folder)."""
    shutil.copyfile(flow_pipeline.__file__, folder / f"{FLOW_PIPELINE_MODULE}.py")
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    index["_class_name"] = [FLOW_PIPELINE_MODULE, flow_pipeline.GenflowFlowPipeline.__name__]
    index_file.write_text(json.dumps(index, indent=2) + "\n")


def export_run(run: str | Path | None, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Export the run ``run`` (default ``runs/latest``; its EMA weights, those of its newest
    checkpoint while unfinished) to ``out_dir`` in diffusers' layout and return ``out_dir``.
    Everything is checked before anything is written; an existing ``out_dir`` is replaced
    (with ``overwrite``) only by a complete export."""
    out_dir = Path(out_dir)
    loaded = load(run, device="cpu")
    check_destination(out_dir, overwrite, loaded.path)
    return save_pipeline(pipeline_for(loaded), out_dir, overwrite)
