"""Reader for the IDX format of (Fashion-)MNIST, gzip-compressed or not, validating as it reads."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from branchgraph.errors import DataError

# Magic number: two zero bytes, the element type (0x08 = unsigned byte), the number of dimensions.
UBYTE = 0x08


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``ndim`` dimensions; any defect raises DataError naming the file."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc}); reinstall the dataset") from None
    if len(raw) < 4:
        raise DataError(f"{path}: only {len(raw)} bytes, too short for an IDX header; reinstall the dataset")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != UBYTE or raw[3] != ndim:
        raise DataError(
            f"{path}: bad IDX magic number {raw[:4].hex()} (expected 0000{UBYTE:02x}{ndim:02x}); "
            "not an unsigned-byte IDX file of the right kind"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header; reinstall the dataset")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(
            f"{path}: {len(raw)} bytes but the header's dimensions {dims} need {expected}; "
            "the file is truncated or corrupt, reinstall the dataset"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
