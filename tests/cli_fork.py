"""The CLI in a fresh process without its 2-3 s of imports: a fork server that imported ``branchgraph.cli`` once
forks one child per command, which runs it with its own arguments, environment, folder and output files."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

_context: multiprocessing.context.ForkServerContext | None = None


def _child(args: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """What ``python -m branchgraph.cli ARGS`` does, in a forked child: output to the files, exit with the code."""
    from branchgraph.cli import main

    for path, fd in ((out, 1), (err, 2)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_TRUNC), fd)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [sys.argv[0], *args]
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:  # as the interpreter does: the traceback on stderr, exit 1
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the CLI with ``args`` in a child of the fork server (started on first use) and capture its output."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["branchgraph.cli", __name__])
    with tempfile.TemporaryDirectory() as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        out.touch()
        err.touch()
        child = _context.Process(target=_child, args=(list(args), env, str(cwd), str(out), str(err)))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(["branchgraph", *args], timeout, out.read_text(), err.read_text())
        return subprocess.CompletedProcess(["branchgraph", *args], child.exitcode, out.read_text(), err.read_text())
