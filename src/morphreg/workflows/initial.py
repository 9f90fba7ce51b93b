"""Starting a registration from a given transform (an affine matrix or a displacement field).

The initial transform is applied first: the registration sees ``moving`` warped by it and its
result is composed after it, so the returned field maps fixed points through both
(``c(x) = d(x) + d0(x + d(x))``). For a world matrix ``W0`` and an affine result ``W1`` the
combined world matrix is ``W0 @ W1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import io, spatial
from .classical import Registration


def matrix_disp(matrix_world: np.ndarray, fixed: io.Volume) -> torch.Tensor:
    """Voxel displacement ``(1, ndim, *spatial)`` on ``fixed``'s grid of a world matrix.

    Args:
        matrix_world: ``(4, 4)`` RAS mm, fixed-image point -> moving-image point. The moving
            image is assumed resampled onto the fixed grid (as :func:`load_pair` does), so the
            voxel matrix is ``inv(A) @ W @ A`` with the fixed image's affine ``A``.
        fixed: the fixed image (its grid).
    """
    affine = fixed.affine
    voxel = np.linalg.inv(affine) @ np.asarray(matrix_world, dtype=np.float64) @ affine
    index = list(range(fixed.ndim)) + [3]
    if fixed.ndim == 2 and (np.abs(voxel[2, [0, 1, 3]]).max() > 1e-3 or np.abs(voxel[:2, 2]).max() > 1e-3):
        raise ValueError("the initial matrix moves points out of the 2D image's plane; a 2D image needs an "
                         "in-plane transform")
    return spatial.affine_to_disp(torch.from_numpy(voxel[np.ix_(index[:-1], index)]).float(), fixed.shape)


def with_initial(register: Any, init_disp: torch.Tensor, init_matrix: np.ndarray | None = None) -> Registration:
    """``register`` started from ``init_disp`` (``(1, ndim, *spatial)`` voxels on the fixed grid).

    The result's ``matrix_world`` (when ``register`` has one) is ``init_matrix @ matrix_world``;
    with an initial field that is not a matrix (``init_matrix`` ``None``) no matrix is reported.
    """
    holder = Registration(lambda m, f: m)

    def run(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        start = init_disp.to(moving.device, moving.dtype)
        found = register(spatial.warp(moving, start), fixed)
        found = found.disp if hasattr(found, "disp") else found
        inner = getattr(register, "matrix_world", None)
        if inner is not None and init_matrix is not None:
            holder.matrix_world = np.asarray(init_matrix) @ np.asarray(inner)
        return spatial.compose(start, found.to(start.device))

    holder.run = run
    return holder
