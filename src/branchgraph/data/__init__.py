"""Datasets: the IDX reader and Fashion-MNIST."""

from branchgraph.data.fashion_mnist import (
    CLASSES,
    BatchLoader,
    Preprocess,
    Split,
    load_fashion_mnist,
    load_split,
    resolve_data_dir,
)
from branchgraph.data.idx import read_idx

__all__ = [
    "CLASSES", "BatchLoader", "Preprocess", "Split", "load_fashion_mnist", "load_split",
    "read_idx", "resolve_data_dir",
]
