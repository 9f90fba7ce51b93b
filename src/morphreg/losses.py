"""Registration losses. Every ``*_loss`` is lower-is-better and returns a scalar tensor.

Image similarities take ``(B, C, *spatial)`` floating tensors; regularisers take a field
``(B, ndim, *spatial)`` in voxels. Each function has a thin ``nn.Module`` twin that stores its
settings (``MSELoss``, ``NCCLoss``, ...), so a training loop can hold a configured loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_choice, check_field, check_pair, check_positive_int

__all__ = [
    "LOSSES",
    "DEFAULT_WEIGHT",
    "mse_loss",
    "ncc_loss",
    "global_ncc_loss",
    "mi_loss",
    "dice_loss",
    "grad_loss",
    "bending_loss",
    "local_means",
    "MSELoss",
    "NCCLoss",
    "GlobalNCCLoss",
    "MILoss",
    "DiceLoss",
    "GradLoss",
    "BendingLoss",
    "similarity_loss",
]


#: Names of the image similarities (:func:`similarity_loss`), the one list every layer offers.
LOSSES = ("mse", "ncc", "gncc", "mi")

#: Default regularisation weight λ for each similarity: VoxelMorph's 1 for local NCC and 0.01
#: for MSE on [0, 1] intensities; 1 for global NCC and MI, which like NCC lie in [-1, 0].
DEFAULT_WEIGHT: dict[str, float] = {"ncc": 1.0, "mse": 0.01, "mi": 1.0, "gncc": 1.0}


def _check_pair(fn: str, a: torch.Tensor, b: torch.Tensor) -> int:
    return check_pair(fn, a, b, names=("a", "b"), match="shape")


def mse_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared intensity difference.

    Args:
        a, b: ``(B, C, *spatial)``.

    Returns:
        Scalar; 0 for identical inputs.
    """
    _check_pair("morphreg.losses.mse_loss", a, b)
    return torch.mean((a - b) ** 2)


def local_means(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over the in-image part of a ``window``^ndim cube around each voxel, separably.

    Voxels outside the image are not counted (no zero padding enters the statistics).

    Args:
        x: ``(N, C, *spatial)``.

    Returns:
        ``(N, C, *spatial)``; ``ndim`` one-dimensional box filters instead of one dense one.
    """
    ndim = x.dim() - 2
    pool = getattr(F, f"avg_pool{ndim}d")
    for axis in range(ndim):
        kernel = [1] * ndim
        kernel[axis] = window
        padding = [0] * ndim
        padding[axis] = window // 2
        x = pool(x, kernel_size=kernel, stride=1, padding=padding, count_include_pad=False)
    return x


def ncc_loss(a: torch.Tensor, b: torch.Tensor, window: int = 9, eps: float = 1e-8) -> torch.Tensor:
    """Negative local (squared) normalised cross-correlation, as in VoxelMorph.

    For each voxel, over a ``window``^ndim neighbourhood: ``cc = cov(a,b)^2 / (var a * var b)``,
    which lies in [0, 1]; the loss is ``-mean(cc)``, so -1 is a perfect local match.
    Windows at the border use only the voxels inside the image. Constant regions (zero variance)
    contribute 0 instead of NaN/inf, variances are clamped at zero against round-off, and the
    value is invariant to a linear intensity change of either image (up to ``eps``, which is
    relative to intensities of order 1).

    Args:
        a, b: ``(B, C, *spatial)``; channels are treated independently and averaged.
        window: odd window width in voxels (9 in the paper).
        eps: stabiliser added to the variance product.

    Returns:
        Scalar in [-1, 0].
    """
    fn = "morphreg.losses.ncc_loss"
    _check_pair(fn, a, b)
    check_positive_int(fn, "window", window)
    if window % 2 == 0:
        raise ValueError(f"{fn}: argument 'window' must be odd, got {window}")
    stats = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    means = local_means(stats, window)
    mean_a, mean_b, mean_aa, mean_bb, mean_ab = torch.chunk(means, 5, dim=1)
    var_a = (mean_aa - mean_a * mean_a).clamp_min(0.0)
    var_b = (mean_bb - mean_b * mean_b).clamp_min(0.0)
    cov = mean_ab - mean_a * mean_b
    cc = cov * cov / (var_a * var_b + eps)
    return -torch.mean(cc)


def global_ncc_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Negative global Pearson correlation per image and channel, averaged.

    Args:
        a, b: ``(B, C, *spatial)``.

    Returns:
        Scalar in [-1, 1]; -1 for ``b = s * a + t`` with ``s > 0``.
    """
    _check_pair("morphreg.losses.global_ncc_loss", a, b)
    a = a.flatten(2)
    b = b.flatten(2)
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    cov = (a * b).mean(-1)
    norm = torch.sqrt((a * a).mean(-1) * (b * b).mean(-1) + eps)
    return -torch.mean(cov / norm)


def mi_loss(
    a: torch.Tensor, b: torch.Tensor, bins: int = 32, sigma_ratio: float = 0.5
) -> torch.Tensor:
    """Negative mutual information with Gaussian Parzen windows (differentiable, multimodal).

    Each image is min-max scaled to [0, 1] (per sample) and
    softly assigned to ``bins`` equally spaced bins with a Gaussian of width
    ``sigma_ratio * bin spacing``, truncated at 4 sigma (the bins farther away would weigh
    less than ``exp(-8)``; leaving them out makes the cost a few bins per voxel, not ``bins``).

    Args:
        a, b: ``(B, 1, *spatial)``.
        bins: number of histogram bins per image.
        sigma_ratio: Parzen window width relative to the bin spacing.

    Returns:
        Scalar, ``-mean_B MI(a, b)`` in nats.
    """
    fn = "morphreg.losses.mi_loss"
    _check_pair(fn, a, b)
    if a.shape[1] != 1:
        raise ValueError(f"{fn}: arguments 'a' and 'b' must have 1 channel, got {a.shape[1]}")
    check_positive_int(fn, "bins", bins, minimum=2)
    joint = _parzen_joint_histogram(a.flatten(1), b.flatten(1), bins, sigma_ratio)  # (B, bins, bins)
    pa = joint.sum(2, keepdim=True)
    pb = joint.sum(1, keepdim=True)
    tiny = 1e-10
    mi = (joint * (torch.log(joint + tiny) - torch.log(pa * pb + tiny))).sum((1, 2))
    return -mi.mean()


def _parzen_weights(x: torch.Tensor, bins: int, sigma_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised Gaussian bin weights of ``x`` ``(B, N)``, min-max scaled to bin units.

    Returns ``(index, weight)``, each ``(B, N, taps)``: the bins within 4 sigma of each value
    (indices clamped to the range, their weights zero there) and their normalised weights.
    """
    lo = x.amin(1, keepdim=True)
    hi = x.amax(1, keepdim=True)
    u = (x - lo) / (hi - lo).clamp_min(1e-12) * (bins - 1)  # position in bin units, [0, bins - 1]
    reach = max(1, math.ceil(4.0 * sigma_ratio))
    offsets = torch.arange(-reach + 1, reach + 1, device=x.device)
    index = u.detach().floor().long().unsqueeze(-1) + offsets  # (B, N, taps)
    inside = (index >= 0) & (index < bins)
    w = torch.exp(-0.5 * ((u.unsqueeze(-1) - index.to(u.dtype)) / sigma_ratio) ** 2) * inside
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    return index.clamp(0, bins - 1), w


def _parzen_joint_histogram(a: torch.Tensor, b: torch.Tensor, bins: int, sigma_ratio: float) -> torch.Tensor:
    """Joint probability ``(B, bins, bins)`` of the samples ``a``, ``b`` ``(B, N)`` (Parzen windows)."""
    ia, wa = _parzen_weights(a, bins, sigma_ratio)
    ib, wb = _parzen_weights(b, bins, sigma_ratio)
    batch, count, taps = wa.shape
    cell = (ia.unsqueeze(-1) * bins + ib.unsqueeze(-2)).reshape(batch, -1)  # (B, N * taps^2)
    weight = (wa.unsqueeze(-1) * wb.unsqueeze(-2)).reshape(batch, -1)
    joint = weight.new_zeros(batch, bins * bins).scatter_add(1, cell, weight)
    return joint.view(batch, bins, bins) / count


def dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Soft multi-label Dice loss, ``1 - mean over channels of soft Dice``.

    Args:
        pred, target: ``(B, L, *spatial)`` label probabilities or one-hot maps (float).

    Returns:
        Scalar in [0, 1]; 0 when ``pred == target`` (one-hot).
    """
    fn = "morphreg.losses.dice_loss"
    check_pair(fn, pred, target, names=("pred", "target"), match="shape")
    dims = tuple(range(2, pred.dim()))
    inter = (pred * target).sum(dims)
    total = pred.sum(dims) + target.sum(dims)
    return 1.0 - torch.mean((2.0 * inter + eps) / (total + eps))


def grad_loss(disp: torch.Tensor, penalty: str = "l2") -> torch.Tensor:
    """Diffusion regulariser: mean squared (or absolute) forward difference of the field.

    ``mean over axes of mean(|u(x + e_k) - u(x)|^p)``; in voxel units, so the penalty of a given
    physical deformation does not depend on how many voxels the image has along an axis.

    Args:
        disp: ``(B, ndim, *spatial)``.
        penalty: ``"l2"`` (the paper's ‖∇u‖²) or ``"l1"``.

    Returns:
        Scalar; 0 for a constant field.
    """
    fn = "morphreg.losses.grad_loss"
    ndim = check_field(fn, "disp", disp)
    check_choice(fn, "penalty", penalty, ("l1", "l2"))
    total = disp.new_zeros(())
    for axis in range(2, 2 + ndim):
        d = torch.diff(disp, dim=axis)
        total = total + (d * d if penalty == "l2" else d.abs()).mean()
    return total / ndim


def bending_loss(disp: torch.Tensor) -> torch.Tensor:
    """Bending energy ``sum_ij (d_i d_j u)^2``, averaged over voxels and components.

    Derivatives are central differences (one-sided at the border), in voxel units.

    Args:
        disp: ``(B, ndim, *spatial)``; every spatial size >= 3.

    Returns:
        Scalar; exactly 0 for an affine (linear) field.
    """
    fn = "morphreg.losses.bending_loss"
    ndim = check_field(fn, "disp", disp)
    if min(disp.shape[2:]) < 3:
        raise ValueError(f"{fn}: every spatial size of 'disp' must be >= 3, got {tuple(disp.shape)}")
    axes = tuple(range(2, 2 + ndim))
    first = torch.gradient(disp, dim=axes)
    total = disp.new_zeros(())
    for i in range(ndim):
        second = torch.gradient(first[i], dim=axes[i:])  # d_i d_j for j >= i
        for offset, d2 in enumerate(second):
            weight = 1.0 if offset == 0 else 2.0  # mixed terms appear twice
            total = total + weight * (d2 * d2).mean()
    return total


def similarity_loss(name: str, **settings: float) -> nn.Module:
    """Build a similarity loss module by name, one of :data:`LOSSES`: ``"mse"``, ``"ncc"``,
    ``"gncc"`` or ``"mi"``."""
    table: dict[str, type[nn.Module]] = {
        "mse": MSELoss,
        "ncc": NCCLoss,
        "gncc": GlobalNCCLoss,
        "mi": MILoss,
    }
    check_choice("morphreg.losses.similarity_loss", "name", name, LOSSES)
    return table[name](**settings)


class MSELoss(nn.Module):
    """Module twin of :func:`mse_loss`."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return mse_loss(a, b)


class NCCLoss(nn.Module):
    """Module twin of :func:`ncc_loss`."""

    def __init__(self, window: int = 9, eps: float = 1e-8) -> None:
        super().__init__()
        self.window = window
        self.eps = eps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ncc_loss(a, b, window=self.window, eps=self.eps)


class GlobalNCCLoss(nn.Module):
    """Module twin of :func:`global_ncc_loss`."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return global_ncc_loss(a, b)


class MILoss(nn.Module):
    """Module twin of :func:`mi_loss`."""

    def __init__(self, bins: int = 32, sigma_ratio: float = 0.5) -> None:
        super().__init__()
        self.bins = bins
        self.sigma_ratio = sigma_ratio

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return mi_loss(a, b, bins=self.bins, sigma_ratio=self.sigma_ratio)


class DiceLoss(nn.Module):
    """Module twin of :func:`dice_loss`."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice_loss(pred, target)


class GradLoss(nn.Module):
    """Module twin of :func:`grad_loss`."""

    def __init__(self, penalty: str = "l2") -> None:
        super().__init__()
        check_choice("morphreg.losses.GradLoss", "penalty", penalty, ("l1", "l2"))
        self.penalty = penalty

    def forward(self, disp: torch.Tensor) -> torch.Tensor:
        return grad_loss(disp, penalty=self.penalty)


class BendingLoss(nn.Module):
    """Module twin of :func:`bending_loss`."""

    def forward(self, disp: torch.Tensor) -> torch.Tensor:
        return bending_loss(disp)
