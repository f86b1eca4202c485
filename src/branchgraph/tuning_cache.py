"""Where tuning measurements are remembered: ``tune.json`` in the user's cache directory, one entry per
(processor, torch, model, input shape, mode, candidates), each with its medians, per-round spread and date."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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


def write_cache(path: Path, entries: dict[str, Any]) -> str | None:
    """Write atomically (temporary file, then rename); a note instead of an error when it cannot."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
    except OSError as exc:
        return f"could not write the tuning cache {path} ({exc.strerror}); the choice is not remembered"
    return None
