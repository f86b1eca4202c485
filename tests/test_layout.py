"""The tree's shape holds: small files, no import circle, a CLI whose every option says what it does."""

from __future__ import annotations

import argparse
import ast

from branchgraph.cli import build_parser
from tests.conftest import REPO

SRC = REPO / "src" / "branchgraph"


def _module(path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_source_file_is_over_350_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 350}
    assert not long, long


def test_no_function_is_over_60_lines() -> None:
    """Functions short enough to read at once (torch.fx's and timm's are): size is met by real splits."""
    long = {f"{p.relative_to(REPO)}:{n.name}": n.end_lineno - n.lineno + 1
            for p in SRC.rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno + 1 > 60}
    assert not long, long


# The layers, lowest first: a module imports only from its own layer or those below (the package root, which
# re-exports the API, sits on top with the command line).
LAYERS = (
    ("errors", "choices", "example", "hardware", "heap", "timing", "kernels"),
    ("data", "graph"),
    ("memory", "passes"),
    ("models", "analysis"),
    ("inference",),
    ("candidates", "tuning_cache", "tune_result", "tune_checks", "tune", "deploy"),
    ("benchmark", "training", "interactive"),
    ("api", "api_runs"),
    ("commands", "cli_args", "cli_flags", "cli", ""),
)


def _edges() -> dict[str, set[str]]:
    """Every import of one branchgraph module by another, at any depth of the file (lazy ones too): a package
    importing its own submodules (re-exports) is an edge, and so is a module importing its parent package or the
    package root; ``from package import submodule`` is an edge to the submodule."""
    modules = {_module(p): p for p in SRC.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            found = []
            if isinstance(node, ast.ImportFrom) and node.module:
                found = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            edges[name] |= {t for t in found if t in modules and t != name}
    return edges


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    found = [i for i, names in enumerate(LAYERS) if top in names]
    assert found, f"{module} is in no layer of tests/test_layout.py's LAYERS: place it"
    return found[0]


def test_no_import_runs_up_the_layers() -> None:
    upward = sorted(f"{a} -> {b}" for a, targets in _edges().items() for b in targets if _layer(b) > _layer(a))
    assert not upward, upward


def test_no_import_circle_between_modules() -> None:
    edges = _edges()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                return [*path[path.index(n):], n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(edges):
        if m not in state:
            assert (cycle := visit(m)) is None, " -> ".join(cycle)


def test_every_cli_option_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, command in sub.choices.items() for action in command._actions
               if not isinstance(action, argparse._HelpAction) and not action.help]
    assert not missing, missing
