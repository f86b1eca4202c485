"""Where tuning measurements are remembered: ``tune.json`` in the user's cache directory, one entry per
(processor, torch, model, input shape, mode, candidates), each with its medians, per-round spread and date. Writers
merge their entry into the file under an exclusive lock, so tuners running at once keep each other's entries."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: entries written at the same moment may overwrite each other
    fcntl = None  # type: ignore[assignment]

CACHE_FORMAT = 2
CACHE_NAME = "tune.json"


def cache_dir() -> Path:
    """``$BRANCHGRAPH_CACHE_DIR``, else ``$XDG_CACHE_HOME/branchgraph``, else ``~/.cache/branchgraph``."""
    explicit = os.environ.get("BRANCHGRAPH_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "branchgraph"


def load_cache(path: Path) -> tuple[dict[str, Any], str | None]:
    """The cache's entries, and a note when the file was unreadable or malformed (it is set aside, never trusted,
    and rebuilt). A cache an older branchgraph wrote (an earlier format, without per-round spreads) is re-measured."""
    if not path.exists():
        return {}, None
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("format"), int) and data["format"] < CACHE_FORMAT:
            return {}, f"tuning cache {path} is from an older branchgraph (no per-round spread): measured again"
        if not (isinstance(data, dict) and data.get("format") == CACHE_FORMAT
                and isinstance(data.get("entries"), dict)):
            raise ValueError(f"not a branchgraph tuning cache of format {CACHE_FORMAT}")
        return data["entries"], None
    except (OSError, ValueError) as exc:
        aside = path.with_name(path.name + ".corrupt")
        try:
            path.replace(aside)
        except OSError:
            aside = path
        return {}, f"tuning cache {path} was unreadable ({str(exc).splitlines()[0][:80]}); kept as {aside}, rebuilt"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s lock file (``tune.json.lock``) for the block."""
    if fcntl is None:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update_cache(path: Path, digest: str, entry: dict[str, Any]) -> str | None:
    """Add ``entry`` under ``digest``: read what is there now, merge and replace atomically (a temporary file, then
    rename), all under the lock; a note instead of an error when it cannot."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            entries, _ = load_cache(path)
            entries[digest] = entry
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=1, sort_keys=True) + "\n")
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    except OSError as exc:
        return f"could not write the tuning cache {path} ({exc.strerror}); the choice is not remembered"
    return None
