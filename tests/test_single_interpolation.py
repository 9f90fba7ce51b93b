"""The moved image and labels of a pair on different grids are the original moving image sampled
once through the composed map, as SimpleITK (and ANTs where installed) apply morphreg's exported
ITK field: fixed voxel x -> moving voxel inv(A_moving) @ A_fixed @ (x + u(x)).

The old path (resample onto the fixed grid, zeros outside, then warp again) differs from them by
a few percent of the range, also two voxels inside the field of view: the tests check it does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from morphreg import io, spatial
from morphreg.io import save_itk_warp
from morphreg.workflows.files import PairOnGrid, load_pair, register_pair, warp_across_grids
from morphreg.workflows.pipeline import as_output

sitk = pytest.importorskip("SimpleITK")


def _rotation(angles: tuple[float, float, float]) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _affine(scales, angles, origin) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = _rotation(angles) @ np.diag(scales)
    a[:3, 3] = origin
    return a


#: moving grid (shape, affine) and fixed grid, each a different kind of "grids differ"
GRIDS = {
    # oblique and anisotropic on both sides, the fixed grid flipped along x
    "oblique-anisotropic-flipped": ((22, 18, 16), _affine([1.0, 1.3, 1.6], (0.2, -0.1, 0.3), [-11, -12, -13]),
                                    (20, 20, 18), _affine([-1.1, 1.0, 1.2], (0.0, 0.15, -0.1), [10, -10, -10])),
    # a different shape and voxel size, axis-aligned, the moving grid flipped along y and z
    "different-shape": ((24, 20, 14), _affine([1.0, -1.0, -1.5], (0, 0, 0), [-12, 10, 10]),
                        (17, 21, 19), _affine([1.4, 1.0, 1.1], (0, 0, 0), [-11, -10, -10])),
}


def _smooth(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (ndimage.gaussian_filter(rng.random(shape), 2.0) * 100).astype(np.float32)


def _labels(shape, seed=0) -> np.ndarray:
    return (np.digitize(_smooth(shape, seed + 7), [48, 50, 52]) * 3).astype(np.int16)


def _disp(shape, amplitude=1.5) -> torch.Tensor:
    rng = np.random.default_rng(4)
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 3) for _ in shape])
    return torch.from_numpy(field / np.abs(field).max() * amplitude).float()[None]


def _sitk_image(volume: io.Volume, path) -> None:
    io.save_volume(volume, path)


def _sitk_apply(moving_path, fixed_path, field_path, nearest=False) -> np.ndarray:
    moving = sitk.ReadImage(str(moving_path), sitk.sitkFloat64)
    fixed = sitk.ReadImage(str(fixed_path), sitk.sitkFloat64)
    transform = sitk.DisplacementFieldTransform(sitk.ReadImage(str(field_path), sitk.sitkVectorFloat64))
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(moving, fixed, transform, interp, 0.0, sitk.sitkFloat64)
    return np.transpose(sitk.GetArrayFromImage(out))


def _inside_fov(moving: io.Volume, fixed: io.Volume, disp: torch.Tensor, margin: float) -> np.ndarray:
    """Fixed voxels whose moving sample lies at least ``margin`` voxels inside the moving image."""
    vox = np.linalg.inv(moving.affine) @ fixed.affine
    points = (spatial.identity_grid(fixed.shape) + disp[0]).numpy().reshape(3, -1)
    coords = vox[:3, :3] @ points + vox[:3, 3:4]
    upper = np.asarray(moving.shape)[:, None] - 1 - margin
    return np.all((coords >= margin) & (coords <= upper), axis=0).reshape(fixed.shape)


def _pair_files(tmp_path, name):
    m_shape, m_affine, f_shape, f_affine = GRIDS[name]
    moving = io.Volume(_smooth(m_shape), m_affine)
    fixed = io.Volume(_smooth(f_shape, seed=1), f_affine)
    moving_seg = io.Volume(_labels(m_shape), m_affine)
    for vol, stem in ((moving, "moving"), (fixed, "fixed"), (moving_seg, "moving_seg")):
        io.save_volume(vol, tmp_path / f"{stem}.nii.gz")
    return moving, fixed


def _old_double_interpolation(pair: PairOnGrid, disp: torch.Tensor) -> np.ndarray:
    """What morphreg wrote before: resampled onto the fixed grid (zeros outside), then warped."""
    on_grid = io.resample_to(pair.moving_native, pair.fixed, order=1)
    return spatial.warp(io.to_tensor(on_grid), disp)[0, 0].numpy()


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_moved_matches_simpleitk_applying_the_exported_field(tmp_path, name):
    moving, fixed = _pair_files(tmp_path, name)
    pair = load_pair(tmp_path / "moving.nii.gz", tmp_path / "fixed.nii.gz", tmp_path / "moving_seg.nii.gz")
    assert pair.resampled and pair.moving_native is not None
    disp = _disp(fixed.shape)
    result = register_pair(pair, lambda m, f: as_output(disp.clone()))
    save_itk_warp(result.disp, tmp_path / "warp.nii.gz", pair.fixed.affine)
    theirs = _sitk_apply(tmp_path / "moving.nii.gz", tmp_path / "fixed.nii.gz", tmp_path / "warp.nii.gz")
    ours = result.moved.data
    scale = float(np.ptp(moving.data))
    inner = _inside_fov(pair.moving_native, pair.fixed, disp, margin=2.0)
    assert inner.mean() > 0.2, inner.mean()  # the check covers a good part of the image...
    assert (~inner).mean() > 0.1  # ... and the field of view's border is in the image
    assert np.abs(ours - theirs)[inner].max() / scale < 1e-4
    # everywhere, up to voxels whose sample falls within float error of ITK's half-voxel border
    assert np.mean(np.abs(ours - theirs) / scale > 1e-4) < 1e-3
    # the old double interpolation fails the same check, two voxels inside the field of view too
    old = _old_double_interpolation(pair, disp)
    assert np.abs(old - theirs)[inner].max() / scale > 1e-3
    # labels: nearest neighbour through the same map, as SimpleITK's nearest
    seg_theirs = _sitk_apply(tmp_path / "moving_seg.nii.gz", tmp_path / "fixed.nii.gz", tmp_path / "warp.nii.gz",
                             nearest=True)
    assert result.moved_seg.data.dtype == np.int16
    assert np.mean(result.moved_seg.data != seg_theirs) < 1e-3


def test_ants_applies_the_exported_field_as_morphreg_writes(tmp_path):
    ants = pytest.importorskip("ants")
    moving, fixed = _pair_files(tmp_path, "oblique-anisotropic-flipped")
    pair = load_pair(tmp_path / "moving.nii.gz", tmp_path / "fixed.nii.gz")
    disp = _disp(fixed.shape)
    result = register_pair(pair, lambda m, f: as_output(disp.clone()))
    save_itk_warp(result.disp, tmp_path / "warp.nii.gz", pair.fixed.affine)
    theirs = ants.apply_transforms(ants.image_read(str(tmp_path / "fixed.nii.gz")),
                                   ants.image_read(str(tmp_path / "moving.nii.gz")),
                                   [str(tmp_path / "warp.nii.gz")], interpolator="linear").numpy()
    inner = _inside_fov(pair.moving_native, pair.fixed, disp, margin=2.0)
    assert np.abs(result.moved.data - theirs)[inner].max() / float(np.ptp(moving.data)) < 1e-4


def test_same_grid_keeps_the_plain_warp():
    """On one grid nothing changes: moved = spatial.warp(moving, disp) (border padding)."""
    affine = _affine([1.0, 1.2, 0.9], (0.1, 0.0, 0.0), [0, 0, 0])
    moving = io.Volume(_smooth((12, 10, 9)), affine)
    pair = PairOnGrid(moving, io.Volume(_smooth((12, 10, 9), 1), affine))
    disp = _disp((12, 10, 9))
    result = register_pair(pair, lambda m, f: as_output(disp.clone()))
    np.testing.assert_array_equal(result.moved.data, spatial.warp(io.to_tensor(moving), disp)[0, 0].numpy())


def test_zero_field_reproduces_the_pair_on_the_fixed_grid():
    """With no field, warp_across_grids is the resampling the registration sees (pair.moving)."""
    m_shape, m_affine, f_shape, f_affine = GRIDS["different-shape"]
    moving, fixed = io.Volume(_smooth(m_shape), m_affine), io.Volume(_smooth(f_shape), f_affine)
    on_grid = warp_across_grids(moving, fixed, None)
    zero = warp_across_grids(moving, fixed, torch.zeros(1, 3, *f_shape))
    np.testing.assert_array_equal(on_grid.data, zero.data)
    assert on_grid.shape == f_shape and np.allclose(on_grid.affine, f_affine)
