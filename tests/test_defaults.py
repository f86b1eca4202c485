"""One table of defaults: the Python API's signatures, the CLI's flags and the docs all show ``choices.DEFAULTS``;
modes and precisions parse as enums, with one line naming the choices otherwise."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import pytest

import branchgraph as bg
from branchgraph.choices import COMMANDS, DEFAULTS, Mode, Precision, defaults_table, mode, precision
from branchgraph.cli import build_parser
from branchgraph.errors import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _subparser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize("function", list(DEFAULTS))
def test_api_and_cli_take_their_defaults_from_the_table(function: str) -> None:
    parameters = inspect.signature(getattr(bg, function)).parameters
    parser = _subparser(COMMANDS.get(function, function))
    flags = {a.dest: a for a in parser._actions}
    for name, value in DEFAULTS[function].items():
        assert parameters[name].default == value, f"bg.{function}({name}=...)"
        assert flags[name].default == value, f"{COMMANDS.get(function, function)} --{name}"
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        assert f"default {shown}" in flags[name].help % {"default": flags[name].default}


def test_the_docs_show_the_table() -> None:
    assert defaults_table() in (DOCS / "reference" / "api.md").read_text()


def test_modes_and_precisions_are_string_enums_with_one_line_errors() -> None:
    assert mode("eval") is Mode.EVAL and Mode.TRAIN == "train" and f"{Mode.EVAL}" == "eval"
    assert precision("bf16") is Precision.BF16 and str(Precision.FP32) == "fp32"
    with pytest.raises(ConfigError, match=r"^mode must be one of train, eval; got 'inference'$"):
        mode("inference")
    with pytest.raises(ConfigError, match=r"precision must be one of fp32, bf16, fp16; got 'auto'") as error:
        precision("auto", ("fp32", "bf16", "fp16"))
    assert error.value.param == "precision"
    with pytest.raises(ConfigError, match="no dtype"):
        _ = Precision.AUTO.dtype
