"""Cubic B-spline free-form deformation (Rueckert et al., IEEE TMI 1999).

The displacement is a tensor-product cubic B-spline with control points every ``spacing``
voxels (a positive int per axis). Control point ``j`` along an axis sits at voxel
``(j - 1) * spacing``: one point lies before the first voxel and the grid reaches at least one
spacing past the last; it has ``ceil((n - 1) / spacing) + 3`` points per axis
(:func:`control_grid_shape`)::

    u(x) = sum_j c_j  B3(x / spacing - (j - 1))          (per axis, tensor product)

with ``B3`` the cubic B-spline on ``[-2, 2]``. The coefficients ``c_j`` are displacements in
voxels (component ``k`` along axis ``2 + k``) but do not interpolate: the field at a knot is
``(c_{j-1} + 4 c_j + c_{j+1}) / 6``. The sum of ``B3`` shifts is 1 (a constant grid gives a
constant field) and a grid linear in ``j`` gives a linear field, exactly.

Evaluation is separable: one strided transposed convolution per axis with the sampled kernel,
the same code for 2D and 3D. Halving the spacing refines a grid exactly (B-spline subdivision).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import losses, spatial
from .._checks import check_field, check_positive_int, check_tensor
from ._common import (
    LossFn,
    check_lr,
    check_same_grid_pair,
    check_weight,
    downsample,
    fit_tensor,
    level_scale,
    level_shapes,
    per_level,
    resolve_loss,
)

__all__ = [
    "FFDResult",
    "bspline_kernel",
    "control_grid_shape",
    "bspline_disp",
    "refine_control_points",
    "register_ffd",
]


class FFDResult(NamedTuple):
    """Result of :func:`register_ffd` (the same fields whatever the options).

    Attributes:
        disp: ``(B, ndim, *spatial)`` dense displacement in voxels,
            ``bspline_disp(control_points, spacing, spatial)``.
        moved: ``(B, C, *spatial)`` the warped moving image.
        control_points: ``(B, ndim, *control_grid_shape(spatial, spacing))`` coefficients at
            the finest (the requested) spacing.
        loss_history: total loss at every iteration, coarse levels first.
    """

    disp: torch.Tensor
    moved: torch.Tensor
    control_points: torch.Tensor
    loss_history: list[float]


def _spacing(fn: str, spacing: int | Sequence[int], ndim: int) -> list[int]:
    if isinstance(spacing, int) and not isinstance(spacing, bool):
        values = [spacing] * ndim
    elif isinstance(spacing, Sequence) and not isinstance(spacing, str):
        values = list(spacing)
    else:
        raise ValueError(f"{fn}: argument 'spacing' must be a positive int or {ndim} positive ints, got {spacing!r}")
    if len(values) != ndim:
        raise ValueError(f"{fn}: argument 'spacing' must have {ndim} entries (one per axis), got {len(values)}")
    for v in values:
        check_positive_int(fn, "spacing", v)
    return values


def bspline_kernel(
    spacing: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """The cubic B-spline sampled every ``1 / spacing``: ``B3((i + 1) / spacing - 2)``.

    Returns:
        ``(4 * spacing - 1,)``, summing to ``spacing``.
    """
    check_positive_int("morphreg.optimize.bspline_kernel", "spacing", spacing)
    t = (torch.arange(1, 4 * spacing, dtype=torch.float64) / spacing - 2.0).abs()
    inner = 2.0 / 3.0 - t**2 + 0.5 * t**3
    outer = (2.0 - t) ** 3 / 6.0
    return torch.where(t < 1.0, inner, outer).to(device=device, dtype=dtype)


def control_grid_shape(shape: Sequence[int], spacing: int | Sequence[int]) -> list[int]:
    """Number of control points per axis covering ``shape``: ``ceil((n - 1) / spacing) + 3``."""
    fn = "morphreg.optimize.control_grid_shape"
    sizes = [int(s) for s in shape]
    if len(sizes) not in (2, 3) or min(sizes) < 1:
        raise ValueError(f"{fn}: argument 'shape' must be 2 or 3 positive ints, got {tuple(shape)}")
    steps = _spacing(fn, spacing, len(sizes))
    return [-(-(n - 1) // s) + 3 for n, s in zip(sizes, steps)]


def _upsample_axis(
    x: torch.Tensor, axis: int, kernel: torch.Tensor, stride: int, start: int, length: int
) -> torch.Tensor:
    """Depthwise strided transposed convolution of ``x`` along one spatial ``axis``, cropped."""
    ndim = x.dim() - 2
    channels = x.shape[1]
    shape = [1] * ndim
    shape[axis] = kernel.numel()
    weight = kernel.view(1, 1, *shape).expand(channels, 1, *shape).contiguous()
    strides = [1] * ndim
    strides[axis] = stride
    conv = getattr(F, f"conv_transpose{ndim}d")
    out = conv(x, weight, stride=strides, groups=channels)
    return out.narrow(2 + axis, start, length)


def bspline_disp(control_points: torch.Tensor, spacing: int | Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Dense displacement of a cubic B-spline control grid.

    Args:
        control_points: ``(B, ndim, *control_grid_shape(shape, spacing))`` in voxels.
        spacing: control-point spacing in voxels, an int or one int per axis.
        shape: spatial shape of the output.

    Returns:
        ``(B, ndim, *shape)`` displacement in voxels (differentiable in ``control_points``).
    """
    fn = "morphreg.optimize.bspline_disp"
    ndim = check_field(fn, "control_points", control_points)
    sizes = [int(s) for s in shape]
    if len(sizes) != ndim:
        raise ValueError(
            f"{fn}: argument 'shape' must have {ndim} entries for a {ndim}D control grid, got {tuple(shape)}"
        )
    steps = _spacing(fn, spacing, ndim)
    expected = control_grid_shape(sizes, steps)
    if list(control_points.shape[2:]) != expected:
        raise ValueError(
            f"{fn}: argument 'control_points' must have spatial shape {tuple(expected)} for "
            f"shape {tuple(sizes)} and spacing {tuple(steps)}, got {tuple(control_points.shape[2:])}"
        )
    out = control_points
    for axis, (s, n) in enumerate(zip(steps, sizes)):
        kernel = bspline_kernel(s, dtype=out.dtype, device=out.device)
        out = _upsample_axis(out, axis, kernel, s, 3 * s - 1, n)
    return out


def refine_control_points(
    control_points: torch.Tensor, spacing: int | Sequence[int], shape: Sequence[int]
) -> torch.Tensor:
    """Exact refinement of a control grid from spacing ``2 * spacing`` to ``spacing``.

    Cubic B-spline subdivision: ``bspline_disp(refine_control_points(c, s, shape), s, shape)``
    equals ``bspline_disp(c, 2 * s, shape)`` (up to round-off).

    Args:
        control_points: ``(B, ndim, *control_grid_shape(shape, 2 * spacing))``.
        spacing: the new (finer) spacing in voxels, an int or one per axis.
        shape: spatial shape of the image the grid covers.

    Returns:
        ``(B, ndim, *control_grid_shape(shape, spacing))``.
    """
    fn = "morphreg.optimize.refine_control_points"
    ndim = check_field(fn, "control_points", control_points)
    sizes = [int(s) for s in shape]
    if len(sizes) != ndim:
        raise ValueError(f"{fn}: argument 'shape' must have {ndim} entries, got {tuple(shape)}")
    steps = _spacing(fn, spacing, ndim)
    expected = control_grid_shape(sizes, [2 * s for s in steps])
    if list(control_points.shape[2:]) != expected:
        raise ValueError(
            f"{fn}: argument 'control_points' must have spatial shape {tuple(expected)} (the "
            f"grid of spacing {tuple(2 * s for s in steps)} over {tuple(sizes)}), "
            f"got {tuple(control_points.shape[2:])}"
        )
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=control_points.dtype, device=control_points.device) / 8.0
    out = control_points
    # fine coefficient k comes out at index k + 3 of the stride-2 transposed convolution
    for axis, fine in enumerate(control_grid_shape(sizes, steps)):
        out = _upsample_axis(out, axis, kernel, 2, 3, fine)
    return out


def register_ffd(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    *,
    spacing: int | Sequence[int] = 8,
    loss: str | LossFn = "ncc",
    weight: float = 0.0,
    levels: int = 3,
    iterations: int | Sequence[int] = 100,
    lr: float = 0.2,
    init_control_points: torch.Tensor | None = None,
) -> FFDResult:
    """Free-form deformation: optimise a cubic B-spline control grid, coarse to fine.

    Level ``l`` (coarse to fine) uses control spacing ``spacing * 2**(levels - 1 - l)`` (full
    resolution voxels) and images down-sampled by about ``2**(levels - 1 - l)``; the grid is
    refined exactly when the spacing halves. The dense field is evaluated at full resolution
    and resized to the level's grid for the similarity.

    Objective: ``L_sim(warp(moving, u), fixed) + weight * bending_loss(u)``, with the bending
    energy of the full-resolution field ``u`` in voxel units (so ``weight`` means the same at
    every level). The spline itself keeps ``u`` smooth at scales below ``spacing``.

    Args:
        moving, fixed: ``(B, C, *spatial)``, same channels and spatial shape.
        spacing: final control-point spacing in voxels (an int or one per axis).
        loss: ``"ncc"``, ``"mse"``, ``"gncc"``, ``"mi"`` or a callable ``(moved, fixed)``.
        weight: bending-energy weight (>= 0).
        levels: number of spacing halvings + 1. A level whose images would have a side below
            16 voxels uses full-resolution images instead of a smaller pyramid level.
        iterations: Adam iterations per level, coarse to fine (an int is used for all).
        lr: Adam step for the control points in voxels of the current pyramid level (cosine-
            decayed to a tenth per level).
        init_control_points: optional start at the coarsest level,
            ``(B, ndim, *control_grid_shape(spatial, spacing * 2**(levels - 1)))``.

    Returns:
        :class:`FFDResult`.
    """
    fn = "morphreg.optimize.register_ffd"
    moving, fixed = check_same_grid_pair(fn, moving, fixed)
    ndim = fixed.dim() - 2
    shape = list(fixed.shape[2:])
    steps = _spacing(fn, spacing, ndim)
    similarity = resolve_loss(fn, loss)
    weight = check_weight(fn, weight)
    check_positive_int(fn, "levels", levels)
    iters = per_level(fn, "iterations", iterations, levels)
    lr = check_lr(fn, lr)
    if weight > 0 and min(shape) < 3:
        raise ValueError(f"{fn}: the bending penalty needs every spatial size >= 3, got {shape}")

    coarsest = [s * 2 ** (levels - 1) for s in steps]
    grid = control_grid_shape(shape, coarsest)
    batch = fixed.shape[0]
    if init_control_points is None:
        control = fixed.new_zeros(batch, ndim, *grid)
    else:
        check_field(fn, "init_control_points", init_control_points, spatial=grid)
        control = check_tensor(fn, "init_control_points", init_control_points).detach()
        if control.shape[0] not in (1, batch):
            raise ValueError(
                f"{fn}: argument 'init_control_points' has batch size {control.shape[0]}, expected 1 or {batch}"
            )
        control = control.to(fixed.device, fixed.dtype).expand(batch, *control.shape[1:])

    def objective(
        param: torch.Tensor, spacing: list[int], level_shape: list[int], moving_l: torch.Tensor, fixed_l: torch.Tensor
    ) -> torch.Tensor:
        disp = bspline_disp(param, spacing, shape)
        moved = spatial.warp(moving_l, spatial.resize(disp, size=level_shape))
        total = similarity(moved, fixed_l)
        if weight > 0:
            total = total + weight * losses.bending_loss(disp)
        return total

    pyramid = level_shapes(shape, levels)
    pyramid = [shape] * (levels - len(pyramid)) + pyramid  # too small: full resolution
    history: list[float] = []
    for level, (level_shape, count) in enumerate(zip(pyramid, iters)):
        level_spacing = [s * 2 ** (levels - 1 - level) for s in steps]
        if level > 0:
            control = refine_control_points(control, level_spacing, shape)
        level_objective = partial(
            objective,
            spacing=level_spacing,
            level_shape=level_shape,
            moving_l=downsample(moving, level_shape),
            fixed_l=downsample(fixed, level_shape),
        )
        factor = math.exp(sum(math.log(f) for f in level_scale(shape, level_shape)) / ndim)
        control = fit_tensor(control, level_objective, count, lr * factor, history)

    with torch.no_grad():
        disp = bspline_disp(control, steps, shape)
        moved = spatial.warp(moving, disp)
    return FFDResult(disp, moved, control, history)
