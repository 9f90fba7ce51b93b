"""Evaluation metrics: label overlap, surface distance and field regularity.

Label maps are integer tensors ``(B, 1, *spatial)`` (or ``(B, *spatial)``); fields are
``(B, ndim, *spatial)`` in voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from ._checks import check_field, check_same_shape, check_tensor
from .spatial import jacobian_det

__all__ = ["LabelScores", "dice", "hd95", "folding_fraction", "log_jacobian_std", "label_values"]


class LabelScores(NamedTuple):
    """Per-label scores of a batch of label-map pairs.

    Attributes:
        labels: ``(L,)`` the label values scored.
        per_label: ``(B, L)``; NaN where a label is absent from both maps (skipped, not 0 or 1),
            or, for distances, absent from either.
        mean: ``(B,)`` mean over the labels that were scored (NaN-ignoring).
    """

    labels: torch.Tensor
    per_label: torch.Tensor
    mean: torch.Tensor


def _as_label_batch(fn: str, name: str, x: object) -> torch.Tensor:
    x = check_tensor(fn, name, x)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{fn}: argument '{name}' must be an integer label map, got dtype {x.dtype}")
    if x.dim() in (4, 5) and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() not in (3, 4):
        raise ValueError(
            f"{fn}: argument '{name}' must have shape (B, 1, *spatial) or (B, *spatial) with 2 or "
            f"3 spatial dims, got {tuple(x.shape)}"
        )
    return x


def label_values(*maps: torch.Tensor, background: int = 0) -> torch.Tensor:
    """Sorted label values present in any of ``maps``, without ``background``."""
    values = torch.unique(torch.cat([m.flatten() for m in maps]))
    return values[values != background]


def _labels_and_pair(
    fn: str, a: torch.Tensor, b: torch.Tensor, labels: Sequence[int] | torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a = _as_label_batch(fn, "a", a)
    b = _as_label_batch(fn, "b", b)
    check_same_shape(fn, "a", a, "b", b)
    if labels is None:
        label_tensor = label_values(a, b)
    else:
        label_tensor = torch.as_tensor(list(labels) if not torch.is_tensor(labels) else labels)
        label_tensor = label_tensor.to(device=a.device, dtype=a.dtype)
    return a, b, label_tensor


def _mean_ignoring_nan(x: torch.Tensor) -> torch.Tensor:
    return torch.nanmean(x, dim=1) if x.shape[1] else x.new_full((x.shape[0],), float("nan"))


def dice(
    a: torch.Tensor, b: torch.Tensor, labels: Sequence[int] | torch.Tensor | None = None
) -> LabelScores:
    """Dice overlap ``2|A∩B| / (|A|+|B|)`` per label.

    Args:
        a, b: integer label maps ``(B, 1, *spatial)`` or ``(B, *spatial)``.
        labels: label values to score; default: every non-zero value present in either map.

    Returns:
        :class:`LabelScores`; a label absent from both maps of a pair is NaN and skipped in the
        mean.
    """
    fn = "morphreg.metrics.dice"
    a, b, label_tensor = _labels_and_pair(fn, a, b, labels)
    flat_a, flat_b = a.flatten(1), b.flatten(1)
    inter = torch.zeros(a.shape[0], len(label_tensor), dtype=torch.float64, device=a.device)
    total = torch.zeros_like(inter)
    for j, label in enumerate(label_tensor):  # one pass per label keeps memory at O(N)
        in_a, in_b = flat_a == label, flat_b == label
        inter[:, j] = (in_a & in_b).sum(1)
        total[:, j] = in_a.sum(1) + in_b.sum(1)
    scores = torch.where(total > 0, 2.0 * inter / total.clamp_min(1), torch.nan)
    return LabelScores(label_tensor, scores, _mean_ignoring_nan(scores))


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage  # imported where needed: ~0.3 s

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(
    a: torch.Tensor,
    b: torch.Tensor,
    labels: Sequence[int] | torch.Tensor | None = None,
    spacing: Sequence[float] | None = None,
) -> LabelScores:
    """95th-percentile symmetric Hausdorff distance between label surfaces.

    Args:
        a, b: integer label maps ``(B, 1, *spatial)`` or ``(B, *spatial)``.
        labels: label values; default every non-zero value present in either map.
        spacing: voxel size per axis (mm); default 1.

    Returns:
        :class:`LabelScores` in the units of ``spacing``; NaN where a label is missing from
        either map (the distance is undefined).
    """
    from scipy import ndimage  # imported where needed: ~0.3 s

    fn = "morphreg.metrics.hd95"
    a, b, label_tensor = _labels_and_pair(fn, a, b, labels)
    ndim = a.dim() - 1
    if spacing is None:
        spacing = [1.0] * ndim
    if len(spacing) != ndim or min(spacing) <= 0:
        raise ValueError(f"{fn}: argument 'spacing' must be {ndim} positive numbers, got {spacing}")
    a_np, b_np = a.cpu().numpy(), b.cpu().numpy()
    out = np.full((a.shape[0], len(label_tensor)), np.nan)
    for n in range(a.shape[0]):
        for j, label in enumerate(label_tensor.tolist()):
            mask_a, mask_b = a_np[n] == label, b_np[n] == label
            if not mask_a.any() or not mask_b.any():
                continue
            surf_a, surf_b = _surface(mask_a), _surface(mask_b)
            dist_to_b = ndimage.distance_transform_edt(~surf_b, sampling=spacing)
            dist_to_a = ndimage.distance_transform_edt(~surf_a, sampling=spacing)
            both = np.concatenate([dist_to_b[surf_a], dist_to_a[surf_b]])
            out[n, j] = np.percentile(both, 95)
    scores = torch.from_numpy(out)
    return LabelScores(label_tensor, scores, _mean_ignoring_nan(scores))


def folding_fraction(disp: torch.Tensor) -> torch.Tensor:
    """Percentage of voxels where the Jacobian determinant of ``x + disp(x)`` is <= 0.

    Args:
        disp: ``(B, ndim, *spatial)`` in voxels.

    Returns:
        ``(B,)`` in percent (0-100).
    """
    check_field("morphreg.metrics.folding_fraction", "disp", disp)
    det = jacobian_det(disp)
    return 100.0 * (det <= 0).flatten(1).double().mean(1)


def log_jacobian_std(disp: torch.Tensor, floor: float = 1e-9) -> torch.Tensor:
    """Standard deviation of ``log(det J)`` (determinants clamped at ``floor`` first).

    Args:
        disp: ``(B, ndim, *spatial)`` in voxels.

    Returns:
        ``(B,)``; 0 for a translation, larger for less smooth fields.
    """
    check_field("morphreg.metrics.log_jacobian_std", "disp", disp)
    det = jacobian_det(disp).flatten(1).double()
    return torch.log(det.clamp_min(floor)).std(1)
