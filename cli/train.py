"""``genflow train``: a new run from a preset and flags, or ``--resume RUN``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import genflow
from genflow.cli.core import app, fails_cleanly, parse_assignments, process_flags, say, with_flags
from genflow.config import read_preset, resolve_config, route_assignments, to_toml, training_keys
from genflow.data.datasets import DATASETS
from genflow.errors import GenflowError
from genflow.lazy import lazy_import
from genflow.nn.backbones import BACKBONES
from genflow.progress import reporter_for

api = lazy_import("genflow.api")  # torch and diffusers: imported when a command runs

PROCESS_FLAGS = process_flags()
OPTION_NAMES = ", ".join(flag.name for flag in PROCESS_FLAGS)
TRAINING_KEYS = ", ".join(training_keys())
DEFAULT_PRESET = read_preset("rectified-flow")  # a small TOML file: --help says what an unset flag becomes


def from_preset(key: str) -> str:
    """Where an unset flag's value comes from, for its help."""
    return f"(default: the preset's; {DEFAULT_PRESET[key]:g} in rectified-flow's, which --print-config shows)"


@app.command()
@fails_cleanly
@with_flags(PROCESS_FLAGS, into="named_options")
def train(
    process: Annotated[str | None, typer.Option(help=f"Process: {', '.join(genflow.PROCESSES.names())}.")] = None,
    config: Annotated[str | None, typer.Option("--config", help="Preset name or TOML file; flags override it.")] = None,
    dataset: Annotated[str | None, typer.Option(help=f"{', '.join(DATASETS)} (digits is embedded), or an image folder.")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Where the mnist, fashion-mnist or cifar10 files are (never downloaded).")] = None,
    resolution: Annotated[
        int | None, typer.Option(help="Resize (shorter side) and center-crop every training image to this square.")
    ] = None,
    random_flip: Annotated[
        bool | None, typer.Option("--random-flip/--no-random-flip", help="Mirror training images left-right at random (p = 1/2).")
    ] = None,
    backbone: Annotated[
        str | None, typer.Option(help=f"Network: {', '.join(BACKBONES.names())} (default unet; sizes with -o model.KEY, such as model.size=S/2).")
    ] = None,
    conditional: Annotated[
        bool | None,
        typer.Option("--conditional/--unconditional", help="Train on the data's class labels (for --class and --guidance)."),
    ] = None,
    label_dropout: Annotated[
        float | None, typer.Option(help="Share of labels replaced by the null label in training (default 0.1).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help=f"Optimizer steps {from_preset('steps')}.")] = None,
    batch_size: Annotated[int | None, typer.Option(help=f"Images per step {from_preset('batch_size')}.")] = None,
    lr: Annotated[float | None, typer.Option(help=f"Peak learning rate (AdamW, warm-up then cosine) {from_preset('lr')}.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for weights, data order and noise.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps.")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32 or bf16 (autocast; also on CPUs with AMX or AVX-512 BF16).")] = None,
    grad_accumulation: Annotated[
        int | None, typer.Option(help="Micro-batches per step in each process (--batch-size stays the global batch).")
    ] = None,
    gradient_checkpointing: Annotated[
        bool | None,
        typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations in the backward pass (less memory)."),
    ] = None,
    compile: Annotated[
        bool | None, typer.Option("--compile/--no-compile", help="torch.compile the backbone (slow first steps, faster after).")
    ] = None,
    sample_every: Annotated[int | None, typer.Option(help="Write a sample grid every N steps (0: only at the end).")] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="Log the Frechet distance (digits classifier) or, with -o inception_weights=FILE, FID to metrics.jsonl every N steps.")
    ] = None,
    log_every: Annotated[int | None, typer.Option(help="Log the loss to metrics.jsonl every N steps.")] = None,
    warmup_steps: Annotated[int | None, typer.Option(help="Linear learning-rate warm-up (at most a tenth of --steps).")] = None,
    ema_decay: Annotated[float | None, typer.Option(help="Decay of the weights' exponential moving average.")] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            help=f"Any process option ({OPTION_NAMES}), config key ({TRAINING_KEYS}) or model.KEY, as key=value.",
        ),
    ] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Save a checkpoint every N steps (0: only at the end).")] = None,
    keep_checkpoints: Annotated[int | None, typer.Option(help="How many of the newest checkpoints to keep.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<time>-<process>).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Allow --out to be an existing, non-empty directory.")] = False,
    resume: Annotated[
        Path | None, typer.Option(help="Continue this run from its newest valid checkpoint (--steps may raise its budget).")
    ] = None,
    final_grid: Annotated[bool | None, typer.Option("--final-grid/--no-final-grid", help="Sample a grid at the end.")] = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the resolved config as a TOML preset and exit (nothing is written).")
    ] = False,
    named_options: dict | None = None,
) -> None:
    """Train the shared backbone (a UNet, or a DiT with --backbone dit) under a process (rectified flow on the embedded digits by default).
    Ctrl-C or SIGTERM saves a checkpoint and exits 130 or 143; --resume RUN continues it.
    Every process option is a flag (below) or -o key=value. Under 'torchrun --nproc-per-node N
    -m genflow train' (or 'accelerate launch') the same run trains on N processes."""
    assigned = route_assignments(parse_assignments(option or []))
    flags = {
        "dataset": dataset, "data_dir": data_dir, "resolution": resolution, "random_flip": random_flip, "conditional": conditional, "label_dropout": label_dropout, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "device": device, "precision": precision, "grad_accumulation": grad_accumulation,
        "gradient_checkpointing": gradient_checkpointing, "compile": compile, "sample_every": sample_every, "eval_every": eval_every,
        "checkpoint_every": checkpoint_every, "keep_checkpoints": keep_checkpoints, "log_every": log_every,
        "warmup_steps": warmup_steps, "ema_decay": ema_decay, "final_grid": final_grid,
    }  # fmt: skip
    if backbone is not None:
        assigned["model"]["backbone"] = backbone
    overrides = assigned | {k: v for k, v in flags.items() if v is not None}
    overrides["process_options"] = assigned["process_options"] | (named_options or {})
    if resume is not None:
        if config is not None or out is not None or overwrite:
            raise GenflowError("--resume continues a run in place with its own config; drop --config, --out and --overwrite")
        if print_config:
            raise GenflowError(f"--print-config shows a new run's config; a run's own is in {resume / 'config.json'}")
        run_dir = api.resume(resume, overrides | {"process": process}, reporter_for())
        say(f"trained {run_dir} to step {api.read_run(run_dir).config['train']['steps']}")
        return
    resolved = resolve_config(config, process, overrides)
    if print_config:
        say(to_toml(api.prepare(resolved).config).rstrip("\n"))
        return
    run_dir = api.train(resolved, out, overwrite, reporter_for())
    say(f"trained {resolved.process} for {resolved.steps} steps -> {run_dir}")
