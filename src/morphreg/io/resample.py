"""Resample a :class:`~.volume.Volume` onto another's voxel grid through world space (scipy; the
matrix is :func:`morphreg.geometry.fixed_to_moving_voxels`)."""

from __future__ import annotations

import numpy as np

from ..geometry import fixed_to_moving_voxels
from .volume import Volume

#: Sample coordinates within this many voxels of the moving image's first or last plane count as on
#: it. Matrix products round border coordinates to e.g. -1e-17 or n-1+1e-15; a tolerance-free test
#: reads those as outside and drops whole border planes. NIfTI stores the sform in float32, so two
#: grids that share voxels exactly differ by up to ~1e-5 voxel once written and read back (1e-6
#: still lost the border plane of a flipped copy); 1e-3 voxel covers that with a wide margin and
#: changes a linearly interpolated value by at most 1e-3 of one voxel's intensity step.
GRID_TOLERANCE_VOXELS = 1e-3


def resample_to(moving: Volume, fixed: Volume, order: int = 1) -> Volume:
    """Resample ``moving`` onto ``fixed``'s voxel grid through world space.

    Fixed voxel ``x`` samples moving voxel ``inv(A_moving) @ A_fixed @ x``; outside the moving
    image the value is 0. Coordinates within :data:`GRID_TOLERANCE_VOXELS` of the moving image's
    border planes count as inside, so every voxel the two grids share is kept (a flipped, cropped
    or integer-shifted grid is an exact copy of the overlapping voxels).

    Args:
        moving: the volume to resample, 2D or 3D (same ndim as ``fixed``).
        fixed: defines the output grid (shape and affine).
        order: 1 (linear; integer data are treated as intensities and returned as float32) or
            0 (nearest; label maps keep their dtype).

    Returns:
        :class:`Volume` with ``fixed``'s shape, affine and header.

    Raises:
        ValueError: for a bad ``order``, mismatched dimensionality, or a 2D moving slice that
            does not lie in the fixed slice's plane.
    """
    from scipy import ndimage  # imported where needed: ~0.3 s

    fn = "morphreg.io.resample_to"
    if order not in (0, 1):
        raise ValueError(f"{fn}: argument 'order' must be 0 (nearest) or 1 (linear), got {order!r}")
    if moving.ndim != fixed.ndim:
        raise ValueError(f"{fn}: 'moving' is {moving.ndim}D but 'fixed' is {fixed.ndim}D; both must match")
    ndim = fixed.ndim
    vox = fixed_to_moving_voxels(moving.affine, fixed.affine, ndim)
    data = moving.data
    if order == 1 and data.dtype.kind != "f":
        data = data.astype(np.float32)
    index = np.indices(fixed.shape, dtype=np.float64).reshape(ndim, -1)
    coords = vox[:ndim, :ndim] @ index + vox[:ndim, 3:4]  # (ndim, N) moving voxel coordinates
    upper = np.asarray(moving.shape, dtype=np.float64)[:, None] - 1.0
    inside = np.all((coords >= -GRID_TOLERANCE_VOXELS) & (coords <= upper + GRID_TOLERANCE_VOXELS), axis=0)
    np.clip(coords, 0.0, upper, out=coords)
    if order == 0:
        coords = np.rint(coords)  # halfway cases round to even, as numpy does
    values = ndimage.map_coordinates(data, coords, order=order, mode="nearest")
    values[~inside] = 0
    out = values.reshape(fixed.shape).astype(data.dtype, copy=False)
    return Volume(out, fixed.affine.copy(), fixed.header)
