"""How long the ``genflow`` command takes to answer when it does no work: ``--help``, ``list``,
``train --help`` and an argument error, against a bare ``python -c pass`` and ``import torch``
measured in the same run. Medians of several runs, each a fresh interpreter.

    python benchmarks/bench_startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "genflow --help": ["genflow", "--help"],
    "genflow list": ["genflow", "list"],
    "genflow train --help": ["genflow", "train", "--help"],
    "genflow sample --steps x (usage error)": ["genflow", "sample", "--steps", "x"],
    "genflow train --process ddmp (unknown name)": ["genflow", "train", "--process", "ddmp"],
    "genflow sample --steps 0": ["genflow", "sample", "--steps", "0"],
    "genflow eval --n 0": ["genflow", "eval", "--n", "0"],
    "genflow info no-such-run": ["genflow", "info", "no-such-run"],
    "genflow export no-such-run out": ["genflow", "export", "no-such-run", "out"],
}


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if shutil.which("genflow") is None:
        sys.exit("genflow is not on PATH; pip install -e . first")
    print(f"{'command':<46} median s   (of {args.repeats})")
    for name, command in COMMANDS.items():
        seconds(command)  # warm the file cache
        runs = [seconds(command) for _ in range(args.repeats)]
        print(f"{name:<46} {statistics.median(runs):8.3f}")


if __name__ == "__main__":
    main()
