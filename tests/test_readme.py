"""The README's examples stay true: its Python runs, its command lines parse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from branchgraph.cli import build_parser
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_python_examples_run(data_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = _blocks("python")
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def test_command_lines_parse() -> None:
    lines = [line.split("#")[0].strip() for block in _blocks("sh") for line in block.splitlines()]
    commands = [shlex.split(line) for line in lines if line.startswith(("branchgraph ", "torchrun "))]
    assert len(commands) >= 6
    parser = build_parser()
    for words in commands:
        args = words[words.index("branchgraph.cli") + 1:] if words[0] == "torchrun" else words[1:]
        parser.parse_args(args)
