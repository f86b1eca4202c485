"""Preprocessing and the deterministic batch loader."""

from __future__ import annotations

import torch

from branchgraph.data import BatchLoader, Preprocess, Split
from branchgraph.data.fashion_mnist import MEAN, STD


def _split(n: int = 40) -> Split:
    g = torch.Generator().manual_seed(1)
    return Split(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g), torch.arange(n) % 10)


def test_preprocess_resize_and_normalise() -> None:
    images = torch.full((3, 1, 28, 28), 255, dtype=torch.uint8)
    out = Preprocess(resize=96)(images)
    assert out.shape == (3, 1, 96, 96)
    torch.testing.assert_close(out, torch.full_like(out, (1 - MEAN) / STD))
    raw = Preprocess(normalize=False)(images)
    assert raw.max().item() == 1.0


def test_augmentation_only_with_a_generator() -> None:
    images = _split(8).images
    plain = Preprocess(crop_padding=2, hflip=True)
    assert torch.equal(plain(images), Preprocess()(images))
    a = plain(images, torch.Generator().manual_seed(3))
    b = plain(images, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (8, 1, 28, 28) and not torch.equal(a, Preprocess()(images))


def test_random_crop_is_a_shift() -> None:
    """With zero padding p, each crop equals the image shifted by at most p pixels."""
    images = _split(16).images
    out = Preprocess(crop_padding=2, normalize=False)(images, torch.Generator().manual_seed(0)).mul(255).round()
    padded = torch.nn.functional.pad(images.float(), (2, 2, 2, 2))
    for i in range(16):
        assert any(torch.equal(out[i], padded[i, :, dy:dy + 28, dx:dx + 28]) for dy in range(5) for dx in range(5))


def test_loader_order_depends_only_on_seed_and_epoch() -> None:
    split = _split()
    loader = BatchLoader(split, 8, Preprocess(), train=True, seed=5)
    loader.epoch = 2
    full = list(loader.batches())
    assert len(full) == 5
    resumed = list(loader.batches(start_step=3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[3:], resumed, strict=True))
    assert sorted(torch.cat([y for _, y in full]).tolist()) == sorted(split.labels.tolist())
    loader.epoch = 3
    assert not torch.equal(torch.cat([y for _, y in loader.batches()]), torch.cat([y for _, y in full]))


def test_ranks_together_see_the_global_batch() -> None:
    split = _split()
    pre = Preprocess(crop_padding=2, hflip=True)
    single = list(BatchLoader(split, 8, pre, train=True, seed=1, world_size=1).batches())
    parts = [list(BatchLoader(split, 8, pre, train=True, seed=1, rank=r, world_size=2).batches()) for r in (0, 1)]
    for step, (x, y) in enumerate(single):
        torch.testing.assert_close(torch.cat([parts[0][step][0], parts[1][step][0]]), x, rtol=0, atol=0)
        assert torch.equal(torch.cat([parts[0][step][1], parts[1][step][1]]), y)
