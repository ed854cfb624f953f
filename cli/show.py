"""``genflow list`` and ``genflow info``: what genflow has, and what a run is."""

from __future__ import annotations

import json

from rich.markup import escape
from rich.table import Table

import genflow
from genflow.cli.core import RunArgument, app, fails_cleanly, out_console
from genflow.lazy import lazy_import

api = lazy_import("genflow.api")  # torch and diffusers: imported when a command runs


@app.command("list")
def list_components() -> None:
    """List processes, solvers and time grids."""
    for title, rows in (
        ("processes", [(name, cls.summary) for name, cls in genflow.PROCESSES.items()]),
        ("solvers", [(name, spec.summary) for name, spec in genflow.SOLVERS.items()]),
        ("grids", [(name, summary) for name, (_, summary) in genflow.GRIDS.items()]),
    ):
        table = Table(title=title, show_header=False, title_justify="left")
        for name, summary in rows:
            table.add_row(name, summary)
        out_console.print(table)


@app.command()
@fails_cleanly
def info(run: RunArgument = None) -> None:
    """Show a run's process, model, training config and last logged loss."""
    loaded = api.load(run, device="cpu")
    train_config = loaded.config["train"]
    parameters = sum(p.numel() for p in loaded.model.parameters())
    table = Table(title=escape(loaded.describe()), show_header=False, title_justify="left")
    table.add_row("process", escape(f"{loaded.process.name} {json.dumps(loaded.process.options())}"))
    table.add_row("default solver", loaded.process.default_solver)
    imported = loaded.config.get("imported")
    model = {k: v for k, v in loaded.config["model"].items() if k != "diffusers"}
    table.add_row("backbone", escape(f"{loaded.model.config.describe()}, {parameters / 1e6:.2f}M parameters"))
    table.add_row("model", escape(json.dumps(model)))
    if imported:
        table.add_row("imported", escape(f"from {imported['from']} ({imported['pipeline']}, {imported['scheduler']})"))
        for note in imported.get("notes", []):
            table.add_row("note", escape(note))
    else:
        table.add_row("data", f"{train_config['dataset']}")
    if loaded.classes is not None:
        dropout = train_config.get("label_dropout")
        table.add_row("classes", escape(f"{len(loaded.classes)}: {', '.join(loaded.classes)} (label dropout {dropout:g})"))
    for key in ("steps", "batch_size", "lr", "ema_decay", "seed") if not imported else ():
        table.add_row(key, str(train_config[key]))
    from genflow.runs.files import logged_losses

    losses = logged_losses(loaded.path)
    if losses:
        last = losses[-1]
        table.add_row("last logged", f"step {last['step']}, loss {last['loss']:.4f}, {last['seconds']:.0f} s")
    table.add_row("checkpoint", escape(api.checkpoint_status(loaded.path, train_config["steps"])))
    out_console.print(table)
