"""Landmarks: target registration error, and transforms fitted to point pairs.

Points are ``(N, ndim)`` voxel coordinates in ij order (the array axes, like field components),
given as tensors, numpy arrays or nested sequences. With morphreg's pull-back convention a
registration of ``moving`` to ``fixed`` maps each *fixed* point ``x`` to the moving point
``x + disp(x)``; so fit transforms from fixed (``source``) to moving (``target``) landmarks to
obtain a field that ``spatial.warp(moving, field)`` can use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import spatial
from .._checks import as_float64_tensor, check_field, check_number

__all__ = ["tre", "fit_tps", "fit_affine", "ThinPlateSpline", "tps_kernel"]


def _as_points(fn: str, name: str, points: object, ndim: int | None = None) -> torch.Tensor:
    """``(N, ndim)`` float64 CPU tensor with N >= 1, ndim in (2, 3), finite values."""
    value = as_float64_tensor(fn, name, points, "an (N, ndim) array of point coordinates")
    if value.dim() != 2 or value.shape[1] not in (2, 3):
        if value.numel() == 0:
            raise ValueError(f"{fn}: argument '{name}' is empty; give at least one point")
        raise ValueError(
            f"{fn}: argument '{name}' must have shape (N, ndim) with ndim 2 or 3, got {tuple(value.shape)}"
        )
    if value.shape[0] == 0:
        raise ValueError(f"{fn}: argument '{name}' is empty (shape {tuple(value.shape)}); give at least one point")
    if ndim is not None and value.shape[1] != ndim:
        raise ValueError(
            f"{fn}: argument '{name}' must have {ndim} coordinates per point (ij order), got shape {tuple(value.shape)}"
        )
    if not torch.isfinite(value).all():
        raise ValueError(f"{fn}: argument '{name}' contains NaN or inf")
    return value


def _as_pair(fn: str, name_a: str, a: object, name_b: str, b: object) -> tuple[torch.Tensor, torch.Tensor]:
    pa = _as_points(fn, name_a, a)
    pb = _as_points(fn, name_b, b)
    if pa.shape[0] != pb.shape[0]:
        raise ValueError(
            f"{fn}: arguments '{name_a}' and '{name_b}' must hold the same number of points "
            f"(corresponding pairs), got {pa.shape[0]} and {pb.shape[0]}"
        )
    if pa.shape[1] != pb.shape[1]:
        raise ValueError(
            f"{fn}: arguments '{name_a}' and '{name_b}' must have the same dimension, "
            f"got {pa.shape[1]} and {pb.shape[1]}"
        )
    return pa, pb


def tre(
    points_fixed: object,
    points_moving: object,
    disp: torch.Tensor | None = None,
    spacing: Sequence[float] | None = None,
) -> torch.Tensor:
    """Target registration error of each landmark pair.

    Without ``disp`` this is the error before registration, ``|x_f - x_m|``; with ``disp`` each
    fixed point maps to ``x_f + disp(x_f)`` (linear interpolation, border values outside the
    grid), compared with its moving point.

    Args:
        points_fixed: ``(N, ndim)`` fixed-image landmarks, voxel coordinates (ij order).
        points_moving: ``(N, ndim)`` corresponding moving-image landmarks.
        disp: ``(1, ndim, *spatial)`` or ``(ndim, *spatial)`` registration displacement in
            voxels (fixed grid, pull-back), or ``None``.
        spacing: voxel size per axis (e.g. mm) to report physical distances; default voxels.

    Returns:
        ``(N,)`` float64 distances (``.mean()`` is the usual mean TRE).
    """
    fn = "morphreg.optimize.tre"
    fixed, moving = _as_pair(fn, "points_fixed", points_fixed, "points_moving", points_moving)
    ndim = fixed.shape[1]
    mapped = fixed
    if disp is not None:
        if isinstance(disp, torch.Tensor) and disp.dim() == ndim + 1:
            disp = disp.unsqueeze(0)
        field_ndim = check_field(fn, "disp", disp)
        if disp.shape[0] != 1:
            raise ValueError(
                f"{fn}: argument 'disp' must hold one field (batch size 1) for one set of "
                f"points, got shape {tuple(disp.shape)}"
            )
        if field_ndim != ndim:
            raise ValueError(f"{fn}: argument 'disp' is a {field_ndim}D field but the points have {ndim} coordinates")
        field = disp[:1].detach().to("cpu", torch.float64)
        mapped = fixed + spatial.sample(field, fixed.T.unsqueeze(0))[0].T
    diff = mapped - moving
    if spacing is not None:
        sizes = [float(s) for s in spacing]
        if len(sizes) != ndim or min(sizes) <= 0 or not all(math.isfinite(s) for s in sizes):
            raise ValueError(f"{fn}: argument 'spacing' must be {ndim} positive voxel sizes, got {tuple(spacing)}")
        diff = diff * torch.tensor(sizes, dtype=torch.float64)
    return diff.norm(dim=1)


def tps_kernel(distance: torch.Tensor, ndim: int) -> torch.Tensor:
    """Radial basis of the thin-plate spline: ``r^2 log r`` in 2D, ``r`` in 3D (0 at r = 0).

    These are (up to sign and a constant factor) the fundamental solutions of the biharmonic
    operator, so the interpolant minimises the bending energy in that dimension.
    """
    if ndim == 2:
        safe = distance.clamp_min(1e-300)
        return torch.where(distance > 0, distance**2 * torch.log(safe), torch.zeros_like(distance))
    return distance


def _check_affine_independent(fn: str, name: str, points: torch.Tensor) -> torch.Tensor:
    """``[points, 1]`` ``(N, ndim + 1)``; raise unless the points span ``ndim`` dimensions."""
    n, ndim = points.shape
    if n < ndim + 1:
        raise ValueError(f"{fn}: argument '{name}' needs at least {ndim + 1} points for a {ndim}D fit, got {n}")
    homogeneous = torch.cat([points, torch.ones(n, 1, dtype=points.dtype)], dim=1)
    centred = points - points.mean(0)
    scale = centred.abs().max().item()
    singular = torch.linalg.svdvals(centred)
    if scale == 0 or singular[-1] <= 1e-9 * max(singular[0].item(), 1e-300):
        shape = "collinear" if ndim == 2 else "coplanar (or collinear)"
        raise ValueError(
            f"{fn}: the points of argument '{name}' are {shape}; a {ndim}D fit needs them to span {ndim} dimensions"
        )
    return homogeneous


@dataclass(frozen=True)
class ThinPlateSpline:
    """A fitted thin-plate spline ``f(x) = A [x, 1] + sum_i w_i U(|x - s_i|)``.

    ``U`` is :func:`tps_kernel` (``r^2 log r`` in 2D, ``r`` in 3D). Build it with
    :func:`fit_tps`.

    Attributes:
        source: ``(N, ndim)`` control points (where the spline was fitted).
        weights: ``(N, ndim)`` radial weights ``w_i``.
        affine: ``(ndim + 1, ndim)`` affine part, ``f_affine(x) = [x, 1] @ affine``.
        regularisation: the smoothing λ used (0 = exact interpolation).
    """

    source: torch.Tensor
    weights: torch.Tensor
    affine: torch.Tensor
    regularisation: float

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return int(self.source.shape[1])

    def transform(self, points: object) -> torch.Tensor:
        """Map points: ``(M, ndim)`` -> ``(M, ndim)`` float64."""
        fn = "morphreg.optimize.ThinPlateSpline.transform"
        x = _as_points(fn, "points", points, ndim=self.ndim)
        return self._apply(x)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        kernel = tps_kernel(torch.cdist(x, self.source), self.ndim)
        homogeneous = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
        return homogeneous @ self.affine + kernel @ self.weights

    def to_disp(
        self,
        shape: Sequence[int],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        chunk: int = 65536,
    ) -> torch.Tensor:
        """Dense displacement ``f(x) - x`` on a voxel grid.

        With ``source`` = fixed and ``target`` = moving landmarks this is the pull-back field
        that ``spatial.warp(moving, disp)`` expects.

        Args:
            shape: spatial shape (``ndim`` entries).
            dtype, device: of the result.
            chunk: grid points evaluated at once (bounds the memory to ``chunk * N`` doubles).

        Returns:
            ``(1, ndim, *shape)``.
        """
        fn = "morphreg.optimize.ThinPlateSpline.to_disp"
        sizes = [int(s) for s in shape]
        if len(sizes) != self.ndim or min(sizes) < 1:
            raise ValueError(f"{fn}: argument 'shape' must be {self.ndim} positive ints, got {tuple(shape)}")
        axes = [torch.arange(s, dtype=torch.float64) for s in sizes]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.ndim)
        out = torch.empty_like(grid)
        for start in range(0, grid.shape[0], max(1, int(chunk))):
            part = grid[start : start + chunk]
            out[start : start + chunk] = self._apply(part) - part
        disp = out.T.reshape(1, self.ndim, *sizes)
        return disp.to(device=device, dtype=dtype)


def fit_tps(source: object, target: object, regularisation: float = 0.0) -> ThinPlateSpline:
    """Fit a thin-plate spline mapping ``source`` points to ``target`` points.

    Solves ``[[K + λ I, P], [P^T, 0]] [W; A] = [target; 0]`` with ``K_ij = U(|s_i - s_j|)``,
    ``U(r) = r^2 log r`` (2D) or ``r`` (3D), ``P = [source, 1]``. With ``regularisation = 0``
    the spline interpolates the landmarks exactly; larger values approach the least-squares
    affine fit. An affine relation between the point sets is reproduced exactly.

    Args:
        source: ``(N, ndim)`` points (e.g. fixed landmarks), voxel coordinates, ij order.
        target: ``(N, ndim)`` corresponding points (e.g. moving landmarks).
        regularisation: smoothing λ >= 0 (in units of the kernel).

    Returns:
        :class:`ThinPlateSpline`.

    Raises:
        ValueError: empty or mismatched point sets, wrong dimension, fewer than ``ndim + 1``
            points, collinear (2D) / coplanar (3D) source points, duplicate source points
            without regularisation.
    """
    fn = "morphreg.optimize.fit_tps"
    src, dst = _as_pair(fn, "source", source, "target", target)
    check_number(fn, "regularisation", regularisation, minimum=0)
    n, ndim = src.shape
    homogeneous = _check_affine_independent(fn, "source", src)
    distance = torch.cdist(src, src)
    if regularisation == 0:
        same = (distance <= 1e-9 * distance.max()) & ~torch.eye(n, dtype=torch.bool)
        if same.any():
            i, j = (int(v) for v in same.nonzero()[0])
            raise ValueError(
                f"{fn}: argument 'source' has duplicate points (indices {i} and {j}); remove "
                "them or use regularisation > 0"
            )
    kernel = tps_kernel(distance, ndim) + regularisation * torch.eye(n, dtype=torch.float64)
    system = torch.zeros(n + ndim + 1, n + ndim + 1, dtype=torch.float64)
    system[:n, :n] = kernel
    system[:n, n:] = homogeneous
    system[n:, :n] = homogeneous.T
    rhs = torch.zeros(n + ndim + 1, ndim, dtype=torch.float64)
    rhs[:n] = dst
    solution = torch.linalg.solve(system, rhs)
    return ThinPlateSpline(src, solution[:n], solution[n:], float(regularisation))


def fit_affine(source: object, target: object) -> torch.Tensor:
    """Least-squares affine map from ``source`` to ``target`` points.

    With fixed landmarks as ``source`` and moving ones as ``target`` the result is a voxel
    matrix for :func:`morphreg.spatial.affine_to_disp` or ``register_affine(init=...)``.

    Args:
        source, target: ``(N, ndim)`` corresponding points, ``N >= ndim + 1``, source points
            not collinear (2D) / coplanar (3D).

    Returns:
        ``(ndim, ndim + 1)`` float64 matrix ``M`` with ``target ≈ M [source, 1]``.
    """
    fn = "morphreg.optimize.fit_affine"
    src, dst = _as_pair(fn, "source", source, "target", target)
    homogeneous = _check_affine_independent(fn, "source", src)
    solution = torch.linalg.lstsq(homogeneous, dst).solution  # (ndim + 1, ndim)
    return solution.T.contiguous()
