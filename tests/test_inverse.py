"""Fixed-point inversion of displacement fields."""

from __future__ import annotations

import pytest
import torch

from morphreg import spatial
from morphreg.inverse import invert_disp


@pytest.mark.parametrize("ndim", [2, 3])
def test_inverse_composes_to_identity(ndim):
    torch.manual_seed(0)
    shape = (24,) * ndim if ndim == 2 else (16,) * 3
    coarse = torch.randn(1, ndim, *(4,) * ndim) * 0.2  # resize scales vectors: ~1.5 voxels, no folding
    disp = spatial.resize(coarse, shape)
    result = invert_disp(disp, iterations=100, tolerance=1e-4)
    inner = (slice(None), slice(None)) + tuple(slice(4, -4) for _ in range(ndim))
    # phi(psi(y)) = y: composing the two leaves (almost) no displacement inside the grid
    assert spatial.compose(disp, result.inverse_disp)[inner].abs().max() < 1e-2
    assert result.residual_max < 1e-2
    # the naive inverse -u is measurably worse (the test can fail)
    assert spatial.compose(disp, -disp)[inner].abs().max() > 5e-2


def test_inverse_of_shift_is_negative_shift():
    disp = torch.full((1, 2, 10, 12), 0.0)
    disp[:, 0] = 1.5
    result = invert_disp(disp)
    torch.testing.assert_close(result.inverse_disp, -disp)
    assert result.residual_max < 1e-5 and result.iterations == 1
