"""Separable filters on ``(B, C, *spatial)`` tensors: Gaussian blur and box (window) sums.

Both are sums of shifted copies along one axis at a time (``out += w_k * x[i + k]``), which on
the CPU is 2-3x faster than a depthwise ``conv3d`` or a cumulative sum for the short kernels
used here (radius <= ~4), and works with autograd.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["box_sum", "gaussian_blur", "gaussian_smooth", "gaussian_taps", "window_counts"]


def _filter_axis(image: torch.Tensor, axis: int, taps: Sequence[float], padding: str) -> torch.Tensor:
    """Correlate ``image`` along spatial ``axis`` with odd-length ``taps`` (centred), same shape.

    Args:
        padding: ``"constant"`` (zeros) or ``"replicate"`` beyond the border.
    """
    ndim = image.dim() - 2
    dim = 2 + axis
    size = image.shape[dim]
    radius = len(taps) // 2
    pad = [0] * (2 * ndim)
    pad[2 * (ndim - 1 - axis)] = pad[2 * (ndim - 1 - axis) + 1] = radius  # F.pad lists the last axis first
    padded = F.pad(image, pad, mode=padding)
    out = padded.narrow(dim, 0, size) * taps[0]
    for shift in range(1, len(taps)):
        out = out.add_(padded.narrow(dim, shift, size), alpha=taps[shift])
    return out


def gaussian_taps(sigma: float, size: int) -> list[float]:
    """Normalised Gaussian weights of radius ``ceil(3 sigma)`` (at most ``size - 1``, at least 1)."""
    radius = min(max(1, math.ceil(3.0 * sigma)), max(size - 1, 1))
    weights = [math.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)]
    total = sum(weights)
    return [w / total for w in weights]


def gaussian_blur(image: torch.Tensor, sigma: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, *spatial)`` with one sigma (voxels) per axis.

    Borders are replicated; an axis with ``sigma <= 0`` (or of size 1) is left alone.
    """
    out = image
    for axis, s in enumerate(sigma):
        size = image.shape[2 + axis]
        if s <= 0 or size < 2:
            continue
        out = _filter_axis(out, axis, gaussian_taps(s, size), "replicate")
    return out


def gaussian_smooth(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, *spatial)`` with one sigma (voxels) on every axis."""
    return gaussian_blur(field, [sigma] * (field.dim() - 2)) if sigma > 0 else field


def box_sum(image: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum over a ``(2 radius + 1)^ndim`` window (zero padding), same shape.

    Args:
        image: ``(B, C, *spatial)``.
    """
    out = image
    for axis in range(image.dim() - 2):
        out = _filter_axis(out, axis, [1.0] * (2 * radius + 1), "constant")
    return out


def window_counts(shape: Sequence[int], radius: int, *, device: torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Number of voxels inside the image of each ``(2 radius + 1)^ndim`` window, ``(1, *shape)``.

    Equal to ``box_sum`` of an image of ones (``(2 radius + 1)^ndim`` away from the border, fewer
    near it), built as the outer product of one count per axis.
    """
    out = torch.ones([1] * (len(shape) + 1), device=device, dtype=dtype)
    for axis, size in enumerate(shape):
        index = torch.arange(int(size), device=device, dtype=dtype)
        count = index.clamp(max=radius) + (size - 1 - index).clamp(max=radius) + 1
        view = [1] * (len(shape) + 1)
        view[axis + 1] = int(size)
        out = out * count.view(view)
    return out
