"""Numbers as the tables and pictures print them."""

from __future__ import annotations


def fmt_count(n: float) -> str:
    """12345678 -> '12.35M'; small numbers as they are."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{int(n)}"


def fmt_bytes(n: float | None) -> str:
    """Bytes in binary units: '782.02 MiB'."""
    if n is None:
        return "n/a"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def shape_text(shape: list[int] | None) -> str:
    """[1, 64, 56, 56], or - for no shape."""
    return "[" + ", ".join(map(str, shape)) + "]" if shape else "-"
