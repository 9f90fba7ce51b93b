"""Spatial transforms on dense fields: the one place that defines morphreg's grid convention.

Conventions (tested in ``tests/test_spatial.py``):

* Images are ``(B, C, *spatial)``; fields (displacement or velocity) are ``(B, ndim, *spatial)``
  in **voxel units**, component ``k`` displacing along tensor axis ``2 + k`` (ij order, the same
  order as the array axes — never xy).
* Warping is pull-back: ``moved(x) = moving(x + disp(x))``.
* Only :func:`_to_sampling_grid` speaks ``torch.nn.functional.grid_sample``'s language
  (normalised, reversed (x, y, z) coordinates with ``align_corners=True``).

The number of spatial dimensions is always read from the tensor; 2D and 3D share one code path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._checks import (
    check_batch,
    check_choice,
    check_field,
    check_image,
    check_matrix,
    check_number,
    check_positive_int,
    check_tensor,
)

ALIGN_CORNERS = True
INTERP_MODES = ("linear", "nearest")
PADDING_MODES = ("zeros", "border", "reflection")
TORCH_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}  # torch names linear by ndim

__all__ = [
    "ALIGN_CORNERS",
    "identity_grid",
    "warp",
    "GridWarper",
    "sample",
    "compose",
    "integrate",
    "resize",
    "affine_to_disp",
    "jacobian",
    "jacobian_det",
]


def identity_grid(
    shape: Sequence[int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Voxel coordinates of every voxel.

    Args:
        shape: spatial shape ``(*spatial)``, 2 or 3 entries.

    Returns:
        Tensor ``(ndim, *spatial)``: ``grid[k, i0, i1, ...] = i_k``.
    """
    axes = [torch.arange(int(s), device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


def _to_sampling_grid(disp: torch.Tensor) -> torch.Tensor:
    """Voxel displacement ``(B, ndim, *spatial)`` -> grid_sample grid ``(B, *spatial, ndim)``."""
    spatial = disp.shape[2:]
    coords = identity_grid(spatial, device=disp.device, dtype=disp.dtype).unsqueeze(0) + disp
    return _coords_to_grid(coords, spatial)


def _coords_to_grid(coords: torch.Tensor, image_shape: Sequence[int]) -> torch.Tensor:
    """Voxel coordinates ``(B, ndim, *out)`` in an image of spatial shape ``image_shape`` ->
    grid_sample grid ``(B, *out, ndim)``.

    With :func:`_grid_sample`, the only code that knows grid_sample's normalised [-1, 1],
    reversed-axis convention.
    """
    ndim = len(image_shape)
    # size-1 axes: any coordinate maps to the single sample (avoid dividing by zero).
    scale = torch.tensor(
        [2.0 / max(s - 1, 1) for s in image_shape], device=coords.device, dtype=coords.dtype
    ).view(1, ndim, *([1] * (coords.dim() - 2)))
    normalised = coords * scale - 1.0
    return normalised.movedim(1, -1).flip(-1)


#: 3D grids with fewer points than this are sampled in one call (see :func:`_grid_sample`).
_SPLIT_3D_POINTS = 2**16


def _grid_sample(values: torch.Tensor, grid: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
    """``F.grid_sample`` with morphreg's names (``mode`` "linear"/"nearest") and convention.

    torch's CPU kernel for 3D grids runs one thread per batch element, so a single 3D image is
    sampled on one core whatever ``torch.get_num_threads()`` says. Without autograd, a large 3D
    grid of batch 1 on the CPU is therefore cut along its first axis into as many slabs as there
    are threads (a divisor of that axis), laid out as a batch over the same (expanded, not
    copied) input, and the slabs put back together: the same values, on every thread.
    """
    sample_mode = "bilinear" if mode == "linear" else "nearest"
    slabs = _slab_count(values, grid)
    if slabs > 1:
        batch, channels = values.shape[:2]
        depth = grid.shape[1]
        pieces = grid.reshape(slabs, depth // slabs, *grid.shape[2:])
        out = F.grid_sample(values.expand(slabs, *values.shape[1:]), pieces, mode=sample_mode,
                            padding_mode=padding, align_corners=ALIGN_CORNERS)  # (slabs, C, depth / slabs, H, W)
        if channels == 1:
            return out.reshape(1, 1, depth, *grid.shape[2:4])
        return out.transpose(0, 1).reshape(1, channels, depth, *grid.shape[2:4])
    return F.grid_sample(values, grid, mode=sample_mode, padding_mode=padding, align_corners=ALIGN_CORNERS)


def _slab_count(values: torch.Tensor, grid: torch.Tensor) -> int:
    """How many slabs :func:`_grid_sample` cuts ``grid`` into (1: sample it in one call)."""
    if (grid.dim() != 5 or grid.shape[0] != 1 or values.shape[0] != 1 or values.device.type != "cpu"
            or grid[0, ..., 0].numel() < _SPLIT_3D_POINTS
            or (torch.is_grad_enabled() and (values.requires_grad or grid.requires_grad))):
        return 1
    depth = grid.shape[1]
    for slabs in range(min(torch.get_num_threads(), depth), 1, -1):
        if depth % slabs == 0:
            return slabs
    return 1


def warp(
    image: torch.Tensor,
    disp: torch.Tensor,
    mode: str = "linear",
    padding: str = "border",
) -> torch.Tensor:
    """Pull-back warp: ``moved(x) = image(x + disp(x))``.

    Args:
        image: ``(B, C, *spatial)``; floating point, or an integer label map with
            ``mode="nearest"`` (the result then keeps the integer dtype).
        disp: ``(B, ndim, *spatial)`` displacement in voxels; batch 1 broadcasts.
        mode: ``"linear"`` (bi/trilinear) or ``"nearest"``.
        padding: value outside the image: ``"zeros"``, ``"border"`` or ``"reflection"``.

    Returns:
        ``(B, C, *spatial)`` warped image, same dtype as ``image``.
    """
    fn = "morphreg.spatial.warp"
    check_image(fn, "image", image, floating=False)
    ndim = check_field(fn, "disp", disp, spatial=image.shape[2:])
    check_choice(fn, "mode", mode, INTERP_MODES)
    check_choice(fn, "padding", padding, PADDING_MODES)
    check_batch(fn, "image", image, "disp", disp)
    if image.dim() - 2 != ndim:
        raise ValueError(f"{fn}: image has {image.dim() - 2} spatial dims but disp has {ndim}")
    integer_labels = not image.is_floating_point()
    if integer_labels and mode != "nearest":
        raise TypeError(
            f"{fn}: argument 'image' has integer dtype {image.dtype}; integer label maps must be "
            "warped with mode='nearest' (or converted to float / one-hot first)"
        )
    if integer_labels:
        # float64 represents every label up to 2**53 exactly
        values = image.to(torch.float64)
        disp = disp.to(torch.float64)
    else:
        values = image
        disp = disp.to(image.dtype)
    batch = max(values.shape[0], disp.shape[0])
    values = values.expand(batch, *values.shape[1:])
    grid = _to_sampling_grid(disp).expand(batch, *disp.shape[2:], ndim)
    moved = _grid_sample(values, grid, mode, padding)
    if integer_labels:
        moved = moved.round().to(image.dtype)
    return moved


class GridWarper:
    """Repeated linear pull-back warps on one grid, its identity and scale computed once.

    ``GridWarper(shape, ...)(values, disp)`` equals ``warp(values, disp, padding=padding)`` for
    floating-point ``values`` (to rounding), without rebuilding the identity grid nor re-checking
    the arguments: the inner loop of iterative registration (:func:`morphreg.optimize.register_greedy`).

    Args:
        shape: spatial shape ``(*spatial)`` of every ``disp``.
        device, dtype: of the tensors it will warp.
        padding: ``"zeros"``, ``"border"`` or ``"reflection"``.
    """

    def __init__(
        self,
        shape: Sequence[int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        padding: str = "border",
    ) -> None:
        check_choice("morphreg.spatial.GridWarper", "padding", padding, PADDING_MODES)
        shape = [int(s) for s in shape]
        ndim = len(shape)
        # grid_sample coordinates, channels first: (1, ndim, *spatial), channel 0 = last axis
        self._base = _coords_to_grid(identity_grid(shape, device=device, dtype=dtype).unsqueeze(0), shape)
        self._base = self._base.movedim(-1, 1).contiguous()
        scale = [2.0 / max(s - 1, 1) for s in reversed(shape)]
        self._scale = torch.tensor(scale, device=device, dtype=dtype).view(1, ndim, *([1] * ndim))
        self.padding = padding

    def __call__(self, values: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` ``values`` warped by ``(B, ndim, *spatial)`` ``disp`` (voxels)."""
        ndim = disp.shape[1]
        if torch.is_grad_enabled() and disp.requires_grad:
            grid = torch.addcmul(self._base, disp.flip(1), self._scale).movedim(1, -1)
        else:  # written component by component into a channels-last grid: no flipped copy (6x faster)
            grid = disp.new_empty(disp.shape[0], *disp.shape[2:], ndim)
            for k in range(ndim):
                torch.addcmul(self._base[:, k], disp[:, ndim - 1 - k], self._scale[:, k], out=grid[..., k])
        return _grid_sample(values, grid, "linear", self.padding)


def sample(
    image: torch.Tensor,
    coords: torch.Tensor,
    mode: str = "linear",
    padding: str = "border",
) -> torch.Tensor:
    """Values of ``image`` at arbitrary voxel coordinates (the same interpolation as :func:`warp`).

    ``warp(image, disp) == sample(image, identity_grid(spatial) + disp)``; here the points need
    not form the image's grid: any number of them, in any arrangement ``out``.

    Args:
        image: ``(B, C, *spatial)`` floating point.
        coords: ``(B, ndim, *out)`` voxel coordinates (ij order, component ``k`` along tensor
            axis ``2 + k``) of the points to sample; ``out`` is any shape (e.g. ``(N,)`` for
            ``N`` landmarks). Batch 1 broadcasts against the image's batch.
        mode: ``"linear"`` or ``"nearest"``.
        padding: value outside the image: ``"zeros"``, ``"border"`` or ``"reflection"``.

    Returns:
        ``(B, C, *out)`` in ``image``'s dtype.
    """
    fn = "morphreg.spatial.sample"
    ndim = check_image(fn, "image", image)
    coords = check_tensor(fn, "coords", coords)
    if coords.dim() < 3 or coords.shape[1] != ndim or not coords.is_floating_point():
        raise ValueError(
            f"{fn}: argument 'coords' must be a floating-point tensor of shape (B, {ndim}, *out) for a "
            f"{ndim}D image, got {tuple(coords.shape)} ({coords.dtype})"
        )
    check_choice(fn, "mode", mode, INTERP_MODES)
    check_choice(fn, "padding", padding, PADDING_MODES)
    check_batch(fn, "image", image, "coords", coords)
    out = coords.shape[2:]
    batch = max(image.shape[0], coords.shape[0])
    # grid_sample wants an ndim-D output grid: lay the points out along the first output axis
    points = coords.to(image.dtype).reshape(coords.shape[0], ndim, -1, *([1] * (ndim - 1)))
    grid = _coords_to_grid(points, image.shape[2:]).expand(batch, *points.shape[2:], ndim)
    values = _grid_sample(image.expand(batch, *image.shape[1:]), grid, mode, padding)
    return values.reshape(batch, image.shape[1], *out)


def compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Displacement of "apply ``first``, then ``second``" to an image.

    ``warp(warp(img, first), second) ≈ warp(img, compose(first, second))``; in pull-back terms
    ``c(x) = second(x) + first(x + second(x))``.

    Args:
        first, second: ``(B, ndim, *spatial)`` displacements in voxels.

    Returns:
        ``(B, ndim, *spatial)`` composed displacement.
    """
    fn = "morphreg.spatial.compose"
    check_field(fn, "first", first)
    check_field(fn, "second", second, spatial=first.shape[2:])
    check_batch(fn, "first", first, "second", second)
    return second + warp(first, second, padding="border")


#: The most scaling-and-squaring steps :func:`integrate` takes. The first step scales the velocity
#: by ``2**-steps``: 20 steps bring a velocity of up to 500,000 voxels below half a voxel, far
#: beyond any image, so more steps only add run time (one warp each) and interpolation blur,
#: and ``2**steps`` overflows integer arithmetic from 63 on. voxelmorph uses 7.
MAX_INT_STEPS = 20


def integrate(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Exponential of a stationary velocity field by scaling and squaring.

    The field is scaled by ``1 / 2**steps`` and composed with itself ``steps`` times.

    Args:
        velocity: ``(B, ndim, *spatial)`` in voxels.
        steps: number of squarings in ``[0, MAX_INT_STEPS]`` (``0`` returns the velocity
            unchanged).

    Returns:
        ``(B, ndim, *spatial)`` displacement of the diffeomorphism ``exp(velocity)``.
    """
    fn = "morphreg.spatial.integrate"
    check_field(fn, "velocity", velocity)
    check_positive_int(fn, "steps", steps, minimum=0, maximum=MAX_INT_STEPS)
    disp = velocity / (2**steps)
    for _ in range(steps):
        disp = disp + warp(disp, disp, padding="border")
    return disp


def resize(
    disp: torch.Tensor,
    size: Sequence[int] | None = None,
    *,
    scale_factor: float | None = None,
) -> torch.Tensor:
    """Resample a displacement field to a new grid and rescale its vectors to the new voxels.

    Voxel centres of the two grids are matched at the corners (``align_corners=True``), so a
    vector along axis ``k`` is multiplied by ``(new_k - 1) / (old_k - 1)``.

    Args:
        disp: ``(B, ndim, *spatial)`` in voxels of the input grid.
        size: the new spatial shape; or give ``scale_factor``.
        scale_factor: new shape = round(old shape * scale_factor).

    Returns:
        ``(B, ndim, *size)`` in voxels of the new grid.
    """
    fn = "morphreg.spatial.resize"
    ndim = check_field(fn, "disp", disp)
    old = list(disp.shape[2:])
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{fn}: give exactly one of 'size' or 'scale_factor'")
    if size is None:
        scale_factor = check_number(fn, "scale_factor", scale_factor, minimum=0, exclusive_minimum=True)
        new = [max(1, math.floor(s * scale_factor + 0.5)) for s in old]
    else:
        new = [int(s) for s in size]
        if len(new) != ndim or min(new) < 1:
            raise ValueError(
                f"{fn}: argument 'size' must be {ndim} positive ints, got {tuple(size)}"
            )
    if new == old:
        return disp
    factors = torch.tensor(
        [(n - 1) / (o - 1) if o > 1 else 1.0 for n, o in zip(new, old)],
        device=disp.device,
        dtype=disp.dtype,
    ).view(1, ndim, *([1] * ndim))
    resampled = F.interpolate(disp, size=new, mode=TORCH_LINEAR[ndim], align_corners=True)
    return resampled * factors


def affine_to_disp(matrix: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Dense displacement of an affine map given in voxel coordinates.

    It stays here, not in :mod:`morphreg.geometry`: it makes a dense field on this module's
    grid (:func:`identity_grid`), and ``spatial`` must not import ``geometry`` (the matrix check
    is the shared :func:`morphreg._checks.check_matrix`).

    The matrix maps a fixed-image voxel index ``x`` (ij order, origin at voxel 0) to the
    moving-image voxel ``A x + t`` it samples, so ``disp(x) = A x + t - x``.

    Args:
        matrix: ``(B, ndim, ndim + 1)`` or ``(B, ndim + 1, ndim + 1)`` (or without batch dim).
        shape: spatial shape of the output field.

    Returns:
        ``(B, ndim, *shape)`` displacement in voxels.
    """
    fn = "morphreg.spatial.affine_to_disp"
    ndim = len(shape)
    if ndim not in (2, 3):
        raise ValueError(f"{fn}: argument 'shape' must have 2 or 3 entries, got {tuple(shape)}")
    matrix = check_matrix(fn, "matrix", matrix, ndim)
    linear = matrix[:, :ndim, :ndim]
    grid = identity_grid(shape, device=matrix.device, dtype=matrix.dtype).reshape(ndim, -1)
    mapped = linear @ grid + matrix[:, :ndim, ndim:]
    return (mapped - grid).reshape(matrix.shape[0], ndim, *shape)


def jacobian(disp: torch.Tensor) -> torch.Tensor:
    """Jacobian matrix of the transform ``x + disp(x)``, by central differences.

    One-sided differences at the borders (exact for linear fields everywhere).

    Args:
        disp: ``(B, ndim, *spatial)`` in voxels; every spatial size must be >= 2.

    Returns:
        ``(B, *spatial, ndim, ndim)`` with ``J[..., i, j] = d(x_i + u_i) / d x_j``.
    """
    fn = "morphreg.spatial.jacobian"
    ndim = check_field(fn, "disp", disp)
    if min(disp.shape[2:]) < 2:
        raise ValueError(f"{fn}: every spatial size of 'disp' must be >= 2, got {tuple(disp.shape)}")
    grads = torch.gradient(disp, dim=tuple(range(2, 2 + ndim)))  # ndim x (B, ndim, *spatial)
    jac = torch.stack(grads, dim=2)  # (B, i, j, *spatial)
    jac = jac.movedim(1, -1).movedim(1, -1)  # (B, *spatial, i, j)
    eye = torch.eye(ndim, device=disp.device, dtype=disp.dtype)
    return jac + eye


def jacobian_det(disp: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of ``x + disp(x)``.

    Args:
        disp: ``(B, ndim, *spatial)`` in voxels.

    Returns:
        ``(B, *spatial)``; values <= 0 mark folding.
    """
    return torch.linalg.det(jacobian(disp))
