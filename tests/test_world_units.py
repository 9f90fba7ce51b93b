"""``--warp-units mm``: the written vectors move world points where the registration moved them.

The moving image is an analytic function of world position, ``f(q)`` for a RAS point ``q`` in
mm, sampled on its own oblique grid. For every fixed voxel ``x`` the oracle takes its world point
``p = A_fixed @ x`` by hand, adds the stored mm vector and evaluates ``f(p + d_mm(x))``; that must
be the moved image ``morphreg register`` wrote, up to linear-interpolation error of the smooth
``f``. Nothing here uses morphreg's own mm conversion; reading the vectors in another convention
(LPS, voxels, or without the grid's flip) misses by far more than the tolerance.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from morphreg.cli import main
from morphreg.models import VxmDense


def _rotation(angles) -> np.ndarray:
    out = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [k for k in range(3) if k != axis]
        rot = np.eye(3)
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
        out = rot @ out
    return out


def _affine(rotation, spacing, origin, flip_x=False) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rotation @ np.diag(spacing) @ np.diag([-1.0 if flip_x else 1.0, 1.0, 1.0])
    out[:3, 3] = origin
    return out


# world function: smooth (wavelengths 25-40 mm) and asymmetric in every direction
WAVES = np.array([[0.21, -0.11, 0.07], [-0.05, 0.17, 0.12], [0.09, 0.06, -0.19]])
PHASES = np.array([0.3, 1.1, -0.7])


def _world_function(points: np.ndarray) -> np.ndarray:
    """``f`` at RAS points ``(..., 3)`` in mm; values in [0, 4]."""
    return 2.0 + np.sin(points @ WAVES.T + PHASES).sum(-1) * (2.0 / 3.0)


def _sample_on_grid(affine: np.ndarray, shape) -> np.ndarray:
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    index = np.concatenate([index, np.zeros((*shape, 3 - len(shape)))], -1) if len(shape) == 2 else index
    return _world_function(index @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)


CASES = {
    # fixed: oblique, anisotropic, x flipped (negative determinant); moving: another oblique grid
    # covering it with a margin
    3: dict(fixed=_affine(_rotation((0.35, -0.25, 0.5)), (1.3, 1.0, 1.6), (12.0, -30.0, 8.0), flip_x=True),
            fixed_shape=(20, 18, 16),
            moving=_affine(_rotation((-0.2, 0.3, 0.1)), (1.1, 1.2, 1.0), (-25.0, -60.0, -25.0)),
            moving_shape=(64, 64, 64)),
    # 2D: both slices in one oblique plane, the fixed one flipped within it
    2: dict(fixed=_affine(_rotation((0.4, 0.2, -0.3)), (1.2, 0.9, 2.0), (5.0, -7.0, 3.0), flip_x=True),
            fixed_shape=(32, 36),
            moving=None, moving_shape=(80, 80)),
}


def _moving_2d(fixed: np.ndarray, fixed_shape, moving_shape) -> np.ndarray:
    """A grid in the plane of ``fixed``, rotated within it by 0.6 rad, 1 mm pixels, centred on it."""
    unit = fixed.copy()
    unit[:3, :2] /= np.linalg.norm(fixed[:3, :2], axis=0)
    unit[:3, 0] *= -1.0  # undo the in-plane flip: the moving grid is not flipped
    centre = np.linalg.inv(unit) @ fixed @ np.array([*(np.asarray(fixed_shape) - 1) / 2, 0.0, 1.0])
    in_plane = np.eye(4)
    c, s = np.cos(0.6), np.sin(0.6)
    in_plane[:2, :2] = [[c, -s], [s, c]]
    in_plane[:2, 3] = centre[:2] - in_plane[:2, :2] @ ((np.asarray(moving_shape) - 1) / 2)
    return unit @ in_plane


def _deforming_model(ndim: int, path) -> None:
    """A small VxmDense whose flow head gives displacements of a few voxels, saved to ``path``."""
    torch.manual_seed(0)
    model = VxmDense(ndim, enc=(4, 4, 4, 4), dec=(4, 4, 4, 4, 4, 4, 4))
    with torch.no_grad():
        model.flow.weight.normal_(0.0, 1.0)
        model.flow.bias.copy_(torch.tensor([1.5, -2.0, 1.0][:ndim]))
    model.save(path, metadata={"normalise": "minmax"})


@pytest.mark.parametrize("ndim", [3, 2])
def test_mm_warp_maps_world_points_like_the_registration(ndim, tmp_path):
    case = CASES[ndim]
    fixed_affine, fixed_shape = case["fixed"], case["fixed_shape"]
    moving_affine = case["moving"] if ndim == 3 else _moving_2d(fixed_affine, fixed_shape, case["moving_shape"])
    assert np.linalg.det(fixed_affine[:3, :3]) < 0  # the fixed grid is flipped
    as_file = (lambda a: a) if ndim == 3 else (lambda a: a[..., None])
    rng = np.random.default_rng(0)
    fixed_data = rng.random(fixed_shape).astype(np.float32)  # content does not matter here
    nib.save(nib.Nifti1Image(as_file(fixed_data), fixed_affine), tmp_path / "fixed.nii.gz")
    moving_data = _sample_on_grid(moving_affine, case["moving_shape"])
    nib.save(nib.Nifti1Image(as_file(moving_data), moving_affine), tmp_path / "moving.nii.gz")
    _deforming_model(ndim, tmp_path / "model.pt")
    assert main(["register", "--model", str(tmp_path / "model.pt"), "--moving", str(tmp_path / "moving.nii.gz"),
                 "--fixed", str(tmp_path / "fixed.nii.gz"), "--moved", str(tmp_path / "moved.nii.gz"),
                 "--warp", str(tmp_path / "warp.nii.gz"), "--warp-units", "mm"]) == 0

    warp_img = nib.load(tmp_path / "warp.nii.gz")
    affine = warp_img.affine  # as stored (float32 sform), the frame the vectors live in
    d_mm = np.asarray(warp_img.dataobj, dtype=np.float64).reshape(*fixed_shape, 3)
    moved = np.asarray(nib.load(tmp_path / "moved.nii.gz").dataobj, dtype=np.float64).reshape(fixed_shape)

    # the oracle: world point of every fixed voxel, by hand, plus the stored mm vector
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in fixed_shape], indexing="ij"), -1)
    if ndim == 2:
        index = np.concatenate([index, np.zeros((*fixed_shape, 1))], -1)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    target = world + d_mm
    # where the target lies inside the fixed grid (the moved image pads by the border value
    # outside it, which no world function reproduces) and the deformation is really there
    target_index = (target - affine[:3, 3]) @ np.linalg.pinv(affine[:3, :ndim]).T
    upper = np.asarray(fixed_shape, dtype=np.float64) - 1
    inside = np.all((target_index >= 0) & (target_index <= upper), axis=-1)
    assert inside.mean() > 0.5
    assert np.linalg.norm(d_mm, axis=-1)[inside].mean() > 1.5  # millimetres: a real deformation
    if ndim == 2:  # in-plane vectors: no component along the slice normal
        normal = np.cross(affine[:3, 0], affine[:3, 1])
        assert np.abs(d_mm @ normal / np.linalg.norm(normal)).max() < 1e-4

    def error(points):
        return np.abs(_world_function(points) - moved)[inside]

    # linear interpolation (twice: onto the fixed grid, then the warp) of the smooth f costs little
    assert error(target).max() < 0.05, error(target).max()  # measured 0.026 (3D), 0.016 (2D)
    # the wrong readings of the same numbers miss by far more
    d_voxel = target_index - index[..., :ndim]
    lps = d_mm * np.array([-1.0, -1.0, 1.0])
    unflipped = (d_voxel * np.array([-1.0, 1.0, 1.0][:ndim])) @ affine[:3, :ndim].T  # grid's x flip ignored
    voxel_as_mm = np.concatenate([d_voxel, np.zeros((*fixed_shape, 3 - ndim))], -1)
    for name, wrong in (("LPS", world + lps), ("unflipped", world + unflipped), ("negated", world - d_mm),
                        ("voxels", world + voxel_as_mm)):
        assert error(wrong).max() > 0.2, name  # measured 0.30-1.5

    # and `morphreg warp` with the mm file reproduces the moved image
    assert main(["warp", "--moving", str(tmp_path / "moving.nii.gz"), "--warp", str(tmp_path / "warp.nii.gz"),
                 "--moved", str(tmp_path / "again.nii.gz")]) == 0
    again = np.asarray(nib.load(tmp_path / "again.nii.gz").dataobj, dtype=np.float64).reshape(fixed_shape)
    np.testing.assert_allclose(again, moved, atol=1e-4)
