"""The library speaks Python: its errors name parameters, never flags; the CLI maps them to flags."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from branchgraph.errors import ConfigError
from branchgraph.training import build_config
from tests.conftest import REPO, run_cli

CLI = ("cli.py", "cli_flags.py", "commands.py", "__main__.py")  # the command line names its flags; the library not
LIBRARY = [p for p in (REPO / "src" / "branchgraph").rglob("*.py") if p.name not in CLI]


def _raised_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal inside a ``raise`` statement of ``path``."""
    found = []
    tree = ast.parse(path.read_text())
    hints = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets
             if isinstance(t, ast.Name) and t.id.isupper()}  # module constants spliced into messages
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) or (isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id in hints for t in node.targets)):
            found += [(node.lineno, c.value) for c in ast.walk(node)
                      if isinstance(c, ast.Constant) and isinstance(c.value, str)]
    return found


def test_no_library_error_names_a_flag() -> None:
    offenders = [f"{p.relative_to(REPO)}:{line}: {text!r}" for p in LIBRARY for line, text in _raised_strings(p)
                 if re.search(r"(?<![\w-])--[a-z]", text)]
    assert not offenders, "\n".join(offenders)


def test_the_cli_turns_the_parameter_into_its_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^lr must be > 0") as error:
        build_config("fast", overrides={"lr": -1.0})
    assert error.value.param == "lr"
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"lr": -1.0, "batch_size": 0}))
    r = run_cli("train", "--config", str(settings), "--out-dir", str(tmp_path / "runs"))
    assert r.returncode == 2 and "error: --batch-size must be > 0; got 0" in r.stderr, r.stderr
    r = run_cli("summary", "x.py:build")
    assert r.returncode == 2 and "no file x.py" in r.stderr
