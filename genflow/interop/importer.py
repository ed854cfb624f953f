"""``genflow import DIFFUSERS_DIR --out RUN``: a diffusers ``UNet2DModel`` with a
``DDPMScheduler`` or ``DDIMScheduler`` config as a genflow run, so that every genflow solver,
``sample``, ``eval``, ``sweep`` and ``export`` work on it.

The run's process is ``ddpm`` (``ddim`` for a DDIMScheduler) with the scheduler's discrete
schedule and prediction (:mod:`genflow.interop.schedulers`); its backbone is the UNet built
from its own config (``model.diffusers``), fed the integer step index diffusers feeds it. The
weights are read from ``unet/diffusion_pytorch_model.safetensors`` only: genflow never
unpickles, so a ``.bin`` is refused with the command that converts it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genflow.errors import GenflowError
from genflow.interop.schedulers import process_from_scheduler, sampling_differences
from genflow.nn import Preconditioner, UNetConfig
from genflow.processes import GaussianProcess
from genflow.runs import files
from genflow.storage import save_weights, write_json
from genflow.version import __version__

WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLED_WEIGHTS = "diffusion_pytorch_model.bin"
SUPPORTED_EMBEDDINGS = ("positional",)


@dataclass
class DiffusersFolder:
    """A diffusers pipeline folder's parts that an import reads, checked."""

    path: Path
    unet: dict[str, Any]
    scheduler: dict[str, Any]
    pipeline: object = None
    notes: list[str] = field(default_factory=list)


def read_json(folder: Path, name: str) -> dict[str, Any]:
    """The JSON object in ``folder / name``, or one line naming what is missing or wrong."""
    path = folder / name
    if not path.is_file():
        raise GenflowError(
            f"{folder} is not a diffusers model folder: it has no {name} (save one with DiffusionPipeline.save_pretrained)"
        )
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GenflowError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise GenflowError(f"{path} does not hold a JSON object")
    return value


def read_folder(path: Path) -> DiffusersFolder:
    """``model_index.json``, ``unet/config.json`` and ``scheduler/scheduler_config.json`` of a
    pipeline folder, each present and of a kind genflow imports."""
    if not path.is_dir():
        raise GenflowError(f"{path} does not exist or is not a folder; pass a diffusers model folder (with model_index.json)")
    index = read_json(path, "model_index.json")
    unet = read_json(path, "unet/config.json")
    scheduler = read_json(path, "scheduler/scheduler_config.json")
    if unet.get("_class_name") != "UNet2DModel":
        raise GenflowError(f"{path / 'unet'}: a {unet.get('_class_name')!r} cannot be imported; genflow imports a UNet2DModel")
    if unet.get("in_channels") != unet.get("out_channels"):
        raise GenflowError(
            f"{path / 'unet'}: the UNet outputs {unet.get('out_channels')} channels for {unet.get('in_channels')} in (a learned variance?); genflow imports one prediction per input channel"
        )
    if unet.get("time_embedding_type", "positional") not in SUPPORTED_EMBEDDINGS:
        raise GenflowError(
            f"{path / 'unet'}: time_embedding_type {unet['time_embedding_type']!r} cannot be imported; genflow imports positional embeddings of the step index"
        )
    if unet.get("num_class_embeds") or unet.get("class_embed_type"):
        raise GenflowError(
            f"{path / 'unet'}: class-conditional diffusers UNets cannot be imported yet (their class embedding has no null label for guidance)"
        )
    if not isinstance(unet.get("sample_size"), int):
        raise GenflowError(
            f"{path / 'unet'}: sample_size {unet.get('sample_size')!r} is not one whole number; genflow imports square models"
        )
    check_weights(path / "unet")
    return DiffusersFolder(path, unet, scheduler, index.get("_class_name"), sampling_differences(scheduler))


def check_weights(unet_folder: Path) -> None:
    """The safetensors weights are there; a pickled ``.bin`` alone is refused, never opened."""
    if (unet_folder / WEIGHTS).is_file():
        return
    if (unet_folder / PICKLED_WEIGHTS).is_file():
        raise GenflowError(
            f"{unet_folder} holds pickled weights ({PICKLED_WEIGHTS}), and genflow never unpickles (a pickle can run code); "
            f"convert a copy you trust with: python -c \"from diffusers import UNet2DModel; UNet2DModel.from_pretrained('{unet_folder}').save_pretrained('{unet_folder}')\""
        )
    raise GenflowError(f"{unet_folder} has no {WEIGHTS}; is it a diffusers UNet2DModel saved with save_pretrained?")


def backbone_config(unet: dict[str, Any]) -> UNetConfig:
    """genflow's record of an imported backbone: its diffusers config verbatim (``diffusers``),
    with the shape fields filled in to describe it."""
    public = {k: v for k, v in unet.items() if not k.startswith("_")}
    return UNetConfig(
        channels=public["in_channels"],
        resolution=public["sample_size"],
        block_channels=tuple(public.get("block_out_channels", ())),
        attention=tuple("Attn" in block for block in public.get("down_block_types", ())),
        layers_per_block=public.get("layers_per_block", 2),
        norm_groups=public.get("norm_num_groups", 32),
        dropout=public.get("dropout", 0.0),
        diffusers=public,
    )


def load_backbone(folder: DiffusersFolder, process: GaussianProcess) -> Preconditioner:
    """The imported UNet behind genflow's preconditioner, its weights read by diffusers from
    safetensors (which also renames the attention weights of older diffusers versions)."""
    from diffusers import UNet2DModel
    from diffusers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # not its advice to install accelerate, which genflow does not need
    try:
        unet = UNet2DModel.from_pretrained(folder.path / "unet", use_safetensors=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise GenflowError(f"{folder.path / 'unet'} could not be read as a UNet2DModel: {first_line}") from None
    finally:
        logging.set_verbosity(verbosity)
    model = Preconditioner(backbone_config(dict(unet.config)), process.schedule, process.discrete_steps)
    model.backbone.load_state_dict(unet.state_dict())
    return model


def import_record(folder: DiffusersFolder, process: GaussianProcess, model: Preconditioner, version: str) -> dict[str, Any]:
    """``config.json`` of an imported run: no training (``steps`` 0, no data), and where it came from."""
    from genflow.config import TrainConfig

    config = TrainConfig(process=process.name, process_options=process.options(), model=model.config.to_dict(), steps=0)
    imported = {
        "from": str(folder.path.resolve()),
        "pipeline": folder.pipeline,
        "scheduler": folder.scheduler.get("_class_name"),
        "notes": folder.notes,
    }
    return files.run_record(config, version, {}) | {"imported": imported}


def import_diffusers(folder: str | Path, out: Path | None = None, overwrite: bool = False) -> Path:
    """Import the diffusers pipeline folder ``folder`` as a genflow run in ``out`` (default
    ``runs/<time>-<process>``) and return the run's directory. Everything is checked before
    anything is written."""
    source = read_folder(Path(folder))
    process = process_from_scheduler(source.scheduler, str(source.path / "scheduler" / "scheduler_config.json"))
    model = load_backbone(source, process)
    run_dir = files.new_run_dir(out, process.name, overwrite)
    files.clear_run(run_dir)
    save_weights(run_dir / files.EMA_WEIGHTS, model.backbone)
    write_json(run_dir / files.CONFIG, import_record(source, process, model, __version__))
    if files.is_default_location(out, run_dir):
        files.point_latest(run_dir.parent, run_dir)
    return run_dir


def imported_notes(record: dict[str, Any]) -> list[str]:
    """What an imported run's source scheduler does differently when sampling (empty otherwise)."""
    return list(record.get("imported", {}).get("notes", []))
