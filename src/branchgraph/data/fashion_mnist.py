"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` IDX files: loading, splits, preprocessing."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from branchgraph.data.idx import read_idx
from branchgraph.errors import DataError

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_ENV = "BRANCHGRAPH_DATA"
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Per-pixel statistics of the 60,000 training images (scaled to [0, 1]).
MEAN, STD = 0.2860, 0.3530
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
INSTALL_HINT = (
    "install it with 'sudo apt-get update && sudo apt-get install dataset-fashion-mnist', "
    f"or point data_dir or ${DATA_ENV} at a folder holding the four IDX files"
)


@dataclass
class Split:
    """Images (N x C x H x W: uint8, or float for data given as floats) and labels (N, int64) of one split."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor | slice) -> Split:
        """The samples at ``index``."""
        return Split(self.images[index], self.labels[index])


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """``data_dir`` if given, else ``$BRANCHGRAPH_DATA``, else Debian's install location."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else DEFAULT_DATA_DIR


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"Fashion-MNIST file {stem}.gz not found in {folder}; {INSTALL_HINT}", "data_dir")


def load_split(name: str, data_dir: str | Path | None = None) -> Split:
    """Read and validate the ``train`` or ``test`` split (magic numbers, dimensions, counts, labels)."""
    folder = resolve_data_dir(data_dir)
    if not folder.is_dir():
        raise DataError(f"Fashion-MNIST folder {folder} does not exist; {INSTALL_HINT}", "data_dir")
    image_stem, label_stem, count = FILES[name]
    image_path, label_path = _find(folder, image_stem), _find(folder, label_stem)
    images = read_idx(image_path, ndim=3)
    labels = read_idx(label_path, ndim=1)
    if images.shape != (count, 28, 28):
        raise DataError(f"{image_path}: shape {images.shape}, expected ({count}, 28, 28); reinstall the dataset")
    if labels.shape != (count,):
        raise DataError(f"{label_path}: {labels.shape[0]} labels, expected {count}; reinstall the dataset")
    if labels.max(initial=0) >= len(CLASSES):
        raise DataError(f"{label_path}: label {int(labels.max())} out of range 0..9; reinstall the dataset")
    return Split(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
    )


def load_fashion_mnist(
    data_dir: str | Path | None = None, val_size: int = 0, limit: int | None = None
) -> dict[str, Split]:
    """Train/val/test splits; val is a fixed (seed-independent) random subset of the training set.

    ``limit`` caps every split to its first ``limit`` samples, for quick runs and tests.
    """
    train, test = load_split("train", data_dir), load_split("test", data_dir)
    if not 0 <= val_size < len(train):
        raise DataError(f"val_size must be in [0, {len(train)}), got {val_size}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    splits = {"train": train.subset(order[val_size:]), "test": test}
    if val_size:
        splits["val"] = train.subset(order[:val_size])
    if limit is not None:
        if limit <= 0:
            raise DataError(f"limit must be a positive number of samples, got {limit}", "limit")
        splits = {k: v.subset(slice(0, limit)) for k, v in splits.items()}
    return splits


@dataclass(frozen=True)
class Preprocess:
    """uint8 batch -> float batch: optional augmentation, resize (bilinear) and normalisation."""

    resize: int | None = None
    normalize: bool = True
    crop_padding: int = 0
    hflip: bool = False
    erase: float = 0.0  # random erasing: probability per image of zeroing one random rectangle (after normalising)
    mean: tuple[float, ...] = (MEAN,)  # per channel, of the training images in [0, 1]
    std: tuple[float, ...] = (STD,)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Preprocess a batch (uint8 images are scaled to [0, 1], float ones taken as they are); augmentation is
        applied only when ``generator`` is given (training)."""
        x = unit_scale(images)
        if generator is not None and self.crop_padding:
            x = random_crop(x, self.crop_padding, generator)
        if generator is not None and self.hflip:
            flip = torch.rand(len(x), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.resize is not None and self.resize != x.shape[-1]:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        if self.normalize:
            x = (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]
        if generator is not None and self.erase:
            x = random_erase(x, self.erase, generator)
        return x


def unit_scale(images: torch.Tensor) -> torch.Tensor:
    """Images as float: uint8 ones scaled to [0, 1], float ones taken as they are (a copy either way)."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def random_erase(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Zero one rectangle per image with probability ``p`` (Zhong et al. 2020: 2-33 % of the area, aspect ratio
    0.3-3.3; zero is the mean once normalised), all images of the batch at once."""
    n, _, h, w = x.shape
    area = torch.empty(n).uniform_(0.02, 0.33, generator=generator) * h * w
    aspect = torch.exp(torch.empty(n).uniform_(math.log(0.3), math.log(1 / 0.3), generator=generator))
    eh = (area * aspect).sqrt().round().clamp(1, h)
    ew = (area / aspect).sqrt().round().clamp(1, w)
    top = (torch.rand(n, generator=generator) * (h - eh + 1)).floor()
    left = (torch.rand(n, generator=generator) * (w - ew + 1)).floor()
    rows, cols = torch.arange(h), torch.arange(w)
    inside = (((rows[None] >= top[:, None]) & (rows[None] < (top + eh)[:, None]))[:, :, None]
              & ((cols[None] >= left[:, None]) & (cols[None] < (left + ew)[:, None]))[:, None, :])
    chosen = torch.rand(n, generator=generator) < p
    return x.masked_fill((inside & chosen[:, None, None])[:, None], 0.0)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and take a random crop of the original size per sample."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, x.shape[1], h, w + 2 * padding)
    cropped = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, x.shape[1], h, w)
    return cropped.gather(3, cols)


class BatchLoader:
    """Deterministic in-memory batches: the order and the augmentation of epoch ``e``, step ``s``
    depend only on (seed, e, s), so resuming mid-run or sharding over DDP ranks reproduces them.

    Each rank preprocesses the global batch with the shared generator and keeps its own slice, so
    N ranks with batch B/N see exactly what one process with batch B sees.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        preprocess: Preprocess,
        *,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise DataError(f"batch size {batch_size} is not divisible by the {world_size} processes")
        self.split, self.batch_size, self.preprocess = split, batch_size, preprocess
        self.train, self.seed, self.rank, self.world_size = train, seed, rank, world_size
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.split)
        if self.train and self.world_size > 1:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def batches(self, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x, y) for this rank from ``start_step`` on."""
        n = len(self.split)
        if self.train:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(n)
        for step in range(start_step, len(self)):
            index = order[step * self.batch_size:(step + 1) * self.batch_size]
            generator = None
            if self.train:
                generator = torch.Generator().manual_seed(
                    ((self.seed * 1_000_003 + self.epoch) * 1_000_003 + step) % 2**63
                )
            x = self.preprocess(self.split.images[index], generator)
            y = self.split.labels[index]
            if self.world_size > 1:
                part = slice(self.rank * len(y) // self.world_size, (self.rank + 1) * len(y) // self.world_size)
                x, y = x[part], y[part]
            yield x, y
