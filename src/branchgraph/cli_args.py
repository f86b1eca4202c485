"""Argument types of the command line: each turns one flag's text into a value or one line saying what it
expected."""

from __future__ import annotations

import argparse
import json
from typing import Any


def input_size(text: str) -> tuple[int, ...]:
    """'3,224,224' (or 3x224x224) -> (3, 224, 224): exactly three positive numbers."""
    try:
        size = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected channels,height,width such as 3,224,224, got {text!r}") from None
    if len(size) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers, channels,height,width such as 3,224,224, got "
                                         f"{text!r}")
    if any(s <= 0 for s in size):
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return size


def positive_ints(text: str) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32)."""
    return tuple(positive_int(part) for part in text.split(","))


def positive_int(text: str) -> int:
    """A whole number > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def nonnegative_float(text: str) -> float:
    """A number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, got {text}")
    return value


def positive_float(text: str) -> float:
    """A number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def json_object(text: str, flag: str) -> dict[str, Any]:
    """A JSON object given to ``flag``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{flag} is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{flag} must be a JSON object such as '{{\"width\": 0.5}}'")
    return value
