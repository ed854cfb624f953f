"""The installed layout: the wheel holds genflow with its command line (from cli/) and presets
(from configs/) inside the package, no top-level ``cli``, and it runs from the wheel alone;
the backbone imports nothing from the processes."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds the wheel and runs it from a folder

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"genflow": "genflow", "cli": "genflow/cli", "configs": "genflow/configs"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (so the checkout gets no build/ folder)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in SOURCES:
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out), str(source)]
    subprocess.run(command, check=True, timeout=300)
    [built] = out.glob("genflow-*.whl")
    return built


def expected_files() -> set[str]:
    """Every module, preset and asset in the checkout, at its installed path."""
    files = set()
    for folder, installed in SOURCES.items():
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                files.add(f"{installed}/{path.relative_to(ROOT / folder).as_posix()}")
    return files


def test_the_wheel_holds_the_package_with_its_cli_and_presets_and_nothing_else(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packaged = {n for n in names if ".dist-info/" not in n}
    assert packaged == expected_files()
    assert {
        "genflow/cli/__init__.py",
        "genflow/configs/rectified-flow.toml",
        "genflow/assets/digits_classifier.safetensors",
    } <= packaged
    assert not [n for n in packaged if not n.startswith("genflow/")]  # no top-level cli or configs
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "genflow = genflow.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


UNPACKED_CHECK = """
import runpy, sys
import genflow, genflow.config

print(genflow.__file__, genflow.config.read_preset("ddpm")["process"])
sys.argv = ["genflow", "list"]
runpy.run_module("genflow", run_name="__main__")  # python -m genflow list
"""


def test_the_unpacked_wheel_runs_on_its_own(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    command = [sys.executable, "-c", UNPACKED_CHECK]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    first, *listing = result.stdout.splitlines()
    assert first.split() == [str(tmp_path / "site" / "genflow" / "__init__.py"), "ddpm"]
    assert "rectified-flow" in "\n".join(listing) and "dpm++2m" in "\n".join(listing)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_backbone_knows_no_process():
    for path in (ROOT / "genflow" / "nn").glob("*.py"):
        assert not [m for m in imported_modules(path) if m.startswith("genflow.processes")], path
