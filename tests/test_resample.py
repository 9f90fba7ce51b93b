"""``io.resample_to`` against independent oracles, for images (linear) and label maps (nearest).

Oracles:

* integer index maps (``np.flip``, slicing) where the two grids share their voxels exactly:
  flips along each axis, crops, integer shifts; the result must then be an exact copy;
* SimpleITK ``Resample`` where they do not: oblique anisotropic grids, a 2x coarser rotated grid.
  The ITK images are built from the affines alone (LPS direction, spacing, origin; ITK's index
  order is the reverse of numpy's, so arrays are transposed). ITK accepts points up to half a
  voxel outside the image and rounds nearest-neighbour ties up, so the comparison is made where
  the sample point is inside the moving image (within the 1e-3 voxel border tolerance) and not
  on a rounding tie; outside by more than that, morphreg must give 0.

The grids go through NIfTI files where that matters: the sform is stored as float32, so grids
that share their voxels exactly in float64 differ by ~1e-5 voxel once written (a border plane
lost there is the bug of issue 9 again).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from morphreg import io
from morphreg.cli import main
from morphreg.io import Volume

sitk = pytest.importorskip("SimpleITK")

INSIDE_TOLERANCE = 1e-3  # voxels; the border tolerance resample_to promises
TIE_MARGIN = 1e-4  # voxels from a nearest-neighbour rounding tie (x.5), where ITK and numpy differ


def _rotation(angles: tuple[float, float, float]) -> np.ndarray:
    """3x3 rotation about x, then y, then z (radians)."""
    out = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [k for k in range(3) if k != axis]
        rot = np.eye(3)
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
        out = rot @ out
    return out


def _affine(rotation: np.ndarray, spacing, origin) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rotation @ np.diag(spacing)
    out[:3, 3] = origin
    return out


# oblique (rotated about all three axes), anisotropic, non-round origin
OBLIQUE = _affine(_rotation((0.3, -0.2, 0.5)), (0.9, 1.3, 2.1), (-40.2, 17.5, 8.3))
# the plane of the 2D slices: an oblique orientation; in-plane geometry varies per grid below
PLANE = _rotation((0.4, 0.25, -0.6))
SHAPE3 = (13, 11, 9)
SHAPE2 = (17, 14)


def _in_plane(angle: float, spacing: tuple[float, float], origin: tuple[float, float]) -> np.ndarray:
    """4x4 affine of a 2D grid in the oblique PLANE: rotated by ``angle`` within it.

    The third column is the plane normal (1.5 mm), as a NIfTI slice would carry it.
    """
    local = _affine(_rotation((0.0, 0.0, angle)), (*spacing, 1.5), (*origin, 0.0))
    frame = np.eye(4)
    frame[:3, :3] = PLANE
    frame[:3, 3] = (11.3, -7.9, 23.1)
    return frame @ local


OBLIQUE2 = _in_plane(0.35, (0.8, 1.7), (-3.3, 4.1))


def _images(shape, seed=0):
    """A float32 image without zeros, and an int16 label map with labels 1..40 (no background)."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(1.0, 2.0, shape).astype(np.float32)
    labels = rng.integers(1, 41, shape).astype(np.int16)
    return image, labels


def _flip(affine: np.ndarray, shape, axis: int) -> np.ndarray:
    """Affine of the grid whose voxel i along ``axis`` is voxel n-1-i of ``affine``'s grid."""
    flip = np.eye(4)
    flip[axis, axis] = -1.0
    flip[axis, 3] = shape[axis] - 1
    return affine @ flip


def _shift(affine: np.ndarray, offset) -> np.ndarray:
    """Affine of the grid whose voxel 0 is voxel ``offset`` of ``affine``'s grid."""
    step = np.eye(4)
    step[: len(offset), 3] = offset
    return affine @ step


def _assert_copy(out: np.ndarray, expected: np.ndarray, order: int, exact: bool) -> None:
    """Labels (nearest) always match exactly; images (linear) exactly in memory and to float
    round-off (1e-5, values in [1, 2]) after the float32 rounding of a NIfTI affine."""
    assert out.dtype == expected.dtype
    assert int(((out == 0) & (expected != 0)).sum()) == 0  # no voxel of the overlap is lost
    if order == 0 or exact:
        np.testing.assert_array_equal(out, expected)
    else:
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def _through_nifti(volume: Volume, path: Path) -> Volume:
    """Write and read back: the affine is then rounded to float32, as in any real file."""
    data = volume.data if volume.ndim == 3 else volume.data[..., None]
    nib.save(nib.Nifti1Image(data, volume.affine), path)
    return io.load_volume(path)


# --------------------------------------------------------------------------------------------
# exact oracles: grids that share voxels


@pytest.mark.parametrize(
    ("shape", "affine", "axis"),
    [(SHAPE3, OBLIQUE, 0), (SHAPE3, OBLIQUE, 1), (SHAPE3, OBLIQUE, 2), (SHAPE2, OBLIQUE2, 0), (SHAPE2, OBLIQUE2, 1)],
    ids=["3d-x", "3d-y", "3d-z", "2d-x", "2d-y"],
)
@pytest.mark.parametrize("via_file", [False, True], ids=["memory", "nifti"])
def test_flipped_grid_is_an_exact_copy(shape, affine, axis, via_file, tmp_path):
    image, labels = _images(shape)
    fixed = Volume(np.zeros(shape, np.float32), affine)
    flipped = _flip(affine, shape, axis)
    for data, order in ((image, 1), (labels, 0)):
        moving = Volume(np.flip(data, axis).copy(), flipped)
        if via_file:
            fixed = _through_nifti(fixed, tmp_path / "fixed.nii")
            moving = _through_nifti(moving, tmp_path / "moving.nii")
        out = io.resample_to(moving, fixed, order=order)
        _assert_copy(out.data, data, order, exact=not via_file)  # every voxel, borders included
        np.testing.assert_array_equal(out.affine, fixed.affine)


def test_flipped_along_every_axis_at_once_is_an_exact_copy():
    image, labels = _images(SHAPE3, seed=1)
    flipped = OBLIQUE
    for axis in range(3):
        flipped = _flip(flipped, SHAPE3, axis)
    for data, order in ((image, 1), (labels, 0)):
        moving = Volume(np.flip(data).copy(), flipped)
        out = io.resample_to(moving, Volume(np.zeros(SHAPE3, np.float32), OBLIQUE), order=order)
        np.testing.assert_array_equal(out.data, data)


GRID_12 = _affine(np.eye(3), (1.2, 1.2, 1.2), (-90.6, -126.0, -72.0))  # a 1.2 mm grid
GRID_12_OBLIQUE = _affine(_rotation((0.1, 0.0, -0.3)), (1.2, 1.2, 1.2), (-90.6, -126.0, -72.0))


@pytest.mark.parametrize("grid", [GRID_12, GRID_12_OBLIQUE], ids=["axial", "oblique"])
@pytest.mark.parametrize("via_file", [False, True], ids=["memory", "nifti"])
def test_crop_of_a_grid_is_an_exact_copy_of_the_overlap(grid, via_file, tmp_path):
    full_shape, offset, crop_shape = (26, 24, 23), (3, 2, 1), (20, 20, 20)
    image, labels = _images(full_shape, seed=2)
    crop = tuple(slice(o, o + n) for o, n in zip(offset, crop_shape))
    crop_affine = _shift(grid, offset)
    for data, order in ((image, 1), (labels, 0)):
        full = Volume(data, grid)
        cropped = Volume(np.zeros(crop_shape, data.dtype), crop_affine)
        if via_file:
            full = _through_nifti(full, tmp_path / "full.nii")
            cropped = _through_nifti(cropped, tmp_path / "crop.nii")
        # the full image onto the crop's grid: the crop, all 8000 voxels
        out = io.resample_to(full, cropped, order=order)
        _assert_copy(out.data, data[crop], order, exact=not via_file)
        # the crop onto the full grid: the crop where they overlap, 0 elsewhere
        back = io.resample_to(Volume(data[crop], cropped.affine), full, order=order)
        expected = np.zeros_like(data)
        expected[crop] = data[crop]
        _assert_copy(back.data, expected, order, exact=not via_file)
        assert np.all(back.data[expected == 0] == 0)


@pytest.mark.parametrize(
    ("shape", "affine", "shift"),
    [(SHAPE3, OBLIQUE, (4, -3, 2)), (SHAPE3, GRID_12, (-5, 0, 7)), (SHAPE2, OBLIQUE2, (-6, 5))],
    ids=["3d-oblique", "3d-1.2mm", "2d-oblique"],
)
def test_integer_shift_partly_outside_is_an_exact_shift(shape, affine, shift):
    image, labels = _images(shape, seed=3)
    fixed = Volume(np.zeros(shape, np.float32), affine)
    moving_affine = _shift(affine, shift)  # moving voxel v lies at fixed voxel v + shift
    dst = tuple(slice(max(s, 0), n + min(s, 0)) for s, n in zip(shift, shape))
    src = tuple(slice(max(-s, 0), n - max(s, 0)) for s, n in zip(shift, shape))
    for data, order in ((image, 1), (labels, 0)):
        out = io.resample_to(Volume(data, moving_affine), fixed, order=order)
        expected = np.zeros_like(data)
        expected[dst] = data[src]
        _assert_copy(out.data, expected, order, exact=True)
        assert np.all(out.data[expected == 0] == 0)


# --------------------------------------------------------------------------------------------
# SimpleITK oracle: grids that share no voxels


def _itk_image(data: np.ndarray, affine: np.ndarray):
    """A SimpleITK image of ``data`` (numpy index order) on the grid of ``affine`` (RAS+).

    ITK is LPS: the first two rows of the affine change sign. ITK's index (i, j, k) is numpy's
    array axis order reversed, so the array is transposed. A 2D array is a one-slice 3D image
    whose third axis is the affine's third column.
    """
    if data.ndim == 2:
        data = data[..., None]
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.T), isVector=False)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    return image


def _itk_resample(moving: Volume, fixed: Volume, order: int) -> np.ndarray:
    interpolator = sitk.sitkLinear if order == 1 else sitk.sitkNearestNeighbor
    out = sitk.Resample(
        _itk_image(moving.data, moving.affine),
        _itk_image(np.zeros(fixed.shape, moving.data.dtype), fixed.affine),
        sitk.Transform(),
        interpolator,
        0.0,
    )
    result = sitk.GetArrayFromImage(out).T
    return result[..., 0] if fixed.ndim == 2 else result


def _moving_coordinates(moving: Volume, fixed: Volume) -> np.ndarray:
    """``(ndim, *fixed.shape)`` continuous moving voxel index of every fixed voxel, via ITK.

    Used only to decide where the two oracles must agree (inside, not on a tie), never for values.
    """
    fixed_itk = _itk_image(np.zeros(fixed.shape, np.float32), fixed.affine)
    moving_itk = _itk_image(np.zeros(moving.shape, np.float32), moving.affine)
    coords = np.empty((fixed.ndim, *fixed.shape))
    for index in np.ndindex(*fixed.shape):
        itk_index = [int(i) for i in index] + [0] * (3 - fixed.ndim)
        point = fixed_itk.TransformIndexToPhysicalPoint(itk_index)
        continuous = moving_itk.TransformPhysicalPointToContinuousIndex(point)
        if fixed.ndim == 2:
            assert abs(continuous[2]) < 1e-6  # in-plane grids by construction
        coords[(slice(None), *index)] = continuous[: fixed.ndim]
    return coords


def _check_against_itk(moving_image: Volume, moving_labels: Volume, fixed: Volume, min_inside: float):
    coords = _moving_coordinates(moving_image, fixed)
    upper = np.asarray(moving_image.shape, dtype=np.float64).reshape(-1, *[1] * fixed.ndim) - 1
    inside = np.all((coords >= -INSIDE_TOLERANCE) & (coords <= upper + INSIDE_TOLERANCE), axis=0)
    # a band between the strict and the tolerant test: neither oracle is asked about it
    outside = np.any((coords < -2 * INSIDE_TOLERANCE) | (coords > upper + 2 * INSIDE_TOLERANCE), axis=0)
    not_tie = np.all(np.abs(coords - np.floor(coords) - 0.5) > TIE_MARGIN, axis=0)
    assert inside.mean() > min_inside, inside.mean()  # the test grids overlap substantially
    assert outside.any()  # ... and not completely: the zero padding is tested too
    for moving, order in ((moving_image, 1), (moving_labels, 0)):
        ours = io.resample_to(moving, fixed, order=order).data
        oracle = _itk_resample(moving, fixed, order)
        assert ours.dtype == moving.data.dtype
        if order == 1:
            np.testing.assert_allclose(ours[inside], oracle[inside], rtol=0, atol=1e-5)
        else:
            compared = inside & not_tie
            assert compared.sum() > 0.95 * inside.sum()
            np.testing.assert_array_equal(ours[compared], oracle[compared])
        assert np.all(ours[outside] == 0)
        assert np.all(ours[inside] != 0)  # the moving images have no zeros: nothing inside is lost


# a second oblique anisotropic grid over roughly the same region as OBLIQUE
OBLIQUE_B = _affine(_rotation((-0.45, 0.3, 0.15)), (1.1, 0.8, 1.7), (-38.0, 14.0, 4.0))


@pytest.mark.parametrize("via_file", [False, True], ids=["memory", "nifti"])
def test_oblique_anisotropic_3d_matches_simpleitk(via_file, tmp_path):
    image, labels = _images(SHAPE3, seed=4)
    moving_image, moving_labels = Volume(image, OBLIQUE), Volume(labels, OBLIQUE)
    fixed = Volume(np.zeros((12, 14, 8), np.float32), OBLIQUE_B)
    if via_file:
        moving_image = _through_nifti(moving_image, tmp_path / "img.nii")
        moving_labels = _through_nifti(moving_labels, tmp_path / "seg.nii")
        fixed = _through_nifti(fixed, tmp_path / "fixed.nii")
    _check_against_itk(moving_image, moving_labels, fixed, min_inside=0.3)


def test_oblique_anisotropic_2d_matches_simpleitk():
    image, labels = _images(SHAPE2, seed=5)
    fixed = Volume(np.zeros((13, 21), np.float32), _in_plane(-0.2, (1.1, 0.7), (-4.0, 6.0)))
    _check_against_itk(Volume(image, OBLIQUE2), Volume(labels, OBLIQUE2), fixed, min_inside=0.3)


def _coarse_rotated(affine: np.ndarray, shape, factor: float, angles) -> tuple[np.ndarray, tuple[int, ...]]:
    """A grid ``factor`` times coarser than ``affine``'s, rotated about the same centre."""
    ndim = len(shape)
    centre = affine @ np.append((np.asarray(shape, float) - 1) / 2, [0.0] * (3 - ndim) + [1.0])
    linear = _rotation(angles) @ affine[:3, :3]
    linear[:, :ndim] *= factor
    new_shape = tuple(max(2, int(round(n / factor))) for n in shape)
    out = np.eye(4)
    out[:3, :3] = linear
    half = np.append((np.asarray(new_shape, float) - 1) / 2, [0.0] * (3 - ndim))
    out[:3, 3] = centre[:3] - linear @ half
    return out, new_shape


@pytest.mark.parametrize("direction", ["fixed-coarser", "moving-coarser"])
def test_2x_coarser_rotated_3d_matches_simpleitk(direction):
    image, labels = _images((20, 18, 16), seed=6)
    fine = _affine(_rotation((0.2, 0.1, -0.3)), (1.0, 1.0, 1.0), (-10.0, 5.0, 2.5))
    coarse, coarse_shape = _coarse_rotated(fine, (20, 18, 16), 2.0, (0.0, 0.0, 0.4))
    if direction == "fixed-coarser":
        fixed = Volume(np.zeros(coarse_shape, np.float32), coarse)
        _check_against_itk(Volume(image, fine), Volume(labels, fine), fixed, min_inside=0.5)
    else:
        image, labels = _images(coarse_shape, seed=7)
        fixed = Volume(np.zeros((20, 18, 16), np.float32), fine)
        _check_against_itk(Volume(image, coarse), Volume(labels, coarse), fixed, min_inside=0.5)


@pytest.mark.parametrize("direction", ["fixed-coarser", "moving-coarser"])
def test_2x_coarser_rotated_2d_matches_simpleitk(direction):
    image, labels = _images((30, 26), seed=8)
    fine = _in_plane(0.1, (1.0, 1.0), (0.0, 0.0))
    local = _affine(_rotation((0.0, 0.0, 0.45)), (2.0, 2.0, 1.0), (0.0, 0.0, 0.0))
    # rotate about the centre of the fine grid, within the plane (the third axis stays the normal)
    centre = np.eye(4)
    centre[:2, 3] = [(30 - 1) / 2, (26 - 1) / 2]
    coarse_shape = (15, 13)
    back = np.eye(4)
    back[:2, 3] = [-(15 - 1) / 2, -(13 - 1) / 2]
    coarse = fine @ centre @ local @ back
    coarse[:3, 2] = fine[:3, 2]  # keep the 1.5 mm slice normal
    if direction == "fixed-coarser":
        fixed = Volume(np.zeros(coarse_shape, np.float32), coarse)
        _check_against_itk(Volume(image, fine), Volume(labels, fine), fixed, min_inside=0.5)
    else:
        image, labels = _images(coarse_shape, seed=9)
        fixed = Volume(np.zeros((30, 26), np.float32), fine)
        _check_against_itk(Volume(image, coarse), Volume(labels, coarse), fixed, min_inside=0.5)


# --------------------------------------------------------------------------------------------
# 2D slices in different planes


def test_2d_moving_slice_out_of_the_fixed_plane_is_refused():
    image, _ = _images(SHAPE2)
    fixed = Volume(np.zeros(SHAPE2, np.float32), OBLIQUE2)
    tilted = OBLIQUE2.copy()
    tilted[:3, :3] = _rotation((0.2, 0.0, 0.0)) @ OBLIQUE2[:3, :3]  # same origin, tilted plane
    lifted = OBLIQUE2.copy()
    lifted[:3, 3] += 3.0 * OBLIQUE2[:3, 2]  # parallel plane, two slices (3 mm) away
    for affine in (tilted, lifted):
        with pytest.raises(ValueError, match=r"resample_to: the 2D 'moving' slice does not lie in the plane"):
            io.resample_to(Volume(image, affine), fixed)
    # in the plane but rotated and shifted within it: accepted
    in_plane = _in_plane(0.9, (0.8, 1.7), (5.0, -2.0))
    assert io.resample_to(Volume(image, in_plane), fixed).data.shape == SHAPE2


def test_cli_warp_refuses_a_2d_moving_slice_out_of_the_fixed_plane(tmp_path, capsys):
    image, _ = _images(SHAPE2)
    lifted = OBLIQUE2.copy()
    lifted[:3, 3] += 3.0 * OBLIQUE2[:3, 2]
    nib.save(nib.Nifti1Image(image[..., None], lifted), tmp_path / "moving.nii.gz")
    io.save_warp(np.zeros((2, *SHAPE2), np.float32), tmp_path / "warp.nii.gz", OBLIQUE2)
    code = main(["warp", "--moving", str(tmp_path / "moving.nii.gz"), "--warp", str(tmp_path / "warp.nii.gz"),
                 "--moved", str(tmp_path / "moved.nii.gz")])
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line: no "resampled onto it" note before the refusal
    assert lines[0].startswith("morphreg warp: error:") and "does not lie in the plane" in lines[0]
    assert not (tmp_path / "moved.nii.gz").exists()


# --------------------------------------------------------------------------------------------
# the command line: a zero field keeps every voxel of an x-flipped copy


@pytest.mark.parametrize("kind", ["image", "labels"])
def test_cli_warp_zero_field_keeps_every_voxel_of_a_flipped_copy(kind, tmp_path):
    shape = (24, 20, 18)  # 8640 voxels, as in the issue
    image, labels = _images(shape, seed=10)
    data = image if kind == "image" else labels.astype(np.uint8)
    nib.save(nib.Nifti1Image(np.flip(data, 0).copy(), _flip(OBLIQUE, shape, 0)), tmp_path / "moving.nii.gz")
    io.save_warp(np.zeros((3, *shape), np.float32), tmp_path / "warp.nii.gz", OBLIQUE)
    assert main(["warp", "--moving", str(tmp_path / "moving.nii.gz"), "--warp", str(tmp_path / "warp.nii.gz"),
                 "--moved", str(tmp_path / "moved.nii.gz")]) == 0
    moved = io.load_volume(tmp_path / "moved.nii.gz")
    assert int((moved.data == 0).sum()) == 0  # none of the 8640 voxels lost (1211 were, before)
    # labels exactly; intensities to float round-off, as the affines were rounded to float32
    _assert_copy(moved.data, data, order=1 if kind == "image" else 0, exact=False)
    np.testing.assert_allclose(moved.affine, OBLIQUE, atol=1e-5)
