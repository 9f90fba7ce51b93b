"""Image moments: centres of mass and principal axes, and the moment-based initial transforms.

Used by :mod:`morphreg.optimize.affine` (``init="moments"`` / ``"com"``); frames and matrices
follow :mod:`morphreg.geometry`.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_image
from ..geometry import Frames, identity_matrix, transform_points

__all__ = ["centre_of_mass", "initial_transforms"]



def _voxel_moments(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intensity-weighted centroid ``(B, n)`` and covariance ``(B, n, n)`` in voxel indices.

    Weights are the channel sum minus its minimum (so the background weighs nothing); a
    constant image gets the grid centre and the grid's own covariance.
    """
    n = image.dim() - 2
    w = image.detach().to(torch.float64).sum(1)
    w = w - w.flatten(1).amin(1).view(-1, *([1] * n))
    total = w.flatten(1).sum(1)
    flat = total <= 0
    if flat.any():
        w = torch.where(flat.view(-1, *([1] * n)), torch.ones_like(w), w)
        total = w.flatten(1).sum(1)
    coords = [torch.arange(s, dtype=torch.float64) for s in image.shape[2:]]
    batch = image.shape[0]
    mean = torch.zeros(batch, n, dtype=torch.float64)
    second = torch.zeros(batch, n, n, dtype=torch.float64)
    dims = list(range(1, n + 1))

    def marginal(keep: tuple[int, ...]) -> torch.Tensor:
        # sum over the other axes (torch would sum over *all* axes for an empty list)
        other = [d for d in dims if d - 1 not in keep]
        return (w.sum(other) if other else w) / total.view(-1, *([1] * len(keep)))

    for i in range(n):
        marg = marginal((i,))  # (B, n_i)
        mean[:, i] = marg @ coords[i]
        second[:, i, i] = marg @ coords[i] ** 2
        for j in range(i + 1, n):
            pair = marginal((i, j))
            value = torch.einsum("bij,i,j->b", pair, coords[i], coords[j])
            second[:, i, j] = second[:, j, i] = value
    cov = second - mean.unsqueeze(2) * mean.unsqueeze(1)
    return mean, cov


def centre_of_mass(image: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted centre of mass in voxel indices (ij order).

    The weights are the channel sum minus its minimum, so a constant background does not pull
    the centre; a constant image returns the grid centre.

    Args:
        image: ``(B, C, *spatial)``.

    Returns:
        ``(B, ndim)`` float64, on the CPU.
    """
    check_image("morphreg.optimize.centre_of_mass", "image", image)
    return _voxel_moments(image)[0]


def _physical_moments(image: torch.Tensor, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid ``(B, n)`` and covariance ``(B, n, n)`` in the physical frame ``(B, n+1, n+1)``."""
    n = image.dim() - 2
    mean, cov = _voxel_moments(image)
    lin = frame[:, :n, :n]
    return transform_points(frame, mean), lin @ cov @ lin.transpose(-1, -2)


def initial_transforms(
    moving: torch.Tensor, fixed: torch.Tensor, geo: Frames, init: str, transform: str
) -> list[torch.Tensor]:
    """Initial transforms ``T`` ``(B, n+1, n+1)`` in the centred frame, first guesses first.

    ``init="identity"``: the identity. ``"com"``: the translation matching the centres of mass.
    ``"moments"``: that translation, then (unless ``transform="translation"``) every proper
    rotation matching the principal axes (one per sign choice; improper ones are NaN, to be
    skipped by the caller).
    """
    batch = geo.left.shape[0]
    n = fixed.dim() - 2
    if init == "identity":
        return [identity_matrix(n + 1, batch)]
    norm = geo.frame_fixed @ torch.linalg.inv(geo.right)  # N (phys <- norm): right = inv(N) @ F_f
    centre = norm[:, :n, n]
    radius = geo.radius.view(batch, 1)
    mean_f, cov_f = _physical_moments(fixed.expand(batch, *fixed.shape[1:]), geo.frame_fixed)
    mean_m, cov_m = _physical_moments(moving.expand(batch, *moving.shape[1:]), geo.frame_moving)
    q_f = (mean_f - centre) / radius
    q_m = (mean_m - centre) / radius
    rotations = [identity_matrix(n, batch)]
    if init == "moments" and transform != "translation":
        _, axes_f = torch.linalg.eigh(cov_f)
        _, axes_m = torch.linalg.eigh(cov_m)
        for signs in torch.cartesian_prod(*[torch.tensor([1.0, -1.0], dtype=torch.float64)] * n):
            rot = axes_m @ torch.diag(signs) @ axes_f.transpose(-1, -2)
            rot = torch.where((torch.linalg.det(rot) > 0).view(batch, 1, 1), rot, torch.full_like(rot, math.nan))
            rotations.append(rot)
    out = []
    for rot in rotations:
        t = identity_matrix(n + 1, batch)
        t[:, :n, :n] = rot
        t[:, :n, n] = q_m - (rot @ q_f.unsqueeze(-1)).squeeze(-1)
        out.append(t)
    return out
