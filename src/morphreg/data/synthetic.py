"""Synthetic training data: brain-like subjects and SynthMorph pairs.

:func:`synthetic_shapes` draws whole subjects (image and label map) for demos and tests: one seeded
template deformed per subject.

:class:`SynthPairs` draws training pairs for contrast-agnostic registration (SynthMorph):
Hoffmann et al. (IEEE TMI 2022) train a registration network on images that are synthesised
from random label maps, with a Dice loss on the labels only: the network never sees a real
image nor a real contrast, so it learns to align shapes whatever their intensities.
The pairs are 2D or 3D, in the convention of :mod:`morphreg.spatial`:

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

from .. import spatial
from .preprocess import normalise_intensity


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    from scipy import ndimage  # imported where needed: ~0.3 s

    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return field / max(float(field.std()), 1e-12)


def _template(rng: np.random.Generator, shape: tuple[int, ...], n_labels: int) -> np.ndarray:
    """Base label map: a perturbed Voronoi partition of an ellipsoid-like foreground."""
    ndim = len(shape)
    axes = [np.linspace(-1.0, 1.0, s) for s in shape]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))  # (ndim, *shape) in [-1, 1]
    sigma = min(shape) / 10.0
    radii = rng.uniform(0.68, 0.8, size=ndim)
    radius = np.sqrt(sum((coords[k] / radii[k]) ** 2 for k in range(ndim)))
    mask = radius + 0.08 * _smooth_noise(rng, shape, sigma) < 1.0
    # label centres inside the mask, then each voxel takes the nearest centre (noisy distance);
    # redrawn (deterministically) until every structure has a reasonable size
    inside = np.argwhere(mask)
    scale = (1.0 / n_labels) ** (1.0 / ndim)
    min_size = 0.2 * len(inside) / n_labels
    for _ in range(50):
        picked = inside[rng.choice(len(inside), n_labels, replace=False)]
        centres = coords[(slice(None), *picked.T)]  # (ndim, n_labels)
        scores = np.stack(
            [
                -np.sqrt(sum((coords[k] - centres[k, l]) ** 2 for k in range(ndim))) / scale
                + 0.35 * _smooth_noise(rng, shape, sigma)
                for l in range(n_labels)
            ]
        )
        labels = np.argmax(scores, axis=0).astype(np.uint8) + 1
        labels[~mask] = 0
        sizes = np.bincount(labels.ravel(), minlength=n_labels + 1)[1:]
        if sizes.min() >= min_size:
            break
    return labels


def synthetic_shapes(
    n: int,
    shape: Sequence[int] = (96, 112),
    n_labels: int = 8,
    seed: int = 0,
    *,
    disp_std: float | None = None,
    contrast_jitter: float = 0.05,
    noise_std: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    """Brain-like synthetic subjects for demos and tests (SynthMorph in spirit).

    One smooth base label map is drawn for the seed (``n_labels`` compact structures inside an
    ellipse-like foreground, label 0 outside). Each subject is that template warped by its own
    random smooth displacement (Gaussian-smoothed noise, standard deviation ``disp_std``
    voxels), so subjects share structures in roughly the same places, like affinely aligned
    brains. Its image gives each label a mean intensity (a random permutation of evenly spaced
    levels drawn once per seed, jittered per subject by ``contrast_jitter``; background 0),
    then blur (sigma 1 voxel), Gaussian noise ``noise_std`` and min-max scaling to [0, 1].

    Subject ``i`` depends only on ``(seed, i)``: the first ``m`` subjects of ``n > m`` equal
    those of ``n = m``.

    Args:
        n: number of subjects.
        shape: spatial shape, 2 or 3 entries (each >= 8).
        n_labels: number of foreground structures (1..254); labels are ``0..n_labels``.
        seed: random seed.
        disp_std: deformation amplitude in voxels (default ``0.04 * min(shape)``, about 4 for
            96 x 112).
        contrast_jitter: per-subject standard deviation of each label's mean intensity.
        noise_std: standard deviation of the additive noise (before scaling).

    Returns:
        ``(images, labels)``: float32 ``(n, *shape)`` in [0, 1] and uint8 ``(n, *shape)``.
    """
    from scipy import ndimage  # imported where needed: ~0.3 s

    fn = "morphreg.data.synthetic_shapes"
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 8:
        raise ValueError(f"{fn}: argument 'shape' must have 2 or 3 entries, each >= 8, got {shape}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{fn}: argument 'n' must be an integer >= 1, got {n!r}")
    if isinstance(n_labels, bool) or not isinstance(n_labels, int) or not 1 <= n_labels <= 254:
        raise ValueError(f"{fn}: argument 'n_labels' must be an integer in [1, 254], got {n_labels!r}")
    ndim = len(shape)
    if disp_std is None:
        disp_std = 0.04 * min(shape)
    children = np.random.SeedSequence(seed).spawn(n + 1)
    base_rng = np.random.default_rng(children[0])
    template = _template(base_rng, shape, n_labels)
    levels = base_rng.permutation(np.linspace(0.25, 1.0, n_labels))
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))
    smooth = min(shape) / 8.0
    images = np.empty((n, *shape), dtype=np.float32)
    labels = np.empty((n, *shape), dtype=np.uint8)
    for i in range(n):
        rng = np.random.default_rng(children[i + 1])
        disp = np.stack([_smooth_noise(rng, shape, smooth) * disp_std for _ in range(ndim)])
        # pull-back, as morphreg.spatial.warp: subject(x) = template(x + disp(x))
        seg = ndimage.map_coordinates(template, grid + disp, order=0, mode="nearest")
        means = np.concatenate([[0.0], levels + contrast_jitter * rng.standard_normal(n_labels)])
        image = ndimage.gaussian_filter(means[seg], 1.0)
        image += noise_std * rng.standard_normal(shape)
        images[i] = normalise_intensity(image)
        labels[i] = seg
    return images, labels


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


def label_pair(gen: torch.Generator, shape: Sequence[int], n_labels: int,
               max_std: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Moving and fixed label maps ``(1, *shape)`` int64 in ``[0, n_labels)``: one set of shapes, two warps.

    ``max_std``: the largest velocity standard deviation (voxels) of each warp (:func:`random_deformation`).
    """
    noise = _coarse_noise(gen, n_labels, shape, LABEL_SCALE * _uniform(gen, 0.5, 1.5))
    maps = []
    for _ in range(2):
        warped = spatial.warp(noise, random_deformation(gen, shape, max_std))
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
        max_std: the largest velocity standard deviation (voxels) of each of the two random warps
            of a pair; each pair draws its own in ``[0, max_std]`` (:func:`random_deformation`).
            The coarse grids are fractions of ``shape``, so structures and warps have the same
            size in voxels at every ``shape``: a smaller ``shape`` is a crop of the same world.
    """

    def __init__(self, shape: Sequence[int], n_labels: int = 16, length: int = 10_000, seed: int = 0,
                 max_std: float = 4.0) -> None:
        fn = "morphreg.data.SynthPairs"
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) not in (2, 3) or min(self.shape) < 16:
            raise ValueError(f"{fn}: argument 'shape' must have 2 or 3 entries, each >= 16, got {tuple(shape)}")
        if isinstance(n_labels, bool) or not isinstance(n_labels, int) or not 2 <= n_labels <= 64:
            raise ValueError(f"{fn}: argument 'n_labels' must be an integer in [2, 64], got {n_labels!r}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"{fn}: argument 'length' must be an integer >= 1, got {length!r}")
        if isinstance(max_std, bool) or not isinstance(max_std, (int, float)) or not 0 <= max_std <= 64:
            raise ValueError(f"{fn}: argument 'max_std' must be a number in [0, 64], got {max_std!r}")
        self.n_labels = n_labels
        self.max_std = float(max_std)
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
            raise IndexError(f"morphreg.data.SynthPairs: index {index} out of range [0, {self.length})")
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2)
        gen = torch.Generator().manual_seed((int(state[0]) << 31 ^ int(state[1])) & ((1 << 63) - 1))
        moving_seg, fixed_seg = label_pair(gen, self.shape, self.n_labels, self.max_std)
        return {
            "moving": synth_image(gen, moving_seg, self.n_labels),
            "fixed": synth_image(gen, fixed_seg, self.n_labels),
            "moving_seg": moving_seg,
            "fixed_seg": fixed_seg,
            "moving_index": index,
            "fixed_index": index,
        }
