"""The CLI in a fresh process without its 2-3 s of imports: a server process imports ``branchgraph.cli`` once and
forks one child per command, which runs it with its own arguments, environment, folder and output files.

Run as a script, this is the server: it reads one JSON request per line on stdin and answers each on stdout with
the child's pid, then its exit status (negative: the signal that ended it), as ``subprocess`` reports them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import IO


def _run_child(request: dict) -> None:
    """What ``python -m branchgraph.cli ARGS`` does, in the forked child: output to the files, exit with the code."""
    from branchgraph.cli import main

    for path, fd in ((request["out"], 1), (request["err"], 2)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_TRUNC), fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["branchgraph", *request["args"]]
    try:
        code = main(request["args"])
    except SystemExit as exc:  # argparse's exit
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:  # as the interpreter does: the traceback on stderr, exit 1
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    """The server loop: fork per request, report pid and exit status."""
    import branchgraph.api
    import branchgraph.api_runs
    import branchgraph.cli
    import branchgraph.cli_flags  # noqa: F401  (imported once, here, for every child; the CLI imports these late)

    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:  # the child never returns to this loop, whatever fails before the CLI runs
                sys.stdin.close()
                _run_child(json.loads(line))
            finally:
                os._exit(1)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)


_server: subprocess.Popen[str] | None = None
_lock = threading.Lock()


def _reply(stream: IO[str]) -> dict:
    line = stream.readline()
    if not line:
        raise RuntimeError("the CLI fork server exited")
    return json.loads(line)


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the CLI with ``args`` in a child of the fork server (started on first use) and capture its output."""
    global _server
    with _lock, tempfile.TemporaryDirectory() as folder:
        if _server is None or _server.poll() is not None:
            _server = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, cwd=Path(__file__).resolve().parents[1])
        assert _server.stdin is not None and _server.stdout is not None
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        out.touch()
        err.touch()
        request = {"args": args, "env": env, "cwd": str(cwd), "out": str(out), "err": str(err)}
        _server.stdin.write(json.dumps(request) + "\n")
        _server.stdin.flush()
        pid = _reply(_server.stdout)["pid"]
        fired = threading.Event()

        def kill() -> None:
            fired.set()
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            status = _reply(_server.stdout)["status"]
        finally:
            timer.cancel()
        if fired.is_set():
            raise subprocess.TimeoutExpired(["branchgraph", *args], timeout, out.read_text(), err.read_text())
        return subprocess.CompletedProcess(["branchgraph", *args], status, out.read_text(), err.read_text())


if __name__ == "__main__":
    serve()
