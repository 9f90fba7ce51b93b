"""Known answers for morphreg.geometry: homogeneous matrices, frames and world matrices."""

import math

import numpy as np
import pytest
import torch

from morphreg import geometry, optimize, spatial
from morphreg._checks import check_matrix


def _rotation_z(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _affine(linear: torch.Tensor, origin: list[float]) -> torch.Tensor:
    n = linear.shape[0]
    out = torch.eye(n + 1, dtype=torch.float64)
    out[:n, :n] = linear
    out[:n, n] = torch.tensor(origin, dtype=torch.float64)
    return out


@pytest.mark.parametrize("batch_shape", [(), (2,), (2, 3)])
@pytest.mark.parametrize("n", [2, 3])
def test_homogeneous_round_trip(batch_shape, n):
    matrix = torch.randn(*batch_shape, n, n + 1, dtype=torch.float64)
    square = geometry.homogeneous(matrix)
    assert square.shape == (*batch_shape, n + 1, n + 1)
    assert torch.equal(square[..., :n, :], matrix)
    assert torch.equal(square[..., n, :], torch.tensor([0.0] * n + [1.0], dtype=torch.float64).expand(*batch_shape, -1))
    assert geometry.homogeneous(square) is square  # already homogeneous: unchanged
    # a homogeneous matrix composes: apply M then its inverse = identity
    eye = torch.eye(n + 1, dtype=torch.float64).expand_as(square)
    invertible = geometry.homogeneous(torch.cat([eye[..., :n, :n] * 2.0, matrix[..., n:]], dim=-1))
    assert torch.allclose(torch.linalg.inv(invertible) @ invertible, eye, atol=1e-12)


def test_transform_points_and_scale_matrix():
    frame = _affine(torch.diag(torch.tensor([2.0, -3.0], dtype=torch.float64)), [10.0, 20.0]).unsqueeze(0)
    points = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    assert torch.equal(geometry.transform_points(frame, points), torch.tensor([[12.0, 14.0]], dtype=torch.float64))
    assert torch.equal(geometry.scale_matrix([2.0, 3.0])[0], torch.diag(torch.tensor([2.0, 3.0, 1.0], dtype=torch.float64)))
    eye = geometry.identity_matrix(3, batch=2)
    eye[0, 0, 0] = 5.0  # a new tensor per batch entry, safe to write into
    assert eye[1, 0, 0] == 1.0


def test_matrix_to_world_of_a_flipped_copy_is_the_identity():
    # the moving image is the fixed one stored with its first axis reversed: same world object,
    # so the voxel matrix i -> (size - 1 - i) is the world identity
    shape = (7, 5, 4)
    fixed_affine = _affine(_rotation_z(0.3) @ torch.diag(torch.tensor([1.5, 2.0, 3.0], dtype=torch.float64)),
                           [-10.0, 4.0, 7.0])
    flip = _affine(torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)), [shape[0] - 1.0, 0.0, 0.0])
    moving_affine = fixed_affine @ flip  # moving voxel j is fixed voxel (size - 1 - j)
    voxel = flip[:3].unsqueeze(0)  # fixed voxel i samples moving voxel size - 1 - i
    world = optimize.matrix_to_world(voxel, moving_affine, fixed_affine)
    assert world.shape == (1, 4, 4) and world.dtype == torch.float64
    assert torch.allclose(world[0], torch.eye(4, dtype=torch.float64), atol=1e-12)


def test_matrix_to_world_of_an_oblique_voxel_shift_is_a_world_shift():
    # oblique, anisotropic, flipped grid; one voxel along axis 1 is 2 mm along the rotated y axis
    rotation = _rotation_z(math.radians(30.0))
    fixed_affine = _affine(rotation @ torch.diag(torch.tensor([-1.0, 2.0, 3.0], dtype=torch.float64)), [5.0, 6.0, 7.0])
    voxel = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    world = geometry.matrix_to_world(voxel, fixed_affine, fixed_affine)[0]
    expected = torch.eye(4, dtype=torch.float64)
    expected[:2, 3] = torch.tensor([-2.0 * math.sin(math.radians(30.0)), 2.0 * math.cos(math.radians(30.0))])
    assert torch.allclose(world, expected, atol=1e-12)
    # and it maps the fixed world point of every voxel to the moving world point it samples
    x = torch.tensor([2.0, 3.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(world @ (fixed_affine @ x), fixed_affine @ geometry.homogeneous(voxel) @ x, atol=1e-12)


def test_matrix_to_world_of_the_identity_between_shifted_grids_is_that_shift():
    # the moving grid lies 5 mm further along the (oblique) world x axis: fixed voxel x samples
    # moving voxel x, whose world point is 5 mm further on, so W(p) = p + (5, 0, 0)
    fixed_affine = _affine(_rotation_z(0.7) @ torch.diag(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)),
                           [3.0, 1.0, -4.0])
    shift = _affine(torch.eye(3, dtype=torch.float64), [5.0, 0.0, 0.0])
    world = geometry.matrix_to_world(torch.eye(4)[:3], shift @ fixed_affine, fixed_affine)[0]
    assert torch.allclose(world, shift, atol=1e-12)


def test_matrix_to_world_lifts_a_2d_voxel_matrix_to_a_nifti_4x4():
    slice_affine = _affine(torch.diag(torch.tensor([2.0, 0.5, 4.0], dtype=torch.float64)), [1.0, 2.0, 3.0])
    voxel = torch.tensor([[1.0, 0.0, 3.0], [0.0, 1.0, -2.0]], dtype=torch.float64)  # shift (3, -2) voxels
    world = geometry.matrix_to_world(voxel, slice_affine, slice_affine)[0]
    expected = torch.eye(4, dtype=torch.float64)
    expected[:3, 3] = torch.tensor([6.0, -1.0, 0.0])  # mm; the slice axis maps to itself
    assert torch.allclose(world, expected, atol=1e-12)


def test_centred_to_voxel_matrix_turns_about_the_image_centre():
    shape = (9, 5)
    quarter = torch.tensor([[[0.0, -1.0], [1.0, 0.0]]], dtype=torch.float64)
    matrix = geometry.centred_to_voxel_matrix(quarter, torch.zeros(1, 2, dtype=torch.float64), shape)
    centre = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)
    assert torch.allclose(matrix[0] @ centre, centre[:2])
    # a shift of a tenth of the extent moves every voxel by 0.8 and 0.4 voxels
    shifted = geometry.centred_to_voxel_matrix(torch.eye(2).unsqueeze(0), torch.tensor([[0.1, 0.1]]), shape)
    assert torch.allclose(shifted[0, :, 2], torch.tensor([0.8, 0.4]))


def test_centred_frames_put_the_fixed_centre_at_the_origin_in_units_of_its_radius():
    shape = (5, 9)
    fixed_affine = _affine(torch.diag(torch.tensor([2.0, 2.0], dtype=torch.float64)), [10.0, -3.0])
    frames = geometry.centred_frames("test", shape, None, fixed_affine, batch=2)
    # half extents 4 mm and 8 mm: radius sqrt((16 + 64) / 2)
    assert torch.allclose(frames.radius, torch.full((2,), math.sqrt(40.0), dtype=torch.float64))
    assert torch.allclose(frames.voxel_size, torch.full((2,), 2.0, dtype=torch.float64))
    centre = torch.tensor([2.0, 4.0, 1.0], dtype=torch.float64)
    assert torch.allclose(frames.right @ centre, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    corner = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)  # (-4, -8) mm from the centre
    assert torch.allclose((frames.right @ corner)[:, :2].norm(dim=1), torch.full((2,), math.sqrt(2.0), dtype=torch.float64))
    # identity in the centred frame = the voxel matrix from fixed to moving voxels
    voxel = frames.left @ frames.right
    assert torch.allclose(voxel, fixed_affine.expand(2, 3, 3))


@pytest.mark.parametrize(
    ("matrix", "error", "message"),
    [
        (torch.zeros(2, 3), ValueError, r"check: argument 'm' is singular \(det of the linear part = 0\)"),
        (torch.tensor([[1.0, 0.0, float("nan")], [0.0, 1.0, 0.0]]), ValueError, "argument 'm' contains NaN or inf"),
        (torch.tensor([[1.0, 0.0, float("inf")], [0.0, 1.0, 0.0]]), ValueError, "contains NaN or inf"),
        (torch.eye(3, dtype=torch.int64)[:2], TypeError, "argument 'm' must be floating-point"),
        (torch.eye(3)[:2, :2], ValueError, r"must have shape \(B, 2, 3\) or \(B, 3, 3\)"),
        ("eye", TypeError, "must be a torch.Tensor"),
    ],
)
def test_check_matrix_refuses_bad_matrices(matrix, error, message):
    with pytest.raises(error, match=message):
        check_matrix("check", "m", matrix, 2)


def test_singular_and_non_finite_matrices_are_refused_everywhere():
    with pytest.raises(ValueError, match="affine_to_disp: argument 'matrix' is singular"):
        spatial.affine_to_disp(torch.tensor([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]]), (4, 4))
    with pytest.raises(ValueError, match="matrix_to_world: argument 'matrix_voxel' contains NaN"):
        geometry.matrix_to_world(torch.full((2, 3), float("nan")))
    singular = torch.eye(4, dtype=torch.float64)
    singular[2, 2] = 0.0
    with pytest.raises(ValueError, match="argument 'fixed_affine' is singular"):
        geometry.matrix_to_world(torch.eye(3)[:2], fixed_affine=singular)
    bad_row = torch.eye(3, dtype=torch.float64)
    bad_row[2, 0] = 0.5
    with pytest.raises(ValueError, match=r"argument 'moving_affine' must have last row \[0.0, 0.0, 1.0\]"):
        geometry.as_voxel_to_world("f", "moving_affine", bad_row, 2)
    with pytest.raises(ValueError, match="argument 'a' contains NaN or inf"):
        geometry.as_voxel_to_world("f", "a", torch.full((3, 3), float("inf")), 2)
    assert geometry.as_voxel_to_world("f", "a", None, 3) is None


def test_a_singular_voxel_matrix_is_still_expressed_in_world_units():
    # matrix_to_world only re-expresses a matrix; it does not require it to be invertible
    world = geometry.matrix_to_world(torch.zeros(1, 2, 3, dtype=torch.float64))
    assert torch.equal(world[0, 2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))


def test_world_to_voxel_matrix_inverts_matrix_to_world_on_one_grid():
    """A voxel shift of (2, -1, 3) on an oblique, anisotropic grid round-trips through world space."""
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.2, 0.8, 2.0])
    affine[:3, 3] = [10.0, -5.0, 3.0]
    voxel = np.hstack([np.eye(3), [[2.0], [-1.0], [3.0]]])
    world = geometry.matrix_to_world(torch.from_numpy(voxel)[None], affine, affine)[0].numpy()
    # the same shift in mm: each voxel step times its spacing, rotated
    np.testing.assert_allclose(world[:3, 3], affine[:3, :3] @ [2.0, -1.0, 3.0], atol=1e-12)
    np.testing.assert_allclose(geometry.world_to_voxel_matrix(world, affine, 3), voxel, atol=1e-12)


def test_in_plane_checks_refuse_what_leaves_a_2d_slice():
    tilted = np.eye(4)
    tilted[2, 0] = 0.5  # moving z depends on fixed i: off the plane
    with pytest.raises(ValueError, match=r"does not lie in the plane"):
        geometry.fixed_to_moving_voxels(np.eye(4), tilted, 2)
    np.testing.assert_allclose(geometry.fixed_to_moving_voxels(np.eye(4), tilted, 3), tilted)
    with pytest.raises(ValueError, match=r"out of the 2D image's plane"):
        geometry.world_to_voxel_matrix(tilted, np.eye(4), 2)
    assert geometry.world_to_voxel_matrix(np.eye(4), np.eye(4), 2).shape == (2, 3)
