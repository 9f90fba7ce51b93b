"""A global similarity scored on random points instead of every voxel (as ANTs' random metric
sampling): global NCC, MI and MSE depend only on the joint distribution of the intensities,
which a few ten thousand points estimate; a 3D image has millions of voxels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import spatial
from ._common import LossFn

__all__ = ["SAMPLED_LOSSES", "SampledLoss"]

#: Similarities that random points estimate (local NCC needs whole neighbourhoods: never sampled).
SAMPLED_LOSSES = ("gncc", "mi", "mse")


class SampledLoss:
    """``similarity(moving at M x, fixed at x)`` over ``samples`` random points ``x`` of the fixed
    grid, drawn afresh at every call from a seeded generator (repeatable): a stochastic estimate
    of the whole-image loss whose noise averages out over the iterations.

    Args:
        matrix: returns the voxel matrix ``M`` ``(B, n + 1, n + 1)`` (fixed voxel -> moving voxel,
            differentiable in the parameters being optimised).
        moving: ``(B, C, *spatial_m)``; sampled with border padding.
        fixed: ``(B, C, *spatial)``.
        similarity: ``(moved, fixed) -> scalar`` on ``(B, C, P, 1)`` tensors.
        samples: points per call.
        seed: seed of the points.
    """

    def __init__(
        self,
        matrix: Callable[[], torch.Tensor],
        moving: torch.Tensor,
        fixed: torch.Tensor,
        similarity: LossFn,
        samples: int,
        seed: int = 0,
    ) -> None:
        self.matrix, self.moving, self.fixed, self.similarity = matrix, moving, fixed, similarity
        self.samples = samples
        self.extent = torch.tensor([s - 1 for s in fixed.shape[2:]], dtype=fixed.dtype, device=fixed.device)
        self.generator = torch.Generator(device=fixed.device).manual_seed(seed)

    def __call__(self) -> torch.Tensor:
        n = self.fixed.dim() - 2
        unit = torch.rand(n, self.samples, generator=self.generator, device=self.fixed.device,
                          dtype=self.fixed.dtype)
        points = unit * self.extent.view(n, 1)  # (n, P) fixed voxel coordinates
        fixed_values = spatial.sample(self.fixed, points.unsqueeze(0))  # (B, C, P)
        matrix = self.matrix()
        moved = spatial.sample(self.moving, matrix[:, :n, :n] @ points + matrix[:, :n, n:])
        return self.similarity(moved.unsqueeze(-1), fixed_values.unsqueeze(-1))
