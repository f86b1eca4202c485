"""A user's image classification data in memory: an image folder (``DIR/train/<class>/*.png``, ``val/``, ``test/``)
or datasets and DataLoaders yielding ``(image, label)``, as the uint8 or float Splits the trainer batches."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from branchgraph.data.fashion_mnist import CLASSES, MEAN, STD, Split, load_fashion_mnist, unit_scale
from branchgraph.errors import DataError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
STATS_SAMPLES = 10_000  # images the per-channel mean and deviation are computed on, at most
FASHION_MNIST = "fashion-mnist"


@dataclass
class ImageData:
    """Splits of one dataset with its class names and per-channel statistics (for normalising inputs)."""

    splits: dict[str, Split]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str

    @property
    def image_size(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images."""
        c, h, w = self.splits["train"].images.shape[1:]
        return int(c), int(h), int(w)


def fashion_mnist(data_dir: str | Path | None, val_size: int, limit: int | None) -> ImageData:
    """Fashion-MNIST from its IDX files, with the training set's published statistics."""
    return ImageData(load_fashion_mnist(data_dir, val_size, limit), CLASSES, (MEAN,), (STD,), FASHION_MNIST)


def image_folder(root: str | Path, val_size: int | None, limit: int | None) -> ImageData:
    """``root/train/<class>/*`` (and ``val/``, ``test/`` alike; without ``val/``, ``val_size`` training images are
    held out, a tenth where None): grey images stay one channel, any other mode becomes RGB; every image is resized
    (bilinear) to the first training image's size."""
    root = Path(root)
    if not (root / "train").is_dir():
        raise DataError(f"image folder {root} has no train/ folder: lay it out as {root}/train/<class>/<image>, "
                        "with val/ and test/ alike", "data")
    classes = tuple(sorted(p.name for p in (root / "train").iterdir() if p.is_dir()))
    if not classes:
        raise DataError(f"{root}/train has no class folders: put each class's images in {root}/train/<class>/",
                        "data")
    files = {split: _files(root / split, classes) for split in SPLITS if (root / split).is_dir()}
    first = _open(files["train"][0][0])
    mode, size = ("L" if first.mode in ("1", "L", "I", "I;16", "F") else "RGB"), first.size
    splits = {split: _read(found, mode, size) for split, found in files.items()}
    splits = _hold_out(splits, val_size)
    return _with_stats(_limited(splits, limit), classes, str(root))


def _files(folder: Path, classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    """(image file, class index) of every image in ``folder/<class>/``, in a fixed order."""
    unknown = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        raise DataError(f"{folder} has class folders that train/ does not: {', '.join(unknown[:5])}", "data")
    found = [(p, k) for k, name in enumerate(classes) if (folder / name).is_dir()
             for p in sorted((folder / name).iterdir()) if p.suffix.lower() in SUFFIXES]
    if not found:
        raise DataError(f"{folder} holds no images ({', '.join(SUFFIXES)}) in its class folders", "data")
    return found


def _open(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image {path} ({exc}): remove or replace it", "data") from None


def _read(found: list[tuple[Path, int]], mode: str, size: tuple[int, int]) -> Split:
    """The images as one uint8 N x C x H x W tensor, and their labels."""
    from PIL import Image

    arrays = []
    for path, _ in found:
        image = _open(path).convert(mode)
        if image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.uint8))
    images = torch.from_numpy(np.stack(arrays))
    images = images[:, None] if images.dim() == 3 else images.permute(0, 3, 1, 2)
    return Split(images.contiguous(), torch.tensor([k for _, k in found], dtype=torch.long))


def _hold_out(splits: dict[str, Split], val_size: int | None) -> dict[str, Split]:
    """Without a val split, ``val_size`` training samples (a fixed random choice; None: a tenth) become one."""
    if val_size is None:
        val_size = max(1, len(splits["train"]) // 10)
    if "val" in splits or val_size <= 0:
        return splits
    train = splits["train"]
    if val_size >= len(train):
        raise DataError(f"val_size {val_size} leaves no training samples of {len(train)}: lower it, or add a "
                        "val split", "val_size")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    return {**splits, "train": train.subset(order[val_size:]), "val": train.subset(order[:val_size])}


def _limited(splits: dict[str, Split], limit: int | None) -> dict[str, Split]:
    return splits if limit is None else {k: v.subset(slice(0, limit)) for k, v in splits.items()}


def _with_stats(splits: dict[str, Split], classes: tuple[str, ...], source: str) -> ImageData:
    """The data with the per-channel mean and deviation of (up to STATS_SAMPLES of) its training images, in the
    [0, 1] scale the trainer's preprocessing divides uint8 images into."""
    images = splits["train"].images[:STATS_SAMPLES]
    x = unit_scale(images)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return ImageData(splits, classes, tuple(mean.tolist()), tuple(std.tolist()), source)


def from_python(data: Any, val_size: int | None, limit: int | None, source: str = "datasets given in Python"
                ) -> ImageData:
    """``(train, val[, test])`` or ``{"train": ..., "val": ..., "test": ...}`` of datasets or DataLoaders yielding
    ``(image, label)`` (image: a C x H x W tensor, uint8 or float, an H x W[ x C] array or a PIL image), read
    once into memory; classes from the training set's ``classes`` attribute, else numbered."""
    parts = dict(zip(SPLITS, data, strict=False)) if isinstance(data, (tuple, list)) else data
    if not isinstance(parts, dict) or "train" not in parts or not set(parts) <= set(SPLITS):
        raise DataError("data must be (train, val[, test]) or a dict with train, val and test datasets or "
                        f"DataLoaders; got {type(data).__name__}", "data")
    splits = {name: _materialise(part, name) for name, part in parts.items() if part is not None}
    sizes = {name: tuple(s.images.shape[1:]) for name, s in splits.items()}
    if len(set(sizes.values())) > 1:
        raise DataError(f"the splits' images differ in size ({sizes}): give every split images of one size",
                        "data")
    train_set = getattr(parts["train"], "dataset", parts["train"])
    count = int(max(int(s.labels.max()) for s in splits.values())) + 1
    named = getattr(train_set, "classes", None)
    classes = tuple(map(str, named)) if isinstance(named, (list, tuple)) and len(named) >= count else tuple(
        str(k) for k in range(count))
    return _with_stats(_limited(_hold_out(splits, val_size), limit), classes, source)


def _materialise(part: Iterable[Any], name: str) -> Split:
    """Every ``(image, label)`` of a dataset, or every batch of a DataLoader, stacked."""
    from torch.utils.data import DataLoader

    images, labels = [], []
    try:
        for x, y in part:
            batch = isinstance(part, DataLoader)
            images.append(_tensor(x) if batch else _tensor(x)[None])
            labels.append(torch.as_tensor(y, dtype=torch.long).reshape(-1))
    except (TypeError, ValueError) as exc:
        raise DataError(f"the {name} data must yield (image, label) pairs: {exc}", "data") from None
    if not images:
        raise DataError(f"the {name} data is empty", "data")
    stacked = torch.cat(images)
    if stacked.dim() != 4:
        raise DataError(f"the {name} images must be C x H x W (got {list(stacked.shape[1:])})", "data")
    return Split(stacked if stacked.dtype == torch.uint8 else stacked.float(), torch.cat(labels))


def _tensor(x: Any) -> torch.Tensor:
    """An image (or batch) as a tensor: PIL images and H x W[ x C] arrays become uint8 C x H x W."""
    if isinstance(x, torch.Tensor):
        return x if x.dim() != 2 else x[None]
    array = np.asarray(x)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
