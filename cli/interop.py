"""``genflow export`` and ``genflow import``: a run as a diffusers pipeline folder, and a
diffusers DDPM/DDIM model folder as a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genflow.cli.core import app, fails_cleanly, say
from genflow.lazy import lazy_import

interop = lazy_import("genflow.interop")  # torch and diffusers: imported when a command runs

OverwriteOption = Annotated[bool, typer.Option(help="Replace an existing, non-empty destination.")]


@app.command("export")
@fails_cleanly
def export_command(
    run: Annotated[str, typer.Argument(help="Run directory (runs/latest: the newest).", show_default=False)],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the diffusers pipeline to.", show_default=False)],
    overwrite: OverwriteOption = False,
) -> None:
    """Write a run as a diffusers pipeline folder (DiffusionPipeline.from_pretrained loads it)."""
    folder = interop.export_run(run, out_dir, overwrite)
    index = (folder / "model_index.json").read_text()
    custom = "genflow_flow_pipeline" in index
    load = f"DiffusionPipeline.from_pretrained({str(folder)!r}{', trust_remote_code=True' if custom else ''})"
    say(f"exported to {folder}; load it with diffusers: {load}")


@app.command("import")
@fails_cleanly
def import_command(
    folder: Annotated[
        Path, typer.Argument(help="A diffusers pipeline folder: model_index.json, unet/, scheduler/.", show_default=False)
    ],
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<time>-<process>).")] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Import a diffusers UNet2DModel with a DDPM/DDIM scheduler as a genflow run."""
    run_dir = interop.import_diffusers(folder, out, overwrite)
    from genflow.interop.importer import imported_notes
    from genflow.runs.files import read_run

    for note in imported_notes(read_run(run_dir).config):
        say(f"note: {note}")
    say(f"imported {folder} as {run_dir}; sample it with: genflow sample {run_dir}")
