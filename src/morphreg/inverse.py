"""Inverting a displacement field by fixed-point iteration.

For ``phi(x) = x + u(x)`` the inverse ``psi(y) = y + v(y)`` satisfies ``v(y) = -u(y + v(y))``
(since ``phi(psi(y)) = y``). Iterating ``v <- -u(y + v)`` converges where ``phi`` is a contraction
perturbation of the identity (``|grad u| < 1``, i.e. no folding); the residual
``|v + u(y + v)|`` measures how far the result is from an exact inverse and is reported.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import spatial
from ._checks import check_positive_int


class InverseResult(NamedTuple):
    """A field inverse and how well it inverts.

    Attributes:
        inverse_disp: ``(B, ndim, *spatial)`` displacement in voxels of the inverse transform.
        residual_max: largest ``|v(y) + u(y + v(y))|`` over the grid, in voxels.
        residual_mean: mean of that residual, in voxels.
        iterations: fixed-point iterations run.
    """

    inverse_disp: torch.Tensor
    residual_max: float
    residual_mean: float
    iterations: int


def _residual(disp: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``(B, *spatial)`` norm of ``v + u(y + v)`` in voxels."""
    return (inverse + spatial.warp(disp, inverse)).norm(dim=1)


def invert_disp(disp: torch.Tensor, iterations: int = 50, tolerance: float = 1e-3) -> InverseResult:
    """Fixed-point inverse of a displacement field (voxels, pull-back convention).

    Args:
        disp: ``(B, ndim, *spatial)`` displacement ``u`` in voxels.
        iterations: at most this many iterations of ``v <- -u(y + v)``.
        tolerance: stop once the largest residual is below this many voxels.

    Returns:
        :class:`InverseResult`; near the border, where ``y + v`` leaves the grid, ``u`` is
        extended by its border values.
    """
    fn = "morphreg.inverse.invert_disp"
    check_positive_int(fn, "iterations", iterations)
    disp = disp.float()
    inverse = -disp
    done = 0
    for done in range(1, iterations + 1):  # noqa: B007 - the count is returned
        inverse = -spatial.warp(disp, inverse)
        if float(_residual(disp, inverse).max()) < tolerance:
            break
    residual = _residual(disp, inverse)
    return InverseResult(inverse, float(residual.max()), float(residual.mean()), done)
