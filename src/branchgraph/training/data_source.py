"""Which data a run trains on: Fashion-MNIST, an image folder, a ``pkg.mod:factory`` / ``file.py:factory`` returning
``(train, val[, test])`` datasets, or datasets and DataLoaders handed over in Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from branchgraph.data.images import FASHION_MNIST, ImageData, fashion_mnist, from_python, image_folder
from branchgraph.errors import ConfigError, DataError
from branchgraph.models.spec import is_spec, load_attribute
from branchgraph.training.config import TrainConfig

DEFAULT_VAL_SIZE = TrainConfig.val_size  # the training default: Fashion-MNIST's held-out images
IN_PYTHON = "datasets given in Python"  # what a run's settings record for data handed over as objects


def is_code(data: str) -> bool:
    """Whether a run's ``data`` names Python code (a factory spec) rather than a dataset or folder."""
    return is_spec(data) and not Path(data).is_dir()


def training_data(config: TrainConfig, data: Any = None, limit: int | None = None) -> ImageData:
    """The splits ``config.data`` names (``data``: datasets or DataLoaders given in Python instead; a string: the
    spec or folder to use), the first ``limit`` samples of each (default: the run's limit)."""
    limit = config.limit if limit is None else limit
    # Fashion-MNIST's 5,000 held-out images are the default's; other data without a val split holds out a tenth
    val_size = None if config.val_size == DEFAULT_VAL_SIZE else config.val_size
    if data is not None and not isinstance(data, str):
        return from_python(data, val_size, limit)
    source = data or config.data
    if source == FASHION_MNIST:
        return fashion_mnist(config.data_dir, config.val_size, limit)
    if source == IN_PYTHON:
        raise ConfigError("this run trained on datasets given in Python: give them again (data=)", "data")
    if Path(source).is_dir():
        return image_folder(source, val_size, limit)
    if not is_spec(source):
        raise DataError(f"data {source!r} is neither {FASHION_MNIST}, an image folder (DIR/train/<class>/...) nor "
                        "a factory (package.module:factory or path/to/file.py:factory)", "data")
    factory = load_attribute(source, "data")
    try:
        made = factory() if callable(factory) else factory
    except Exception as exc:
        raise ConfigError(f"data spec {source!r} raised {type(exc).__name__}: {exc}", "data") from None
    return from_python(made, val_size, limit, source=source)


def data_label(data: Any, config_data: str) -> str:
    """What a run's settings record as its data: the spec or folder, or that it was given in Python."""
    if data is None:
        return config_data
    return data if isinstance(data, str) else IN_PYTHON
