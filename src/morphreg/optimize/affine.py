"""Rigid / similarity / affine registration by multi-resolution gradient descent.

The transform maps a **fixed-image point to the moving-image point it samples** (pull-back, as
:func:`morphreg.spatial.affine_to_disp`): ``moved(x) = moving(M x)`` with ``M`` in voxel
coordinates, ``(B, ndim, ndim + 1)``.

It is optimised in *physical* coordinates given by the images' voxel-to-world affines (identity
when none is given), so a rigid transform is rigid in millimetres even for anisotropic voxels:
``M = F_m^{-1} T F_f`` with ``F`` the voxel-to-physical frames. ``T`` is written about the
fixed image's physical centre ``c`` and scaled by its radius ``r`` (a well-conditioned frame):
``T(p) = c + r * (L (p - c) / r + t)``. Parameters are zero-initialised increments around an
initial ``(L0, t0)`` and are scaled so that one unit moves the image's periphery by one voxel;
``lr`` is therefore a step in voxels of the current pyramid level.

Parametrisations (one code path for 2D and 3D):

* ``"translation"``: ``L = L0``, ``t = t0 + dt``.
* ``"rigid"``: ``L = R0 expm(skew(w))`` (``ndim (ndim - 1) / 2`` angles, radians).
* ``"similarity"``: ``L = s0 exp(a) R0 expm(skew(w))``.
* ``"affine"``: ``L = L0 + D`` (full matrix).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import spatial
from .._checks import as_float64_tensor, check_batch, check_choice, check_image, check_positive_int, check_tensor
from ._common import (
    MIN_LEVEL_SIZE,
    LossFn,
    check_lr,
    downsample,
    level_scale,
    per_level,
    resolve_loss,
    run_adam,
)

__all__ = [
    "AffineResult",
    "AFFINE_TRANSFORMS",
    "AFFINE_INITS",
    "register_affine",
    "centre_of_mass",
    "moments_init",
    "matrix_to_world",
]

AFFINE_TRANSFORMS = ("translation", "rigid", "similarity", "affine")
AFFINE_INITS = ("moments", "com", "identity")


class AffineResult(NamedTuple):
    """Result of :func:`register_affine` (the same fields whatever the options).

    Attributes:
        matrix_voxel: ``(B, ndim, ndim + 1)`` fixed voxel index -> moving voxel index (ij order),
            ready for :func:`morphreg.spatial.affine_to_disp`.
        matrix_world: ``(B, D + 1, D + 1)`` float64 on the CPU, fixed world point -> moving
            world point (``A_m M A_f^-1``), with ``D`` the dimension of the affines given
            (``ndim``; 3 for 2D images that came with 4x4 NIfTI affines). Equals
            ``matrix_voxel`` (made homogeneous) when no affines are given.
        disp: ``(B, ndim, *fixed_spatial)`` the dense displacement in voxels.
        moved: ``(B, C, *fixed_spatial)`` the moving image resampled on the fixed grid.
        loss_history: the loss at every iteration, coarse levels first.
    """

    matrix_voxel: torch.Tensor
    matrix_world: torch.Tensor
    disp: torch.Tensor
    moved: torch.Tensor
    loss_history: list[float]


# --------------------------------------------------------------------------------------------
# homogeneous-matrix helpers (float64, batched)


def _eye(n: int, batch: int = 1) -> torch.Tensor:
    return torch.eye(n, dtype=torch.float64).expand(batch, n, n).clone()


def _homogeneous(matrix: torch.Tensor) -> torch.Tensor:
    """``(B, n, n + 1)`` or ``(B, n + 1, n + 1)`` -> ``(B, n + 1, n + 1)``."""
    n = matrix.shape[-1] - 1
    if matrix.shape[-2] == n + 1:
        return matrix
    bottom = torch.zeros(*matrix.shape[:-2], 1, n + 1, dtype=matrix.dtype, device=matrix.device)
    bottom[..., 0, n] = 1.0
    return torch.cat([matrix, bottom], dim=-2)


def _scale_matrix(scales: Sequence[float]) -> torch.Tensor:
    return torch.diag(torch.tensor([*scales, 1.0], dtype=torch.float64)).unsqueeze(0)


def _as_affine(fn: str, name: str, affine: object, ndim: int) -> torch.Tensor | None:
    """A voxel->world affine as ``(B', D + 1, D + 1)`` float64 (CPU), validated."""
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
    det = torch.linalg.det(value[:, :d, :d])
    if (det.abs() < 1e-12).any():
        raise ValueError(
            f"{fn}: argument '{name}' is singular (det of its linear part = "
            f"{det.abs().min().item():.3g}); a voxel-to-world affine must be invertible"
        )
    return value


class _Geometry(NamedTuple):
    """Frames of one registration problem (all float64, CPU, batch B)."""

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
    frame = _eye(3, affine.shape[0])
    frame[:, :2, :2] = basis.transpose(-1, -2) @ affine[:, :3, :2]
    frame[:, :2, 2] = (basis.transpose(-1, -2) @ affine[:, :3, 3:]).squeeze(-1)
    return frame


def _geometry(
    fn: str,
    moving_shape: Sequence[int],
    fixed_shape: Sequence[int],
    moving_affine: object,
    fixed_affine: object,
    batch: int,
) -> _Geometry:
    n = len(fixed_shape)
    a_m = _as_affine(fn, "moving_affine", moving_affine, n)
    a_f = _as_affine(fn, "fixed_affine", fixed_affine, n)
    if a_m is not None and a_f is not None and a_m.shape[-1] != a_f.shape[-1]:
        raise ValueError(
            f"{fn}: arguments 'moving_affine' and 'fixed_affine' must have the same size, got "
            f"{tuple(a_m.shape[-2:])} and {tuple(a_f.shape[-2:])}"
        )
    d = a_m.shape[-1] - 1 if a_m is not None else a_f.shape[-1] - 1 if a_f is not None else n
    for name, a in (("moving_affine", a_m), ("fixed_affine", a_f)):
        if a is not None and a.shape[0] not in (1, batch):
            raise ValueError(f"{fn}: argument '{name}' has batch size {a.shape[0]}, expected 1 or {batch}")
    world_m = (a_m if a_m is not None else _eye(d + 1)).expand(batch, d + 1, d + 1)
    world_f = (a_f if a_f is not None else _eye(d + 1)).expand(batch, d + 1, d + 1)
    if d == n:
        frame_f, frame_m = world_f, world_m
    else:  # 2D slices with 4x4 affines: physical coordinates in the fixed slice's plane
        basis, _ = torch.linalg.qr(world_f[:, :3, :2])
        frame_f = _plane_frame(world_f, basis)
        frame_m = _plane_frame(world_m, basis)
        det = torch.linalg.det(frame_m[:, :2, :2])
        if (det.abs() < 1e-9 * world_m[:, :3, :2].norm(dim=(1, 2)) ** 2).any():
            raise ValueError(
                f"{fn}: argument 'moving_affine' puts the moving slice in a plane perpendicular "
                "to the fixed slice; 2D registration needs (nearly) parallel slices"
            )
    spacing = frame_f[:, :n, :n].norm(dim=1)  # (B, n) length of each voxel axis
    half = spacing * torch.tensor([(s - 1) / 2.0 for s in fixed_shape], dtype=torch.float64)
    radius = half.pow(2).mean(1).sqrt().clamp_min(1e-12)
    voxel_size = spacing.log().mean(1).exp()
    centre_vox = torch.tensor([*[(s - 1) / 2.0 for s in fixed_shape], 1.0], dtype=torch.float64)
    centre = (frame_f @ centre_vox)[:, :n]  # (B, n)
    norm = _eye(n + 1, batch)
    norm[:, :n, :n] *= radius.view(batch, 1, 1)
    norm[:, :n, n] = centre
    left = torch.linalg.inv(frame_m) @ norm
    right = torch.linalg.inv(norm) @ frame_f
    return _Geometry(left, right, voxel_size, radius, frame_f, frame_m, world_f, world_m)


def matrix_to_world(
    matrix_voxel: torch.Tensor,
    moving_affine: object = None,
    fixed_affine: object = None,
) -> torch.Tensor:
    """Express a voxel matrix (fixed voxel -> moving voxel) as a world point mapping.

    ``W = A_m M A_f^{-1}`` maps a fixed-image world point to the moving-image world point.

    Args:
        matrix_voxel: ``(B, ndim, ndim + 1)`` or ``(B, ndim + 1, ndim + 1)``.
        moving_affine, fixed_affine: voxel-to-world ``(D + 1, D + 1)`` (or batched), ``D = ndim``
            or, for 2D images, 3 (a NIfTI 4x4; the slice axis is mapped to itself); identity
            when ``None``.

    Returns:
        ``(B, D + 1, D + 1)`` float64.
    """
    fn = "morphreg.optimize.matrix_to_world"
    if not isinstance(matrix_voxel, torch.Tensor):
        raise TypeError(f"{fn}: argument 'matrix_voxel' must be a torch.Tensor")
    m = matrix_voxel.detach().to("cpu", torch.float64)
    if m.dim() == 2:
        m = m.unsqueeze(0)
    n = m.shape[-1] - 1
    if m.dim() != 3 or n not in (2, 3) or m.shape[-2] not in (n, n + 1):
        raise ValueError(
            f"{fn}: argument 'matrix_voxel' must have shape (B, ndim, ndim + 1) or "
            f"(B, ndim + 1, ndim + 1) with ndim 2 or 3, got {tuple(matrix_voxel.shape)}"
        )
    m = _homogeneous(m)
    a_m = _as_affine(fn, "moving_affine", moving_affine, n)
    a_f = _as_affine(fn, "fixed_affine", fixed_affine, n)
    d = a_m.shape[-1] - 1 if a_m is not None else a_f.shape[-1] - 1 if a_f is not None else n
    if a_m is not None and a_f is not None and a_m.shape[-1] != a_f.shape[-1]:
        raise ValueError(
            f"{fn}: arguments 'moving_affine' and 'fixed_affine' must have the same size, got "
            f"{tuple(a_m.shape[-2:])} and {tuple(a_f.shape[-2:])}"
        )
    a_m = a_m if a_m is not None else _eye(d + 1)
    a_f = a_f if a_f is not None else _eye(d + 1)
    if d != n:  # lift the 2D voxel map to 3D, the slice axis mapped to itself
        lifted = _eye(d + 1, m.shape[0])
        lifted[:, :n, :n] = m[:, :n, :n]
        lifted[:, :n, d] = m[:, :n, n]
        m = lifted
    return a_m @ m @ torch.linalg.inv(a_f)


# --------------------------------------------------------------------------------------------
# moments


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
    n = image.dim() - 2
    mean, cov = _voxel_moments(image)
    lin = frame[:, :n, :n]
    mean = (lin @ mean.unsqueeze(-1)).squeeze(-1) + frame[:, :n, n]
    return mean, lin @ cov @ lin.transpose(-1, -2)


def _candidates(
    moving: torch.Tensor, fixed: torch.Tensor, geo: _Geometry, init: str, transform: str
) -> list[torch.Tensor]:
    """Initial transforms ``T_n`` (B, n+1, n+1) in the normalised frame, best first guesses."""
    batch = geo.left.shape[0]
    n = fixed.dim() - 2
    if init == "identity":
        return [_eye(n + 1, batch)]
    norm = torch.linalg.inv(geo.right) @ torch.linalg.inv(geo.frame_fixed)  # N (phys <- norm)
    centre = norm[:, :n, n]
    radius = geo.radius.view(batch, 1)
    mean_f, cov_f = _physical_moments(fixed.expand(batch, *fixed.shape[1:]), geo.frame_fixed)
    mean_m, cov_m = _physical_moments(moving.expand(batch, *moving.shape[1:]), geo.frame_moving)
    q_f = (mean_f - centre) / radius
    q_m = (mean_m - centre) / radius
    rotations = [_eye(n, batch)]
    if init == "moments" and transform != "translation":
        _, axes_f = torch.linalg.eigh(cov_f)
        _, axes_m = torch.linalg.eigh(cov_m)
        for signs in torch.cartesian_prod(*[torch.tensor([1.0, -1.0], dtype=torch.float64)] * n):
            rot = axes_m @ torch.diag(signs) @ axes_f.transpose(-1, -2)
            rot = torch.where((torch.linalg.det(rot) > 0).view(batch, 1, 1), rot, torch.full_like(rot, math.nan))
            rotations.append(rot)
    out = []
    for rot in rotations:
        t = _eye(n + 1, batch)
        t[:, :n, :n] = rot
        t[:, :n, n] = q_m - (rot @ q_f.unsqueeze(-1)).squeeze(-1)
        out.append(t)
    return out


# --------------------------------------------------------------------------------------------
# parametrisation


def _skew(angles: torch.Tensor, n: int) -> torch.Tensor:
    rows, cols = torch.triu_indices(n, n, 1)
    s = angles.new_zeros(angles.shape[0], n, n)
    s[:, cols, rows] = angles
    s[:, rows, cols] = -angles
    return s


class _Params:
    """Zero-initialised increments around ``init`` (B, n+1, n+1) float64 in the normalised frame."""

    def __init__(
        self,
        fn: str,
        init: torch.Tensor,
        transform: str,
        unit: torch.Tensor,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        batch, n = init.shape[0], init.shape[-1] - 1
        self.n = n
        self.transform = transform
        self.unit = unit.to(device, dtype).view(batch, 1)  # normalised units per voxel
        linear = init[:, :n, :n]
        self.t0 = init[:, :n, n].to(device, dtype)
        if transform in ("rigid", "similarity"):
            u, s, vh = torch.linalg.svd(linear)
            rot = u @ vh
            if (torch.linalg.det(rot) < 0).any():
                raise ValueError(
                    f"{fn}: argument 'init' contains a reflection, which a {transform} "
                    "transform cannot represent; use transform='affine'"
                )
            scale = s.log().mean(1).exp() if transform == "similarity" else torch.ones(batch)
            linear = rot * scale.view(batch, 1, 1)
        self.l0 = linear.to(device, dtype)
        zeros = {
            "translation": 0,
            "rigid": n * (n - 1) // 2,
            "similarity": n * (n - 1) // 2 + 1,
            "affine": n * n,
        }[transform]
        self.shift = torch.zeros(batch, n, device=device, dtype=dtype, requires_grad=True)
        self.other = torch.zeros(batch, zeros, device=device, dtype=dtype, requires_grad=True)

    def tensors(self) -> list[torch.Tensor]:
        return [self.shift, self.other] if self.other.shape[1] else [self.shift]

    def matrix(self) -> torch.Tensor:
        """``(B, n+1, n+1)`` transform in the normalised frame."""
        n = self.n
        other = self.other * self.unit
        if self.transform == "translation":
            linear = self.l0
        elif self.transform == "affine":
            linear = self.l0 + other.view(-1, n, n)
        else:
            rot = torch.linalg.matrix_exp(_skew(other[:, : n * (n - 1) // 2], n))
            linear = self.l0 @ rot
            if self.transform == "similarity":
                linear = linear * torch.exp(other[:, -1]).view(-1, 1, 1)
        t = self.t0 + self.shift * self.unit
        top = torch.cat([linear, t.unsqueeze(-1)], dim=-1)
        bottom = torch.zeros_like(top[:, :1])
        bottom[:, 0, n] = 1.0
        return torch.cat([top, bottom], dim=1)


# --------------------------------------------------------------------------------------------
# resampling


def _level_shapes(
    moving_shape: Sequence[int], fixed_shape: Sequence[int], levels: int
) -> list[tuple[list[int], list[int]]]:
    out = []
    for level in range(levels):
        f = [max(1, round(s / 2**level)) for s in fixed_shape]
        m = [max(1, round(s / 2**level)) for s in moving_shape]
        if level > 0 and min(f + m) < MIN_LEVEL_SIZE:
            break
        out.append((m, f))
    return out[::-1]


def _resample(
    moving: torch.Tensor, matrix: torch.Tensor, fixed_shape: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp ``moving`` with voxel ``matrix`` (B, n+1, n+1) onto a grid of ``fixed_shape``.

    A moving image of another shape is replicate-padded at the end (voxel indices unchanged,
    same values as ``padding='border'``) so that one grid holds both; returns (moved, disp).
    """
    n = moving.dim() - 2
    common = [max(a, b) for a, b in zip(moving.shape[2:], fixed_shape)]
    pad: list[int] = []
    for m, c in zip(reversed(moving.shape[2:]), reversed(common)):
        pad += [0, c - m]
    if any(pad):
        moving = F.pad(moving, pad, mode="replicate")
    disp = spatial.affine_to_disp(matrix[:, :n], common)
    moved = spatial.warp(moving, disp)
    crop = (slice(None), slice(None), *[slice(0, s) for s in fixed_shape])
    return moved[crop], disp[crop]


# --------------------------------------------------------------------------------------------
# public entry points


def _prepare(
    fn: str,
    moving: object,
    fixed: object,
    moving_affine: object,
    fixed_affine: object,
) -> tuple[torch.Tensor, torch.Tensor, _Geometry]:
    """Validate the pair, broadcast batch 1, and build the geometry."""
    moving = check_tensor(fn, "moving", moving)
    fixed = check_tensor(fn, "fixed", fixed)
    ndim = check_image(fn, "moving", moving)
    ndim_f = check_image(fn, "fixed", fixed)
    if ndim != ndim_f:
        raise ValueError(
            f"{fn}: 'moving' has {ndim} spatial dims but 'fixed' has {ndim_f} "
            f"(shapes {tuple(moving.shape)} and {tuple(fixed.shape)})"
        )
    if moving.shape[1] != fixed.shape[1]:
        raise ValueError(
            f"{fn}: 'moving' and 'fixed' must have the same number of channels, got "
            f"{moving.shape[1]} and {fixed.shape[1]}"
        )
    check_batch(fn, "moving", moving, "fixed", fixed)
    if min(fixed.shape[2:]) < 2 or min(moving.shape[2:]) < 2:
        raise ValueError(f"{fn}: every spatial size must be >= 2, got {tuple(moving.shape)} and {tuple(fixed.shape)}")
    batch = max(moving.shape[0], fixed.shape[0])
    moving = moving.expand(batch, *moving.shape[1:]).to(fixed.dtype)
    fixed = fixed.expand(batch, *fixed.shape[1:])
    geo = _geometry(fn, moving.shape[2:], fixed.shape[2:], moving_affine, fixed_affine, batch)
    return moving, fixed, geo


def _voxel_matrix(geo: _Geometry, transform: torch.Tensor) -> torch.Tensor:
    left = geo.left.to(transform.device, transform.dtype)
    right = geo.right.to(transform.device, transform.dtype)
    return left @ transform @ right


def _best_candidate(
    candidates: list[torch.Tensor],
    geo: _Geometry,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    similarity: LossFn,
    scales: tuple[list[float], list[float]],
) -> torch.Tensor:
    """Per pair, the candidate whose resampled image scores the lowest loss."""
    scale_m, scale_f = scales
    conj_l = torch.linalg.inv(_scale_matrix(scale_m))
    conj_r = _scale_matrix(scale_f)
    batch = fixed.shape[0]
    best = candidates[0].clone()
    best_loss = torch.full((batch,), math.inf, dtype=torch.float64)
    with torch.no_grad():
        for cand in candidates:
            valid = torch.isfinite(cand).flatten(1).all(1)
            if not valid.any():
                continue
            safe = torch.where(valid.view(-1, 1, 1), cand, candidates[0])
            vox = conj_l @ geo.left @ safe @ geo.right @ conj_r
            moved, _ = _resample(moving, vox.to(fixed.device, fixed.dtype), fixed.shape[2:])
            for b in range(batch):
                if not valid[b]:
                    continue
                value = float(similarity(moved[b : b + 1], fixed[b : b + 1]))
                if value < best_loss[b]:
                    best_loss[b] = value
                    best[b] = cand[b]
    return best


def moments_init(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    *,
    transform: str = "rigid",
    loss: str | LossFn = "gncc",
    moving_affine: object = None,
    fixed_affine: object = None,
) -> torch.Tensor:
    """Initial alignment by image moments: centres of mass, then principal axes.

    The centroid of ``fixed`` is mapped onto that of ``moving``; for rotating transforms the
    principal axes are matched as well. Every sign choice of the axes that gives a proper
    rotation, and the plain centre-of-mass translation, are scored with ``loss`` and the best
    one is kept per pair (principal axes are ambiguous for nearly isotropic shapes).

    Args:
        moving, fixed: ``(B, C, *spatial)``; the spatial shapes may differ.
        transform: one of ``AFFINE_TRANSFORMS``; ``"translation"`` matches centroids only.
        loss: similarity used to choose between the candidates.
        moving_affine, fixed_affine: voxel-to-world matrices (see :func:`register_affine`).

    Returns:
        ``(B, ndim, ndim + 1)`` fixed voxel -> moving voxel, in ``fixed``'s dtype and device.
    """
    fn = "morphreg.optimize.moments_init"
    check_choice(fn, "transform", transform, AFFINE_TRANSFORMS)
    similarity = resolve_loss(fn, loss)
    moving, fixed, geo = _prepare(fn, moving, fixed, moving_affine, fixed_affine)
    n = fixed.dim() - 2
    candidates = _candidates(moving, fixed, geo, "moments", transform)
    ones = [1.0] * n
    best = _best_candidate(candidates, geo, moving, fixed, similarity, (ones, ones))
    return _voxel_matrix(geo, best)[:, :n].to(fixed.device, fixed.dtype)


def register_affine(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    *,
    transform: str = "affine",
    loss: str | LossFn = "gncc",
    levels: int = 3,
    iterations: int | Sequence[int] = 100,
    lr: float = 0.5,
    init: str | torch.Tensor = "moments",
    moving_affine: object = None,
    fixed_affine: object = None,
) -> AffineResult:
    """Register ``moving`` to ``fixed`` with a global linear transform (multi-resolution Adam).

    Args:
        moving: ``(B, C, *spatial_m)`` image to be transformed; its spatial shape may differ
            from ``fixed``'s (batch 1 broadcasts).
        fixed: ``(B, C, *spatial)`` reference image; results live on its grid.
        transform: ``"translation"``, ``"rigid"``, ``"similarity"`` or ``"affine"``.
        loss: ``"gncc"`` (global correlation, the default), ``"ncc"`` (local, window 9),
            ``"mse"``, ``"mi"`` (multimodal), or a callable ``(moved, fixed) -> scalar``.
            Local NCC scores flat background as 0 (not as a match), which rewards transforms
            that shrink the background and biases the scale of an affine fit; global NCC does
            not, hence the default.
        levels: pyramid levels (each halves the size; levels whose smallest side would fall
            below 16 voxels are skipped, so small images use fewer).
        iterations: Adam iterations per level, coarse to fine (an int is used for all).
        lr: initial step in voxels of the current level (cosine-decayed to a tenth per level).
        init: ``"moments"`` (centroids + principal axes, best candidate by ``loss``), ``"com"``
            (centroids), ``"identity"``, or a voxel matrix ``(B, ndim, ndim + 1)`` such as the
            output of an affine network or :func:`morphreg.optimize.fit_affine`.
        moving_affine, fixed_affine: voxel-to-world matrices ``(ndim+1, ndim+1)`` (or batched;
            for 2D images also a NIfTI 4x4, whose slice plane gives the in-plane frame); identity
            when ``None``. They make ``rigid`` rigid in world units and give ``matrix_world``.

    Returns:
        :class:`AffineResult`.
    """
    fn = "morphreg.optimize.register_affine"
    check_choice(fn, "transform", transform, AFFINE_TRANSFORMS)
    similarity = resolve_loss(fn, loss)
    check_positive_int(fn, "levels", levels)
    iters = per_level(fn, "iterations", iterations, levels)
    lr = check_lr(fn, lr)
    if not isinstance(init, torch.Tensor):
        check_choice(fn, "init", init, [*AFFINE_INITS, "<tensor (B, ndim, ndim + 1)>"])
    moving, fixed, geo = _prepare(fn, moving, fixed, moving_affine, fixed_affine)
    n = fixed.dim() - 2
    batch = fixed.shape[0]
    shapes = _level_shapes(moving.shape[2:], fixed.shape[2:], levels)
    iters = iters[len(iters) - len(shapes) :]

    if isinstance(init, torch.Tensor):
        start = _init_from_matrix(fn, init, geo, n, batch)
    else:
        candidates = _candidates(moving, fixed, geo, init, transform)
        m_shape, f_shape = shapes[0]
        start = _best_candidate(
            candidates,
            geo,
            downsample(moving, m_shape),
            downsample(fixed, f_shape),
            similarity,
            (level_scale(moving.shape[2:], m_shape), level_scale(fixed.shape[2:], f_shape)),
        )

    # one parameter unit moves the periphery (radius r) by one fine voxel
    unit = geo.voxel_size / geo.radius
    params = _Params(fn, start, transform, unit, fixed.dtype, fixed.device)
    history: list[float] = []
    for (m_shape, f_shape), steps in zip(shapes, iters):
        scale_m = level_scale(moving.shape[2:], m_shape)
        scale_f = level_scale(fixed.shape[2:], f_shape)
        left = (torch.linalg.inv(_scale_matrix(scale_m)) @ geo.left).to(fixed.device, fixed.dtype)
        right = (geo.right @ _scale_matrix(scale_f)).to(fixed.device, fixed.dtype)
        moving_l = downsample(moving, m_shape)
        fixed_l = downsample(fixed, f_shape)

        def objective(
            left: torch.Tensor = left,
            right: torch.Tensor = right,
            moving_l: torch.Tensor = moving_l,
            fixed_l: torch.Tensor = fixed_l,
        ) -> torch.Tensor:
            moved, _ = _resample(moving_l, left @ params.matrix() @ right, fixed_l.shape[2:])
            return similarity(moved, fixed_l)

        level_lr = lr * math.exp(sum(math.log(s) for s in scale_f) / n)
        run_adam(params.tensors(), objective, steps, level_lr, history)

    with torch.no_grad():
        matrix = _voxel_matrix(geo, params.matrix().detach().to(torch.float64).cpu())
        vox = matrix.to(fixed.device, fixed.dtype)
        moved, disp = _resample(moving, vox, fixed.shape[2:])
    world = matrix_to_world(matrix, geo.world_moving, geo.world_fixed)
    return AffineResult(vox[:, :n].contiguous(), world, disp, moved, history)


def _init_from_matrix(fn: str, init: torch.Tensor, geo: _Geometry, n: int, batch: int) -> torch.Tensor:
    m = init.detach().to("cpu", torch.float64)
    if m.dim() == 2:
        m = m.unsqueeze(0)
    if m.dim() != 3 or m.shape[-1] != n + 1 or m.shape[-2] not in (n, n + 1):
        raise ValueError(
            f"{fn}: argument 'init' must be a voxel matrix of shape (B, {n}, {n + 1}) or "
            f"(B, {n + 1}, {n + 1}) for {n}D images, got {tuple(init.shape)}"
        )
    if m.shape[0] not in (1, batch):
        raise ValueError(f"{fn}: argument 'init' has batch size {m.shape[0]}, expected 1 or {batch}")
    if not torch.isfinite(m).all():
        raise ValueError(f"{fn}: argument 'init' contains NaN or inf")
    det = torch.linalg.det(m[:, :n, :n])
    if (det.abs() < 1e-12).any():
        raise ValueError(
            f"{fn}: argument 'init' is singular (det of the linear part = "
            f"{det.abs().min().item():.3g}); an affine registration must be invertible"
        )
    m = _homogeneous(m).expand(batch, n + 1, n + 1)
    return torch.linalg.inv(geo.left) @ m @ torch.linalg.inv(geo.right)
