"""The random example batch every analysis, benchmark and plan runs on: one seeded helper, the global RNG untouched."""

from __future__ import annotations

import torch


def example_for(
    input_size: tuple[int, ...], batch: int, seed: int = 0, classes: int | None = None,
    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random input batch of ``input_size`` and class targets in [0, classes) (zeros without classes), drawn
    from a generator seeded with ``seed``: the same batch on every call, the global RNG untouched."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *input_size), generator=generator, dtype=dtype)
    y = torch.randint(0, classes or 1, (batch,), generator=generator)
    return x.to(device), y.to(device)
