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


def test_no_import_circle_between_modules() -> None:
    """Every import of one branchgraph module by another, at any depth of the file (lazy ones too), forms no
    cycle; a package importing its own submodules (re-exports) is not an edge."""
    modules = {_module(p): p for p in SRC.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            found = []
            if isinstance(node, ast.ImportFrom) and node.module:
                found = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            for target in found:
                own_part = target.startswith(name + ".") or name.startswith(target + ".")
                if target in modules and target != name and not own_part:
                    edges[name].add(target)
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

    for m in sorted(modules):
        if m not in state:
            assert (cycle := visit(m)) is None, " -> ".join(cycle)


def test_every_cli_option_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, command in sub.choices.items() for action in command._actions
               if not isinstance(action, argparse._HelpAction) and not action.help]
    assert not missing, missing
