"""World and voxel geometry: homogeneous matrices, voxel-to-world frames, matrix_to_world.

The one home of morphreg's matrix conventions (tested in ``tests/test_geometry.py``):

* A **voxel matrix** ``M``, ``(B, n, n + 1)`` or homogeneous ``(B, n + 1, n + 1)``, maps a
  *fixed-image* voxel index ``x`` (ij order, the array axes; origin at voxel 0) to the
  *moving-image* voxel index ``A x + t`` it samples (pull-back, as warping:
  ``moved(x) = moving(M x)``). :func:`morphreg.spatial.affine_to_disp` turns it into a dense
  displacement; it is checked by :func:`morphreg._checks.check_matrix`.
* A **voxel-to-world affine** ``A`` ``(D + 1, D + 1)`` maps a voxel index to a world point (the
  NIfTI sform/qform: RAS millimetres for images read by :mod:`morphreg.io`). ``D = n``, or 3
  for a 2D slice that came with a NIfTI 4x4 (its voxel index ``(i, j, 0)``).
* A **world matrix** ``W = A_m M A_f^{-1}`` ``(B, D + 1, D + 1)`` maps a fixed-image world
  point to the moving-image world point (:func:`matrix_to_world`).
* A **centred frame** ``N`` (:class:`Frames`) puts the origin at the fixed image's physical
  centre and measures lengths in its radius, so that the parameters of an affine
  optimisation are well conditioned whatever the image size and voxel size.
* Matrices built here are float64 on the CPU (conditioning and exact round trips); callers cast
  the result to their images' dtype and device.

``morphreg.io.resample_to`` (world-space resampling of a volume onto another grid) stays in
:mod:`morphreg.io.resample`: it works on :class:`morphreg.io.Volume` objects, one layer above this
module; the matrix it samples through is :func:`fixed_to_moving_voxels` here.

This module imports only :mod:`morphreg._checks` (it sits beside :mod:`morphreg.spatial` at the
bottom of the layers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from ._checks import as_float64_tensor, check_invertible, check_matrix, check_tensor

__all__ = [
    "Frames",
    "as_voxel_to_world",
    "centred_frames",
    "centred_to_voxel_matrix",
    "fixed_to_moving_voxels",
    "homogeneous",
    "identity_matrix",
    "matrix_to_world",
    "scale_matrix",
    "transform_points",
    "world_to_voxel_matrix",
]


def identity_matrix(n: int, batch: int = 1) -> torch.Tensor:
    """``(batch, n, n)`` float64 identity matrices (a new tensor, safe to write into)."""
    return torch.eye(n, dtype=torch.float64).expand(batch, n, n).clone()


def homogeneous(matrix: torch.Tensor) -> torch.Tensor:
    """Add the row ``[0, ..., 0, 1]``: ``(..., n, n + 1)`` -> ``(..., n + 1, n + 1)``.

    A matrix that is already square ``(..., n + 1, n + 1)`` is returned unchanged. Keeps the
    dtype, device and autograd graph.
    """
    n = matrix.shape[-1] - 1
    if matrix.shape[-2] == n + 1:
        return matrix
    bottom = torch.zeros(*matrix.shape[:-2], 1, n + 1, dtype=matrix.dtype, device=matrix.device)
    bottom[..., 0, n] = 1.0
    return torch.cat([matrix, bottom], dim=-2)


def scale_matrix(scales: Sequence[float]) -> torch.Tensor:
    """``(1, n + 1, n + 1)`` float64 homogeneous scaling ``diag(*scales, 1)``."""
    return torch.diag(torch.tensor([*scales, 1.0], dtype=torch.float64)).unsqueeze(0)


def transform_points(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply homogeneous matrices to points: ``A p + t``.

    Args:
        matrix: ``(B, n + 1, n + 1)`` or ``(B, n, n + 1)``.
        points: ``(B, n)``, one point per matrix.

    Returns:
        ``(B, n)``.
    """
    n = points.shape[-1]
    return (matrix[:, :n, :n] @ points.unsqueeze(-1)).squeeze(-1) + matrix[:, :n, n]


def centred_to_voxel_matrix(linear: torch.Tensor, shift: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """An affine about the image centre, as a voxel matrix.

    ``y = c + L (x - c) + shift * (size - 1)`` for voxel ``x``, centre ``c = (size - 1) / 2``.

    Args:
        linear: ``(B, ndim, ndim)`` ``L``.
        shift: ``(B, ndim)`` translation as a fraction of the image extent.
        shape: spatial shape.

    Returns:
        ``(B, ndim, ndim + 1)`` voxel matrix ``[A | t]`` with ``y = A x + t``, in ``linear``'s
        dtype and device (differentiable).
    """
    extent = torch.tensor([s - 1 for s in shape], dtype=linear.dtype, device=linear.device)
    centre = extent / 2
    translation = centre + shift * extent - (linear @ centre.unsqueeze(-1)).squeeze(-1)
    return torch.cat([linear, translation.unsqueeze(-1)], dim=-1)


def as_voxel_to_world(fn: str, name: str, affine: object, ndim: int) -> torch.Tensor | None:
    """Validate a voxel-to-world affine of an ``ndim``-D image; ``None`` passes through.

    Args:
        fn, name: the calling function and the argument, for the message.
        affine: ``(D + 1, D + 1)`` or ``(B, D + 1, D + 1)`` array or tensor; ``D = ndim``, or for
            2D images also ``D = 3`` (a NIfTI 4x4).

    Returns:
        ``(B, D + 1, D + 1)`` float64 on the CPU, or ``None``.

    Raises:
        ValueError: another shape, NaN/inf, a last row other than ``[0, ..., 0, 1]``, or a
            singular linear part.
    """
    if affine is None:
        return None
    value = as_float64_tensor(fn, name, affine, "a 4x4 (or (ndim+1)x(ndim+1)) array or tensor")
    if value.dim() == 2:
        value = value.unsqueeze(0)
    sizes = (ndim + 1,) if ndim == 3 else (3, 4)
    if value.dim() != 3 or value.shape[-1] != value.shape[-2] or value.shape[-1] not in sizes:
        expected = " or ".join(f"({s}, {s})" for s in sizes)
        raise ValueError(
            f"{fn}: argument '{name}' must be a voxel-to-world matrix of shape {expected} "
            f"(optionally with a batch dim) for a {ndim}D image, got {tuple(value.shape)}"
        )
    if not torch.isfinite(value).all():
        raise ValueError(f"{fn}: argument '{name}' contains NaN or inf")
    d = value.shape[-1] - 1
    bottom = torch.zeros(d + 1, dtype=torch.float64)
    bottom[d] = 1.0
    if not torch.allclose(value[:, d], bottom.expand_as(value[:, d]), atol=1e-6):
        raise ValueError(f"{fn}: argument '{name}' must have last row {bottom.tolist()}, got {value[0, d].tolist()}")
    check_invertible(fn, name, value[:, :d, :d], "a voxel-to-world affine must be invertible")
    return value


def _pair_of_affines(
    fn: str, moving_affine: object, fixed_affine: object, ndim: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Both voxel-to-world affines ``(B', D + 1, D + 1)`` (identity when ``None``) and ``D``."""
    a_m = as_voxel_to_world(fn, "moving_affine", moving_affine, ndim)
    a_f = as_voxel_to_world(fn, "fixed_affine", fixed_affine, ndim)
    if a_m is not None and a_f is not None and a_m.shape[-1] != a_f.shape[-1]:
        raise ValueError(
            f"{fn}: arguments 'moving_affine' and 'fixed_affine' must have the same size, got "
            f"{tuple(a_m.shape[-2:])} and {tuple(a_f.shape[-2:])}"
        )
    d = a_m.shape[-1] - 1 if a_m is not None else a_f.shape[-1] - 1 if a_f is not None else ndim
    return (
        a_m if a_m is not None else identity_matrix(d + 1),
        a_f if a_f is not None else identity_matrix(d + 1),
        d,
    )


def matrix_to_world(
    matrix_voxel: torch.Tensor,
    moving_affine: object = None,
    fixed_affine: object = None,
) -> torch.Tensor:
    """Express a voxel matrix (fixed voxel -> moving voxel) as a world point mapping.

    ``W = A_m M A_f^{-1}`` maps a fixed-image world point to the moving-image world point.

    Args:
        matrix_voxel: ``(B, ndim, ndim + 1)`` or ``(B, ndim + 1, ndim + 1)`` (batch optional);
            a singular matrix is allowed (it is only re-expressed).
        moving_affine, fixed_affine: voxel-to-world ``(D + 1, D + 1)`` (or batched), ``D = ndim``
            or, for 2D images, 3 (a NIfTI 4x4; the slice axis is mapped to itself); identity
            when ``None``.

    Returns:
        ``(B, D + 1, D + 1)`` float64 on the CPU.
    """
    fn = "morphreg.geometry.matrix_to_world"
    m = check_tensor(fn, "matrix_voxel", matrix_voxel).detach().to("cpu", torch.float64)
    m = homogeneous(check_matrix(fn, "matrix_voxel", m, invertible=False))
    n = m.shape[-1] - 1
    a_m, a_f, d = _pair_of_affines(fn, moving_affine, fixed_affine, n)
    if d != n:  # lift the 2D voxel map to 3D, the slice axis mapped to itself
        lifted = identity_matrix(d + 1, m.shape[0])
        lifted[:, :n, :n] = m[:, :n, :n]
        lifted[:, :n, d] = m[:, :n, n]
        m = lifted
    return a_m @ m @ torch.linalg.inv(a_f)


class Frames(NamedTuple):
    """The frames of one registration problem (float64, CPU, batch ``B``; :func:`centred_frames`).

    ``N`` is the centred frame (physical point = ``c + r * q`` for a centred point ``q``), ``F``
    the voxel-to-physical frames; a transform ``T`` in the centred frame is the voxel matrix
    ``left @ T @ right``.
    """

    left: torch.Tensor  # (B, n+1, n+1): inv(F_m) @ N
    right: torch.Tensor  # (B, n+1, n+1): inv(N) @ F_f
    voxel_size: torch.Tensor  # (B,) geometric-mean fixed voxel size (physical units)
    radius: torch.Tensor  # (B,) physical radius of the fixed image
    frame_fixed: torch.Tensor  # (B, n+1, n+1) fixed voxel -> physical
    frame_moving: torch.Tensor  # (B, n+1, n+1) moving voxel -> physical
    world_fixed: torch.Tensor  # (B, D+1, D+1) the affines as given (identity by default)
    world_moving: torch.Tensor


def _plane_frame(affine: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """2D frame of a 2D image with a 4x4 affine: in-plane coordinates along ``basis`` (3x2)."""
    frame = identity_matrix(3, affine.shape[0])
    frame[:, :2, :2] = basis.transpose(-1, -2) @ affine[:, :3, :2]
    frame[:, :2, 2] = (basis.transpose(-1, -2) @ affine[:, :3, 3:]).squeeze(-1)
    return frame


def _physical_frames(
    fn: str, world_m: torch.Tensor, world_f: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel -> physical frames ``(B, n + 1, n + 1)`` of the fixed and the moving image."""
    if world_f.shape[-1] == n + 1:
        return world_f, world_m
    # 2D slices with 4x4 affines: physical coordinates in the fixed slice's plane
    basis, _ = torch.linalg.qr(world_f[:, :3, :2])
    frame_f = _plane_frame(world_f, basis)
    frame_m = _plane_frame(world_m, basis)
    det = torch.linalg.det(frame_m[:, :2, :2])
    if (det.abs() < 1e-9 * world_m[:, :3, :2].norm(dim=(1, 2)) ** 2).any():
        raise ValueError(
            f"{fn}: argument 'moving_affine' puts the moving slice in a plane perpendicular "
            "to the fixed slice; 2D registration needs (nearly) parallel slices"
        )
    return frame_f, frame_m


def centred_frames(
    fn: str,
    fixed_shape: Sequence[int],
    moving_affine: object,
    fixed_affine: object,
    batch: int,
) -> Frames:
    """The frames of registering an image to a fixed image of spatial shape ``fixed_shape``.

    Physical coordinates come from the voxel-to-world affines (identity when ``None``; for 2D
    images with 4x4 affines, in-plane coordinates of the fixed slice). The centred frame has its
    origin at the fixed image's physical centre and its unit is the fixed image's radius ``r``
    (root mean square of the half extents).

    Args:
        fn: the calling function, for messages.
        fixed_shape: ``n`` spatial sizes of the fixed image.
        moving_affine, fixed_affine: as in :func:`matrix_to_world` (batch 1 or ``batch``).
        batch: the batch size of the problem.

    Returns:
        :class:`Frames`, every tensor with batch ``batch``.
    """
    n = len(fixed_shape)
    a_m, a_f, d = _pair_of_affines(fn, moving_affine, fixed_affine, n)
    for name, a in (("moving_affine", a_m), ("fixed_affine", a_f)):
        if a.shape[0] not in (1, batch):
            raise ValueError(f"{fn}: argument '{name}' has batch size {a.shape[0]}, expected 1 or {batch}")
    world_m = a_m.expand(batch, d + 1, d + 1)
    world_f = a_f.expand(batch, d + 1, d + 1)
    frame_f, frame_m = _physical_frames(fn, world_m, world_f, n)
    spacing = frame_f[:, :n, :n].norm(dim=1)  # (B, n) length of each voxel axis
    half = spacing * torch.tensor([(s - 1) / 2.0 for s in fixed_shape], dtype=torch.float64)
    radius = half.pow(2).mean(1).sqrt().clamp_min(1e-12)
    voxel_size = spacing.log().mean(1).exp()
    centre_vox = torch.tensor([*[(s - 1) / 2.0 for s in fixed_shape], 1.0], dtype=torch.float64)
    centre = (frame_f @ centre_vox)[:, :n]  # (B, n)
    norm = identity_matrix(n + 1, batch)
    norm[:, :n, :n] *= radius.view(batch, 1, 1)
    norm[:, :n, n] = centre
    left = torch.linalg.inv(frame_m) @ norm
    right = torch.linalg.inv(norm) @ frame_f
    return Frames(left, right, voxel_size, radius, frame_f, frame_m, world_f, world_m)


#: How far (voxels per voxel) a 2D slice's points may leave the other slice's plane and still count as in it.
IN_PLANE_TOLERANCE = 1e-3


def _check_in_plane(fn: str, vox: np.ndarray, what: str, *, keep_axes: bool = False) -> None:
    """Refuse a 4x4 voxel map of 2D slices that moves points ``(i, j, 0)`` off the plane ``z = 0``
    (``keep_axes``: nor may the slice axis move in-plane points)."""
    off_plane = np.abs(vox[2, [0, 1, 3]]).max()
    if keep_axes:
        off_plane = max(off_plane, np.abs(vox[:2, 2]).max())
    if off_plane > IN_PLANE_TOLERANCE:
        raise ValueError(f"{fn}: {what} (points leave the plane by up to {off_plane:.3g} voxels per voxel)")


def fixed_to_moving_voxels(moving_affine: np.ndarray, fixed_affine: np.ndarray, ndim: int) -> np.ndarray:
    """``(4, 4)`` float64 map of fixed voxel indices to moving voxel indices through world space,
    ``inv(A_moving) @ A_fixed`` (both ``(4, 4)`` voxel-to-world).

    Raises:
        ValueError: ``ndim == 2`` and the fixed slice does not lie in the moving slice's plane
            (a 2D image is never silently projected onto another plane).
    """
    vox = np.linalg.inv(np.asarray(moving_affine, np.float64)) @ np.asarray(fixed_affine, np.float64)
    if ndim == 2:
        _check_in_plane("morphreg.io.resample_to", vox,
                        "the 2D 'moving' slice does not lie in the plane of the 2D 'fixed' slice; bring both "
                        "slices into one plane first")
    return vox


def world_to_voxel_matrix(matrix_world: np.ndarray, grid_affine: np.ndarray, ndim: int) -> np.ndarray:
    """``(ndim, ndim + 1)`` float64 voxel matrix of a ``(4, 4)`` world matrix (fixed point -> moving
    point) on a grid both images share (voxel-to-world ``grid_affine``): ``inv(A) @ W @ A``.

    The inverse of :func:`matrix_to_world` with ``A_m = A_f = A``.

    Raises:
        ValueError: ``ndim == 2`` and the matrix moves points out of the slice's plane.
    """
    affine = np.asarray(grid_affine, np.float64)
    voxel = np.linalg.inv(affine) @ np.asarray(matrix_world, dtype=np.float64) @ affine
    if ndim == 2:
        _check_in_plane("morphreg.geometry.world_to_voxel_matrix", voxel,
                        "the matrix moves points out of the 2D image's plane; a 2D image needs an in-plane "
                        "transform", keep_axes=True)
    index = list(range(ndim)) + [3]
    return voxel[np.ix_(index[:-1], index)]

