"""The layering contract of docs/design.md ("Layers"): a part imports only the parts below it, no
modules import each other in a circle (function-local imports count), and the facades sit on top:
nothing in genflow/ imports ``genflow.api`` (import-linter's layers contract), the command line
(``genflow.cli``, installed from cli/) or the package root ``genflow``."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
from importlinter import api as importlinter_api
from importlinter.application import use_cases

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "genflow"
FACADES = ("genflow", "genflow.cli", "genflow.api")
ALLOWED_TO_IMPORT_FACADES = {"genflow.__main__": {"genflow.cli", "genflow.cli.main"}}


def test_every_contract_is_kept():
    """``lint-imports`` on pyproject.toml's contracts; a broken one is printed with its import chain."""
    assert use_cases.lint_imports(config_filename=str(ROOT / "pyproject.toml"), cache_dir=None, no_logo=True) is True


def test_the_contracts_are_the_layers_and_no_circles():
    contracts = importlinter_api.read_configuration(str(ROOT / "pyproject.toml"))["contracts_options"]
    assert sorted(contract["type"] for contract in contracts) == ["acyclic_siblings", "layers"]


def test_a_new_upward_import_breaks_the_layers_contract():
    """The check can fail: one function-local import of a higher layer (evaluation from inside a
    process) is found and reported."""
    graph = grimp.build_graph("genflow", cache_dir=None)
    graph.add_import(importer="genflow.processes.base", imported="genflow.eval.scoring", line_number=1, line_contents="")
    illegal = graph.find_illegal_dependencies_for_layers(layers=("genflow.eval", "genflow.processes"))
    assert {(d.importer, d.imported) for d in illegal} == {("genflow.processes", "genflow.eval")}
    assert graph.find_shortest_chain(importer="genflow.eval.scoring", imported="genflow.processes.base") is not None


def imported_modules(path: Path) -> set[str]:
    """Every ``genflow`` module a file imports, at any depth in the file (function-local included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name == "genflow" or name.startswith("genflow.")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_nothing_in_the_package_imports_the_facades():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        if module == "genflow":
            continue
        facades = {name for name in imported_modules(path) if name in FACADES or name.startswith("genflow.cli.")}
        allowed = ALLOWED_TO_IMPORT_FACADES.get(module, set())
        if facades - allowed:
            offenders[module] = sorted(facades - allowed)
    assert offenders == {}
