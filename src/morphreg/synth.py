"""Synthesised training pairs for contrast-agnostic registration (SynthMorph).

Hoffmann et al. (IEEE TMI 2022) train a registration network on images that are synthesised
from random label maps, with a Dice loss on the labels only: the network never sees a real
image nor a real contrast, so it learns to align shapes whatever their intensities. This module
draws such pairs, 2D or 3D, in the convention of :mod:`morphreg.spatial`:

1. **Label maps.** ``n_labels`` smooth random noise images (Gaussian noise drawn on a coarse
   grid and upsampled linearly) are warped by two independent random diffeomorphisms (a
   stationary velocity drawn on a 1/16 grid, integrated by scaling and squaring); the voxel-wise
   argmax of each gives the moving and the fixed label map, the same shapes deformed twice.
2. **Images.** Each label gets a random mean intensity (uniform in [0, 1], the background label
   too) and its own noise level; then a Gaussian blur, a smooth multiplicative bias field, a
   random gamma, additive noise, and the percentile normalisation of
   :func:`morphreg.data.normalise_intensity`.

Every item depends only on ``(seed, epoch, index)``: resuming a training continues exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from . import spatial
from .data import normalise_intensity

#: Coarse grids (fraction of the image size) of the label noise, the velocity and the bias field.
LABEL_SCALE, VELOCITY_SCALE, BIAS_SCALE = 1 / 16, 1 / 16, 1 / 32


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def _coarse_noise(gen: torch.Generator, channels: int, shape: Sequence[int], scale: float) -> torch.Tensor:
    """``(1, channels, *shape)`` Gaussian noise drawn on a ``scale`` grid, upsampled linearly."""
    coarse = [max(2, round(s * scale)) for s in shape]
    noise = torch.randn((1, channels, *coarse), generator=gen)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(noise, size=list(shape), mode=mode, align_corners=True)


def random_deformation(gen: torch.Generator, shape: Sequence[int], max_std: float = 4.0) -> torch.Tensor:
    """A random diffeomorphic displacement ``(1, ndim, *shape)`` in voxels.

    A stationary velocity is drawn on a 1/16 grid with a random standard deviation in
    ``[0, max_std]`` voxels (of the full grid), upsampled and integrated (7 scaling-and-squaring
    steps).
    """
    velocity = _coarse_noise(gen, len(shape), shape, VELOCITY_SCALE) * _uniform(gen, 0.0, max_std)
    return spatial.integrate(velocity, 7)


def label_pair(gen: torch.Generator, shape: Sequence[int], n_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Moving and fixed label maps ``(1, *shape)`` int64 in ``[0, n_labels)``: one set of shapes, two warps."""
    noise = _coarse_noise(gen, n_labels, shape, LABEL_SCALE * _uniform(gen, 0.5, 1.5))
    maps = []
    for _ in range(2):
        warped = spatial.warp(noise, random_deformation(gen, shape))
        maps.append(warped.argmax(dim=1))
    return maps[0], maps[1]


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(1, 1, *spatial)`` (reflect padding); ``sigma`` in voxels."""
    if sigma < 0.1:
        return image
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=image.dtype) / sigma) ** 2)
    taps = taps / taps.sum()
    ndim = image.dim() - 2
    conv = getattr(F, f"conv{ndim}d")
    for axis in range(ndim):
        view = [1, 1] + [1] * ndim
        view[2 + axis] = -1
        pad = [0, 0] * ndim
        pad[2 * (ndim - 1 - axis)] = pad[2 * (ndim - 1 - axis) + 1] = radius
        image = conv(F.pad(image, pad, mode="reflect"), taps.reshape(view))
    return image


def synth_image(gen: torch.Generator, labels: torch.Tensor, n_labels: int) -> torch.Tensor:
    """A random-contrast image ``(1, *shape)`` float32 in [0, 1] of a label map ``(1, *shape)``."""
    shape = labels.shape[1:]
    means = torch.rand(n_labels, generator=gen)
    spread = torch.rand(n_labels, generator=gen) * 0.1
    image = means[labels] + spread[labels] * torch.randn(labels.shape, generator=gen)
    image = _gaussian_blur(image[None], _uniform(gen, 0.0, 1.5))[0]
    bias = _coarse_noise(gen, 1, shape, BIAS_SCALE)[0] * _uniform(gen, 0.0, 0.3)
    image = image.clamp_min(0) * torch.exp(bias)
    image = image / image.max().clamp_min(1e-6)
    image = image ** math.exp(_uniform(gen, -0.25, 0.25))
    image = image + torch.randn(image.shape, generator=gen) * _uniform(gen, 0.0, 0.05)
    return torch.from_numpy(normalise_intensity(image.numpy(), "percentile"))


class SynthPairs(Dataset):
    """Synthesised training pairs with their label maps, drawn on demand.

    Items are dicts like :class:`morphreg.data.PairDataset`'s: ``"moving"``, ``"fixed"``
    ``(1, *shape)`` float32 in [0, 1], ``"moving_seg"``, ``"fixed_seg"`` ``(1, *shape)`` int64
    in ``[0, n_labels)``, ``"moving_index"``/``"fixed_index"`` (the item index).

    Args:
        shape: spatial shape (2 or 3 entries).
        n_labels: labels per map (label 0 is a shape like the others; the Dice loss of training
            leaves it out, as it leaves out a real background).
        length: items per epoch.
        seed: random seed; item ``i`` of epoch ``e`` depends only on ``(seed, e, i)``.
    """

    def __init__(self, shape: Sequence[int], n_labels: int = 16, length: int = 10_000, seed: int = 0) -> None:
        fn = "morphreg.synth.SynthPairs"
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) not in (2, 3) or min(self.shape) < 16:
            raise ValueError(f"{fn}: argument 'shape' must have 2 or 3 entries, each >= 16, got {tuple(shape)}")
        if isinstance(n_labels, bool) or not isinstance(n_labels, int) or not 2 <= n_labels <= 64:
            raise ValueError(f"{fn}: argument 'n_labels' must be an integer in [2, 64], got {n_labels!r}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"{fn}: argument 'length' must be an integer >= 1, got {length!r}")
        self.n_labels = n_labels
        self.length = length
        self.seed = int(seed)
        self.epoch = 0
        #: labels come with every item (training checks ``segs is not None`` before a Dice loss)
        self.segs: list[np.ndarray] = []

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose pairs are drawn (default 0)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        if not 0 <= index < self.length:
            raise IndexError(f"morphreg.synth.SynthPairs: index {index} out of range [0, {self.length})")
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2)
        gen = torch.Generator().manual_seed((int(state[0]) << 31 ^ int(state[1])) & ((1 << 63) - 1))
        moving_seg, fixed_seg = label_pair(gen, self.shape, self.n_labels)
        return {
            "moving": synth_image(gen, moving_seg, self.n_labels),
            "fixed": synth_image(gen, fixed_seg, self.n_labels),
            "moving_seg": moving_seg,
            "fixed_seg": fixed_seg,
            "moving_index": index,
            "fixed_index": index,
        }
