"""Synthetic test images shared by the test modules."""

from __future__ import annotations

import torch


def smooth_image(shape, seed=0, dtype=torch.float32):
    """A smooth, asymmetric (B=1, C=1, *shape) image: a sum of random Gaussian blobs."""
    gen = torch.Generator().manual_seed(seed)
    ndim = len(shape)
    coords = torch.stack(
        torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij")
    )
    image = torch.zeros(shape, dtype=torch.float64)
    for _ in range(6):
        centre = torch.rand(ndim, generator=gen, dtype=torch.float64) * torch.tensor(shape)
        width = 2.0 + torch.rand(1, generator=gen, dtype=torch.float64).item() * min(shape) / 4
        dist2 = ((coords - centre.view(ndim, *[1] * ndim)) ** 2).sum(0)
        image += torch.rand(1, generator=gen, dtype=torch.float64) * torch.exp(-dist2 / (2 * width**2))
    return image.to(dtype)[None, None]
