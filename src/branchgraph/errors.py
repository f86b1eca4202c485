"""User-facing errors: the CLI prints them as one line and exits 2."""


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
