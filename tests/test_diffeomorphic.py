"""Diffeomorphic VxmDense (``int_steps > 0``): no folding, a true inverse, half-resolution integration.

The U-Net's output is replaced by a chosen velocity field (``predict_field`` patched on the
instance), so everything after the network — downsizing, scaling and squaring, upsampling,
cropping, the inverse — runs through the product's own code on a field whose size we control.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from morphreg import metrics, spatial
from morphreg.models import VxmDense

SMALL = {"enc": (4, 4, 4, 4), "dec": (4, 4, 4, 4, 4, 4, 4)}


def _random_velocity(shape, sigma: float, largest: float, seed: int) -> torch.Tensor:
    """``(1, ndim, *shape)`` Gaussian-smoothed noise (``sigma`` voxels), scaled so that its longest
    vector is ``largest`` voxels."""
    rng = np.random.default_rng(seed)
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap") for _ in shape])
    field *= largest / np.linalg.norm(field, axis=0).max()
    return torch.from_numpy(field[None]).float()


def _network_output(velocity: torch.Tensor, **flags):
    """What VxmDense returns when its U-Net predicts ``velocity`` (full-resolution, padded grid)."""
    ndim = velocity.shape[1]
    model = VxmDense(ndim, **SMALL, **flags)
    assert all(s % model.multiple == 0 for s in velocity.shape[2:])  # no padding: the field is the grid
    model.predict_field = lambda moving, fixed: velocity
    image = torch.rand(1, 1, *velocity.shape[2:])
    with torch.no_grad():
        return model(image, image)


# large: used directly as a displacement, each of these folds 8-20 % of the voxels
LARGE = {2: ((64, 64), 4.0, 12.0, 0), 3: ((32, 32, 32), 4.0, 9.0, 1)}


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize(("int_steps", "int_downsize"), [(4, 1), (7, 1), (7, 2)])
def test_large_random_velocity_integrates_without_folding(ndim, int_steps, int_downsize):
    shape, sigma, largest, seed = LARGE[ndim]
    velocity = _random_velocity(shape, sigma, largest, seed)
    assert metrics.folding_fraction(velocity).item() > 5.0  # as a displacement it folds
    out = _network_output(velocity, int_steps=int_steps, int_downsize=int_downsize)
    assert out.disp.norm(dim=1).max() > 0.5 * largest  # the deformation is large too
    assert metrics.folding_fraction(out.disp).item() == 0.0
    assert (spatial.jacobian_det(out.disp) > 0).all()


# smooth and moderate (largest vector 6 voxels in 2D, 4 in 3D): accurate on the grid
SMOOTH = {2: ((64, 64), 8.0, 6.0, 1), 3: ((32, 32, 32), 6.0, 4.0, 1)}
INTERIOR = 6  # voxels from the border; nearer, trajectories leave the grid and are clamped


@pytest.mark.parametrize("ndim", [2, 3])
def test_inverse_disp_composed_with_disp_is_the_identity(ndim):
    shape, sigma, largest, seed = SMOOTH[ndim]
    out = _network_output(_random_velocity(shape, sigma, largest, seed), int_steps=7, bidir=True)
    inner = (0, *[slice(INTERIOR, -INTERIOR)] * ndim)
    mean_size = out.disp.norm(dim=1).mean()
    assert mean_size > 1.0
    # stated tolerance: 0.1 voxel anywhere in the interior, 0.03 voxel on average over the image
    # (measured 0.035 / 0.011 in 2D, 0.030 / 0.011 in 3D)
    for first, second in ((out.disp, out.inverse_disp), (out.inverse_disp, out.disp)):
        residual = spatial.compose(first, second).norm(dim=1)
        assert residual[inner].max() < 0.1
        assert residual.mean() < 0.03
    # the first-order inverse -disp is far worse: the test can tell a real inverse from it
    assert spatial.compose(out.disp, -out.disp).norm(dim=1).mean() > 0.1


@pytest.mark.parametrize("ndim", [2, 3])
def test_half_resolution_integration_agrees_with_full_resolution(ndim):
    shape, sigma, largest, seed = SMOOTH[ndim]
    velocity = _random_velocity(shape, sigma, largest, seed)
    full = _network_output(velocity, int_steps=7, int_downsize=1)
    half = _network_output(velocity, int_steps=7, int_downsize=2)
    assert half.velocity.shape[2:] == tuple(s // 2 for s in shape)
    assert half.disp.shape == full.disp.shape
    # stated tolerance: 0.3 voxel anywhere, 0.1 voxel on average, for fields of up to 6 voxels
    # (measured 0.13 / 0.04 in 2D, 0.20 / 0.07 in 3D)
    difference = (half.disp - full.disp).norm(dim=1)
    assert difference.max() < 0.3
    assert difference.mean() < 0.1
    assert full.disp.norm(dim=1).mean() > 1.0
