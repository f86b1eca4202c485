"""Memory budgets as users give them: a fraction of the plain model's saved bytes, or a size."""

from __future__ import annotations

import re

from branchgraph.errors import ConfigError

MIB = 2**20
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": MIB, "mb": MIB, "mib": MIB,
          "g": 2**30, "gb": 2**30, "gib": 2**30}


def parse_budget(text: str | float | int, what: str = "memory budget") -> float | int:
    """A budget as given by a user: a fraction in (0, 1] of the plain figure ("0.1"), or bytes ("300MiB", "2G",
    "500000000"). Raises ConfigError naming ``what`` and the accepted forms."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value: float = float(text)
        unit = ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([a-zA-Z]*)\s*", str(text))
        if not match or match.group(2).lower() not in _UNITS:
            raise ConfigError(f"{what} {text!r} is neither a fraction like 0.25 nor a size like 300MiB")
        value, unit = float(match.group(1)), match.group(2).lower()
    if unit:
        return int(value * _UNITS[unit])
    if 0 < value <= 1:
        return value
    if value > 1 and value == int(value):
        return int(value)
    raise ConfigError(f"{what} {text!r} must be a fraction in (0, 1] or a number of bytes")
