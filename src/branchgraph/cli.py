"""``branchgraph`` command line: a thin layer over the Python API; every command has ``--json``."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from branchgraph.errors import BranchgraphError, Interrupted, out_of_memory

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
FLAGS = {"input_size": "--input"}  # library parameters whose flag is not their name with dashes
COMMANDS = {  # name -> what it does (its flags: branchgraph.cli_flags)
    "models": "list the registered models",
    "train": "train on Fashion-MNIST or your own data (--data)",
    "summary": "params, MACs, shapes and measured saved-for-backward bytes per module/branch",
    "compare": "two models side by side with ratios",
    "graph": "draw the computation graph (.svg, .dot or self-contained .html)",
    "report": "one interactive HTML page: summary, graph with collapsible blocks coloured by MACs, saved bytes or "
              "time, a checkpoint plan and branch gradient shares",
    "optimize": "apply verified graph passes (and optionally export ONNX)",
    "prune": "prune channels of a trained run by magnitude (lossy), then fine-tune",
    "bench": "time eager, torch.compile, optimised and optimised+compiled, interleaved",
    "bench-parallel": "the model's branches run one after another vs concurrently (the parallel pass), interleaved, "
                      "at each batch size",
    "memory": "plan activation checkpointing under a memory budget (and measure it)",
    "branches": "how each block's branches share the gradient at its fork (float64)",
    "eval": "evaluate a trained run's checkpoint",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (exit 2) instead of usage plus message (and as JSON on stdout
    when ``--json`` was given)."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            flag = re.match(r"argument (-[-\w]+)", message)
            print(json.dumps({"error": message, "param": flag.group(1) if flag else None}))
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _version() -> str:
    """The installed distribution's version (the package's own where it runs from a source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("branchgraph")
    except PackageNotFoundError:
        from branchgraph import __version__

        return __version__


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command-line interface: every command's flags, or (``command``) that command's only; the others are
    listed with what they do, and torch is not imported for them."""
    parser = _Parser(prog="branchgraph", description="Understand, optimise and train multi-branch networks.")
    parser.add_argument("--version", action="version", version=f"branchgraph {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    chosen = {}
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        if command is None or command == name:
            chosen[name] = p
    if chosen:
        from branchgraph.cli_flags import add_flags

        add_flags(chosen)
    return parser


def reference() -> str:
    """Every command's ``--help``, as the Markdown page of the documentation (``make docs`` writes it)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps help at the terminal's width: the page is the same everywhere
    try:
        texts = [parser.format_help(), *(p.format_help() for p in sub.choices.values())]
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    head = ("# Command line\n\nEvery command with its flags, as `branchgraph COMMAND --help` prints them (generated "
            "from the parser).\nDefaults shared with the Python API are in the [API reference](api.md).\n")
    pages = [f"## `branchgraph{' ' + name if name else ''}`\n\n```text\n{text.strip()}\n```\n"
             for name, text in zip(["", *sub.choices], texts, strict=True)]
    return "\n".join([head, *pages])


def _fail(as_json: bool, exc: BranchgraphError) -> int:
    """Print a user error as one line (and, with ``--json``, as ``{"error", "param"}`` on stdout); exit code 2."""
    message = str(exc).strip().splitlines()
    text, flag = message[0] if message else type(exc).__name__, None
    if exc.param:  # the library names its parameter; the user typed a flag
        flag = FLAGS.get(exc.param, "--" + exc.param.replace("_", "-"))
        text = re.sub(rf"\b{re.escape(exc.param)}\b", flag, text, count=1)
    if as_json:
        print(json.dumps({"error": text, "param": flag}))
    print(f"branchgraph: error: {text}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: user errors (out of memory included) print one line on stderr and exit 2, never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _Parser.json_errors = "--json" in argv
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(command if command in COMMANDS else "").parse_args(argv)
    try:
        return int(args.func(args))
    except BranchgraphError as exc:
        return _fail(args.json, exc)
    except (MemoryError, RuntimeError) as exc:  # an allocation that failed where no layer was running
        oom = out_of_memory(exc)
        if oom is None:
            raise
        return _fail(args.json, oom)
    except Interrupted as exc:
        print(f"branchgraph: {exc}: continue with 'branchgraph train --resume {exc.run_dir}'", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("branchgraph: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
