"""Peak memory of training on an image folder, held in memory (uint8) or streamed from its files,
at two folder sizes: streaming must stay flat as the folder grows, in memory must grow.

Each run is ``genflow train`` in a subprocess; this script samples the resident memory (RSS)
of that process and of its DataLoader workers from /proc every 50 ms. The workers are forked
and share most pages with the trainer, so the sum over the process tree overstates the
memory in use; the trainer's own peak is the number to compare.

    python benchmarks/bench_streaming.py [--images 4000 16000] [--steps 20]

Writes ``benchmarks/results/streaming-memory.md`` and ``.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

RESULTS = Path(__file__).parent / "results"
RESOLUTION = 64


def write_folder(folder: Path, count: int) -> Path:
    """``count`` smooth random 64x64 colour PNGs (a blurred noise field each), 10 class folders."""
    rng = np.random.default_rng(0)
    for i in range(count):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((RESOLUTION, RESOLUTION), Image.Resampling.BICUBIC)
        target = folder / f"class{i % 10}"
        target.mkdir(parents=True, exist_ok=True)
        image.save(target / f"{i:06d}.png")
    return folder


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def peak_memory(command: list[str]) -> dict[str, float]:
    """Run ``command``; its peak RSS and the peak RSS summed over it and its children, in MB."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    trainer = tree = 0.0
    while process.poll() is None:
        own = rss_mb(process.pid)
        trainer, tree = max(trainer, own), max(tree, own + sum(rss_mb(c) for c in children(process.pid)))
        time.sleep(0.05)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read()[-2000:]}")
    return {"trainer_peak_mb": round(trainer, 1), "tree_peak_mb": round(tree, 1), "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[4000, 16000])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for count in args.images:
            folder = write_folder(Path(scratch) / f"images-{count}", count)
            for mode, budget in (("in memory", 4096), ("streamed", 0)):
                command = [sys.executable, "-m", "genflow", "train", "--dataset", str(folder), "--steps", str(args.steps),
                           "--batch-size", "32", "--device", "cpu", "--no-final-grid", "-o", "sample_every=0",
                           "-o", f"data_in_memory_mb={budget}", "-o", f"data_workers={args.workers}",
                           "-o", "model.block_channels=[32,64]", "-o", "model.attention=[false,false]",
                           "--out", str(Path(scratch) / f"run-{count}-{budget}")]  # fmt: skip
                pixels_mb = count * 3 * RESOLUTION * RESOLUTION / 2**20
                row = {"images": count, "pixels_mb": round(pixels_mb, 1), "mode": mode, **peak_memory(command)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    write_results(rows, args)


def write_results(rows: list[dict], args: argparse.Namespace) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "streaming-memory.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [
        "# Peak memory: an image folder in memory vs streamed",
        "",
        f"`python benchmarks/bench_streaming.py --images {' '.join(map(str, args.images))} --steps {args.steps} --workers {args.workers}`",
        f"({RESOLUTION}x{RESOLUTION} RGB PNGs, batch 32, a [32, 64] UNet, CPU). The trainer's peak RSS is the number to",
        "compare; the tree sum counts pages the forked workers share with it again.",
        "",
        "| images | pixels (MB, uint8) | mode | trainer peak RSS (MB) | process tree peak (MB) | wall (s) |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    lines += [f"| {r['images']} | {r['pixels_mb']} | {r['mode']} | {r['trainer_peak_mb']} | {r['tree_peak_mb']} | {r['seconds']} |" for r in rows]
    (RESULTS / "streaming-memory.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
