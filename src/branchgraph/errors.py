"""User-facing errors: the CLI prints them as one line and exits 2."""

from __future__ import annotations

import re

# how an allocation failure reads: torch's CPU allocator, CUDA's, and the C library's
OUT_OF_MEMORY = ("can't allocate memory", "not enough memory", "out of memory", "Cannot allocate memory")


class BranchgraphError(Exception):
    """A problem the user can fix (bad input, data, config or checkpoint); the message says how.

    ``param`` names the parameter or setting at fault, as the message's first mention of it spells it; the CLI
    turns that mention into its flag (``lr`` -> ``--lr``), the library never names flags."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class DataError(BranchgraphError):
    """Missing, truncated or corrupt dataset files."""


class ConfigError(BranchgraphError):
    """An invalid model or training configuration."""


class CheckpointError(BranchgraphError):
    """A checkpoint or run directory that cannot be read."""


class TrainingDiverged(BranchgraphError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(Exception):
    """Ctrl-C during training; a checkpoint of the exact position was written first."""

    def __init__(self, run_dir: object, epoch: int, step: int) -> None:
        super().__init__(
            f"interrupted at epoch {epoch + 1} step {step}; checkpoint saved in {run_dir}, training resumes from it"
        )
        self.run_dir = run_dir


class OutOfMemory(BranchgraphError):
    """An allocation failed: the batch or the input is too large for this machine's memory."""


def out_of_memory(exc: BaseException, during: str = "") -> OutOfMemory | None:
    """``exc`` as one OutOfMemory line naming the size that could not be allocated (``during``: what ran), or
    None when it is not an allocation failure."""
    text = str(exc)
    if not (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or any(marker in text for marker in OUT_OF_MEMORY)):
        return None
    found = re.search(r"[Tt]ried to allocate (\d+) bytes|[Tt]ried to allocate ([\d.]+ [KMGT]iB)", text)
    size = "memory" if not found else found.group(2) or f"{int(found.group(1)) / 2**30:.2f} GiB"
    return OutOfMemory(f"out of memory{during}: allocating {size} failed; lower the batch size or the input size, "
                       "or free memory on this machine")


def raise_if_out_of_memory(exc: BaseException, during: str = "") -> None:
    """Raise ``exc`` as one OutOfMemory line when it is an allocation failure (see ``out_of_memory``)."""
    oom = out_of_memory(exc, during)
    if oom is not None:
        raise oom from None
