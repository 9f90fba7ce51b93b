"""Tests of morphreg.optimize: affine, dense, FFD and landmark registration.

Synthetic images are sums of Gaussian blobs evaluated analytically, so a "moving" image is an
exact transform of the "fixed" one (no resampling error in the ground truth).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from morphreg import losses, metrics, optimize, spatial
from morphreg.models import VxmDense
from morphreg.optimize import (
    bspline_disp,
    centre_of_mass,
    control_grid_shape,
    fit_affine,
    fit_tps,
    matrix_to_world,
    moments_init,
    refine_control_points,
    refine_network_prediction,
    register_affine,
    register_dense,
    register_ffd,
    tre,
)

DATA = Path(os.environ.get("MORPHREG_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
BRAINWEB = DATA / "itk_brainweb_t1_pd_2d"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# synthetic data


def _blob_params(shape, seed, count=10, inner=(0.3, 0.7), sigma=(0.05, 0.10)):
    gen = torch.Generator().manual_seed(seed)
    ndim = len(shape)
    extent = torch.tensor(shape, dtype=torch.float64) - 1
    lo, hi = inner
    centres = (lo + (hi - lo) * torch.rand(count, ndim, generator=gen, dtype=torch.float64)) * extent
    s_lo, s_hi = sigma
    sigmas = (s_lo + (s_hi - s_lo) * torch.rand(count, ndim, generator=gen, dtype=torch.float64)) * extent
    amps = 0.5 + torch.rand(count, generator=gen, dtype=torch.float64)
    return centres, sigmas, amps


def _render(params, points):
    """Blob image at ``points`` (ndim, *spatial) (any coordinates, float64) -> (1, 1, *spatial)."""
    centres, sigmas, amps = params
    ndim = points.shape[0]
    out = torch.zeros(points.shape[1:], dtype=torch.float64)
    for c, s, a in zip(centres, sigmas, amps):
        d2 = sum(((points[k] - c[k]) / s[k]) ** 2 for k in range(ndim))
        out = out + a * torch.exp(-0.5 * d2)
    return out[None, None].float()


def _texture(shape, seed, count=40):
    """Textured image covering the whole field of view (for deformable tests)."""
    params = _blob_params(shape, seed, count=count, inner=(-0.05, 1.05), sigma=(0.04, 0.08))
    return _render(params, spatial.identity_grid(shape, dtype=torch.float64))


def _rotation(angles, ndim):
    angles = torch.as_tensor(angles, dtype=torch.float64).reshape(-1)
    skew = torch.zeros(ndim, ndim, dtype=torch.float64)
    rows, cols = torch.triu_indices(ndim, ndim, 1)
    skew[cols, rows] = angles
    skew[rows, cols] = -angles
    return torch.linalg.matrix_exp(skew)


def _about_centre(linear, shift, shape):
    centre = (torch.tensor(shape, dtype=torch.float64) - 1) / 2
    return torch.cat([linear, (centre + shift - linear @ centre)[:, None]], dim=1)


def _transformed_pair(shape, seed, matrix):
    """fixed(x) = f(x), moving(y) = f(M^-1 y): registering moving to fixed must give M."""
    params = _blob_params(shape, seed)
    grid = spatial.identity_grid(shape, dtype=torch.float64)
    ndim = len(shape)
    linear, shift = matrix[:, :ndim], matrix[:, ndim]
    source = torch.linalg.solve(linear, grid.reshape(ndim, -1) - shift[:, None]).reshape(grid.shape)
    return _render(params, source), _render(params, grid)


def _random_affine(ndim, seed, linear=0.06, shift=2.0):
    gen = torch.Generator().manual_seed(1000 + seed)
    lin = torch.eye(ndim, dtype=torch.float64) + linear * (
        2 * torch.rand(ndim, ndim, generator=gen, dtype=torch.float64) - 1
    )
    t = shift * (2 * torch.rand(ndim, generator=gen, dtype=torch.float64) - 1)
    return lin, t


def _mean_disp_error(matrix, truth, shape):
    found = spatial.affine_to_disp(matrix.double().reshape(1, *matrix.shape[-2:]), shape)
    expected = spatial.affine_to_disp(truth.double()[None], shape)
    return (found - expected).norm(dim=1).mean().item()


def _angle_2d(matrix):
    m = matrix.double().reshape(-1, 3)
    return math.degrees(math.atan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1]))


# --------------------------------------------------------------------------------------------
# affine


@pytest.mark.parametrize("shape", [(64, 64), (32, 32, 32)], ids=["2d", "3d"])
def test_register_affine_recovers_random_affine(shape):
    ndim = len(shape)
    lin, t = _random_affine(ndim, seed=ndim)
    truth = _about_centre(lin, t, shape)
    moving, fixed = _transformed_pair(shape, seed=ndim, matrix=truth)
    before = _mean_disp_error(torch.cat([torch.eye(ndim), torch.zeros(ndim, 1)], 1), truth, shape)
    result = register_affine(moving, fixed, transform="affine")
    error = _mean_disp_error(result.matrix_voxel, truth, shape)
    assert before > 1.5
    # acceptance: < 0.5 voxel; measured about 0.04 (2D) and 0.13 (3D)
    assert error < 0.25, f"mean displacement error {error:.3f} voxel (before {before:.2f})"
    assert result.matrix_voxel.shape == (1, ndim, ndim + 1)
    assert result.disp.shape == (1, ndim, *shape)
    torch.testing.assert_close(result.moved, spatial.warp(moving, result.disp))
    torch.testing.assert_close(result.disp, spatial.affine_to_disp(result.matrix_voxel, shape), atol=1e-4, rtol=0)
    # no affines given: the world matrix is the homogeneous voxel matrix
    torch.testing.assert_close(result.matrix_world[:, :ndim].float(), result.matrix_voxel, atol=1e-5, rtol=0)
    assert result.loss_history[-1] < result.loss_history[0]


def test_register_affine_rigid_2d():
    shape = (64, 64)
    truth = _about_centre(_rotation(math.radians(9.0), 2), torch.tensor([2.5, -1.5]).double(), shape)
    moving, fixed = _transformed_pair(shape, seed=5, matrix=truth)
    result = register_affine(moving, fixed, transform="rigid", loss="mse")
    linear = result.matrix_voxel[0, :, :2].double()
    torch.testing.assert_close(linear @ linear.T, torch.eye(2, dtype=torch.float64), atol=1e-5, rtol=0)
    assert abs(_angle_2d(result.matrix_voxel) - 9.0) < 0.1
    assert _mean_disp_error(result.matrix_voxel, truth, shape) < 0.1


@pytest.mark.parametrize("transform", ["translation", "similarity"])
def test_register_affine_restricted_transforms(transform):
    shape = (64, 64)
    if transform == "translation":
        linear = torch.eye(2, dtype=torch.float64)
    else:
        linear = 1.08 * _rotation(math.radians(-6.0), 2)
    truth = _about_centre(linear, torch.tensor([-2.0, 3.0], dtype=torch.float64), shape)
    moving, fixed = _transformed_pair(shape, seed=7, matrix=truth)
    result = register_affine(moving, fixed, transform=transform, init="com")
    found = result.matrix_voxel[0, :, :2].double()
    if transform == "translation":
        torch.testing.assert_close(found, torch.eye(2, dtype=torch.float64), atol=1e-6, rtol=0)
    else:  # a scaled rotation: L L^T = s^2 I
        gram = found @ found.T
        torch.testing.assert_close(gram, gram[0, 0] * torch.eye(2, dtype=torch.float64), atol=1e-5, rtol=0)
    assert _mean_disp_error(result.matrix_voxel, truth, shape) < 0.2


def test_register_affine_moments_init_recovers_large_rotation():
    # elongated object rotated by 70 degrees: out of reach of plain gradient descent
    shape = (64, 64)
    params = (
        torch.tensor([[20.0, 31.5], [31.5, 31.5], [43.0, 31.5], [26.0, 38.0]], dtype=torch.float64),
        torch.tensor([[5.0, 3.0], [5.0, 3.0], [5.0, 3.0], [3.0, 3.0]], dtype=torch.float64),
        torch.tensor([1.0, 0.8, 0.6, 0.7], dtype=torch.float64),
    )
    truth = _about_centre(_rotation(math.radians(70.0), 2), torch.tensor([3.0, -2.0]).double(), shape)
    grid = spatial.identity_grid(shape, dtype=torch.float64)
    source = torch.linalg.solve(truth[:, :2], grid.reshape(2, -1) - truth[:, 2:]).reshape(grid.shape)
    moving, fixed = _render(params, source), _render(params, grid)
    start = moments_init(moving, fixed, transform="rigid", loss="mse")
    assert abs(_angle_2d(start) - 70.0) < 5.0
    result = register_affine(moving, fixed, transform="rigid", loss="mse", init="moments")
    assert abs(_angle_2d(result.matrix_voxel) - 70.0) < 0.2
    assert _mean_disp_error(result.matrix_voxel, truth, shape) < 0.2


def test_moments_init_with_an_offset_anisotropic_fixed_affine():
    # The object lives in mm; both grids have 2 x 3 mm voxels and an offset origin (the centred
    # frame then differs from the voxel frame). The moving image shows it rotated by 50 degrees
    # about a point away from the grid centre: the moments (centroids + principal axes) give the
    # exact transform, so moments_init must recover it to a fraction of a voxel.
    shape = (40, 48)
    affine = torch.tensor([[2.0, 0.0, 5.0], [0.0, 3.0, -7.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    params = (
        torch.tensor([[30.0, 60.0], [50.0, 60.0], [70.0, 60.0], [40.0, 80.0]], dtype=torch.float64),
        torch.tensor([[10.0, 6.0], [10.0, 6.0], [10.0, 6.0], [6.0, 6.0]], dtype=torch.float64),
        torch.tensor([1.0, 0.8, 0.6, 0.7], dtype=torch.float64),
    )
    pivot = torch.tensor([45.0, 62.0], dtype=torch.float64)
    world = torch.eye(3, dtype=torch.float64)  # fixed world point -> moving world point
    world[:2, :2] = _rotation(math.radians(50.0), 2)
    world[:2, 2] = pivot - world[:2, :2] @ pivot + torch.tensor([4.0, -6.0], dtype=torch.float64)

    def image(transform):
        grid = spatial.identity_grid(shape, dtype=torch.float64).reshape(2, -1)
        points = affine[:2, :2] @ grid + affine[:2, 2:]
        points = torch.linalg.solve(transform[:2, :2], points - transform[:2, 2:])
        return _render(params, points.reshape(2, *shape))

    fixed, moving = image(torch.eye(3, dtype=torch.float64)), image(world)
    truth = (torch.linalg.inv(affine) @ world @ affine)[:2]  # fixed voxel -> moving voxel
    start = moments_init(moving, fixed, transform="rigid", loss="mse", moving_affine=affine, fixed_affine=affine)
    error = _mean_disp_error(start, truth, shape)
    assert error < 0.3, f"mean displacement error {error:.2f} voxels"


def test_centre_of_mass_known_answers():
    image = torch.zeros(2, 1, 20, 30)
    image[0, 0, 4:7, 10:15] = 2.0  # box centre (5, 12)
    image[1, 0, 12, 3] = 1.0
    image[1] += 5.0  # a constant offset (background) does not move the centre
    torch.testing.assert_close(centre_of_mass(image), torch.tensor([[5.0, 12.0], [12.0, 3.0]], dtype=torch.float64))
    flat = torch.ones(1, 1, 5, 6, 7)
    torch.testing.assert_close(centre_of_mass(flat), torch.tensor([[2.0, 2.5, 3.0]]).double())


def test_register_affine_moving_of_another_shape():
    big = _texture((72, 80), seed=3)
    fixed = big[:, :, 5:61, 3:67].clone()  # fixed voxel x is moving voxel x + (5, 3)
    result = register_affine(big, fixed, transform="translation", init="identity", loss="mse")
    expected = torch.tensor([[1.0, 0.0, 5.0], [0.0, 1.0, 3.0]])
    torch.testing.assert_close(result.matrix_voxel[0], expected, atol=0.05, rtol=0)
    assert result.moved.shape == fixed.shape and result.disp.shape == (1, 2, 56, 64)
    assert losses.mse_loss(result.moved, fixed) < 1e-4


def test_register_affine_init_matrix_round_trip_with_affines():
    # zero iterations: the result is the initial matrix, through every frame conversion
    shape = (40, 48)
    moving, fixed = _texture(shape, 1), _texture(shape, 2)
    init = torch.tensor([[[1.05, 0.1, -2.0], [-0.08, 0.95, 3.0]]])
    a_f = torch.tensor([[0.0, 1.2, 0.0, 10.0], [0.0, 0.0, 2.0, -3.0], [-1.0, 0.0, 0.0, 5.0], [0, 0, 0, 1.0]])
    a_m = torch.tensor([[0.0, 1.0, 0.0, 12.0], [0.0, 0.0, 1.8, -4.0], [-0.9, 0.0, 0.0, 6.0], [0, 0, 0, 1.0]])
    a_f2 = torch.tensor([[0.0, 1.2, 10.0], [2.0, 0.0, -3.0], [0.0, 0.0, 1.0]])
    a_m2 = torch.tensor([[0.0, 1.0, 12.0], [1.8, 0.1, -4.0], [0.0, 0.0, 1.0]])
    for kwargs in ({}, {"moving_affine": a_m2, "fixed_affine": a_f2}):
        for transform in ("affine", "translation"):
            result = register_affine(moving, fixed, init=init, iterations=0, transform=transform, **kwargs)
            torch.testing.assert_close(result.matrix_voxel, init, atol=1e-5, rtol=0)
    result = register_affine(moving, fixed, init=init, iterations=0, moving_affine=a_m, fixed_affine=a_f, levels=1)
    torch.testing.assert_close(result.matrix_voxel, init, atol=1e-5, rtol=0)


def test_matrix_to_world_maps_world_points():
    # 2D slices with NIfTI 4x4 affines (the OASIS 2D geometry): world(fixed x) -> world(moving M x)
    a_f = np.array([[-1.0, 0, 0, 80], [0, 0, 1, -0.5], [0, -1, 0, 96], [0, 0, 0, 1]])
    a_m = a_f.copy()
    a_m[:3, :3] *= 1.1
    a_m[:3, 3] += [2.0, 0.0, -1.0]
    matrix = torch.tensor([[[0.98, 0.05, 1.5], [-0.04, 1.02, -2.0]]], dtype=torch.float64)
    world = matrix_to_world(matrix, a_m, a_f)
    assert world.shape == (1, 4, 4)
    for x in ([10.0, 20.0], [100.0, 3.0]):
        p_f = torch.from_numpy(a_f) @ torch.tensor([*x, 0.0, 1.0], dtype=torch.float64)
        y = matrix[0] @ torch.tensor([*x, 1.0], dtype=torch.float64)
        p_m = torch.from_numpy(a_m) @ torch.tensor([*y.tolist(), 0.0, 1.0], dtype=torch.float64)
        torch.testing.assert_close(world[0] @ p_f, p_m)
    # 3D, (ndim+1)^2 affines
    a3 = torch.diag(torch.tensor([2.0, 1.0, 0.5, 1.0], dtype=torch.float64))
    m3 = torch.cat([torch.eye(3), torch.tensor([[1.0], [2.0], [3.0]])], 1).double()
    w3 = matrix_to_world(m3, a3, a3)
    torch.testing.assert_close(w3[0, :3, 3], torch.tensor([2.0, 2.0, 1.5], dtype=torch.float64))


def test_register_affine_rigid_in_world_units_with_anisotropic_voxels():
    # the object lives in mm; fixed voxels are 1.5 x 1 mm, moving voxels 1 x 1.25 mm
    shape = (64, 64)
    a_f = torch.tensor([[1.5, 0.0, -47.0], [0.0, 1.0, -31.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    a_m = torch.tensor([[1.0, 0.0, -30.0], [0.0, 1.25, -40.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    params = _blob_params((40, 40), seed=11)
    params = (params[0] - 20.0, params[1], params[2])  # blob centres in mm around the origin
    world = torch.cat([_rotation(math.radians(8.0), 2), torch.tensor([[2.0], [-1.5]]).double()], 1)
    world = torch.cat([world, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)])

    def image(affine, transform):
        grid = spatial.identity_grid(shape, dtype=torch.float64).reshape(2, -1)
        points = affine[:2, :2] @ grid + affine[:2, 2:]
        points = torch.linalg.solve(transform[:2, :2], points - transform[:2, 2:])
        return _render(params, points.reshape(2, *shape))

    fixed = image(a_f, torch.eye(3, dtype=torch.float64))
    moving = image(a_m, world)  # moving world point T(p) shows what fixed shows at p
    result = register_affine(moving, fixed, transform="rigid", loss="mse", moving_affine=a_m, fixed_affine=a_f)
    found = result.matrix_world[0]
    torch.testing.assert_close(found[:2, :2] @ found[:2, :2].T, torch.eye(2).double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(found, world, atol=0.1, rtol=0)
    assert abs(_angle_2d(found[:2]) - 8.0) < 0.1


def _read_grey(path):
    plt = pytest.importorskip("matplotlib.pyplot")
    array = plt.imread(path)
    array = array[..., 0] if array.ndim == 3 else array
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]


@pytest.mark.skipif(not BRAINWEB.is_dir(), reason="BrainWeb T1/PD pair not found (set MORPHREG_DATA)")
def test_register_affine_mi_recovers_rigid_transform_of_pd_slice():
    t1 = _read_grey(BRAINWEB / "BrainT1Slice.png")
    pd = _read_grey(BRAINWEB / "BrainProtonDensitySlice.png")
    shape = tuple(t1.shape[2:])
    angle, shift = 7.0, torch.tensor([5.0, -3.0], dtype=torch.float64)
    truth = _about_centre(_rotation(math.radians(angle), 2), shift, shape)  # fixed voxel -> moving
    inverse = torch.linalg.inv(torch.cat([truth, torch.tensor([[0.0, 0.0, 1.0]]).double()]))[:2]
    moving = spatial.warp(pd, spatial.affine_to_disp(inverse[None].float(), shape), padding="zeros")
    result = register_affine(moving, t1, transform="rigid", loss="mi", init="com", iterations=(80, 40, 10))
    matrix = result.matrix_voxel[0].double()
    centre = (torch.tensor(shape, dtype=torch.float64) - 1) / 2
    found_shift = matrix[:, :2] @ centre + matrix[:, 2] - centre
    assert abs(_angle_2d(matrix) - angle) < 1.0
    assert (found_shift - shift).norm() < 1.0


@pytest.mark.skipif(not BRAINWEB.is_dir(), reason="BrainWeb T1/PD pair not found (set MORPHREG_DATA)")
@pytest.mark.parametrize("direction", ["pd_to_t1", "t1_to_pd"])
def test_register_affine_default_loss_recovers_rotation_across_contrasts(direction):
    # T1 and PD are not linearly related: global correlation has its optimum 10+ degrees away
    # (it was the default); the default loss="auto" must see that and use MI
    t1 = _read_grey(BRAINWEB / "BrainT1Slice.png")
    pd = _read_grey(BRAINWEB / "BrainProtonDensitySlice.png")
    source, fixed = (pd, t1) if direction == "pd_to_t1" else (t1, pd)
    shape = tuple(fixed.shape[2:])
    truth = _about_centre(_rotation(math.radians(10.0), 2), torch.zeros(2, dtype=torch.float64), shape)
    inverse = torch.linalg.inv(torch.cat([truth, torch.tensor([[0.0, 0.0, 1.0]]).double()]))[:2]
    moving = spatial.warp(source, spatial.affine_to_disp(inverse[None].float(), shape), padding="zeros")
    result = register_affine(moving, fixed)
    assert abs(_angle_2d(result.matrix_voxel) - 10.0) < 1.0, f"angle {_angle_2d(result.matrix_voxel):.2f}"
    assert _mean_disp_error(result.matrix_voxel, truth, shape) < 1.0
    assert result.loss == "mi"


def test_register_affine_on_random_points_recovers_affine_and_repeats():
    # 32^3 = 32768 voxels, 8192 random points per iteration (the path large 3D images take)
    shape = (32, 32, 32)
    lin, t = _random_affine(3, seed=3)
    truth = _about_centre(lin, t, shape)
    moving, fixed = _transformed_pair(shape, seed=3, matrix=truth)
    calls = []
    result = register_affine(moving, fixed, samples=8192, progress=lambda *args: calls.append(args[:4]))
    assert result.loss == "gncc"  # one contrast: auto keeps global correlation
    error = _mean_disp_error(result.matrix_voxel, truth, shape)
    assert error < 0.1, f"mean displacement error {error:.3f} voxel"  # measured 0.015 (every voxel: 0.13)
    again = register_affine(moving, fixed, samples=8192)
    torch.testing.assert_close(again.matrix_voxel, result.matrix_voxel, atol=0, rtol=0)
    assert len(calls) == len(result.loss_history) == 200  # the 8^3 level is skipped (< 16 voxels)
    assert calls[0] == (0, 2, 0, 100) and calls[-1] == (1, 2, 99, 100)


def test_sampled_loss_is_exact_for_identical_images_and_unbiased():
    from morphreg.optimize._sampled import SampledLoss

    image = _texture((24, 28, 20), seed=4)
    shifted = torch.roll(image, 2, dims=2)
    identity = torch.eye(4).unsqueeze(0)
    sim = losses.similarity_loss("gncc")
    same = SampledLoss(lambda: identity, image, image, sim, samples=500)
    assert float(same()) == pytest.approx(-1.0, abs=1e-5)
    other = SampledLoss(lambda: identity, shifted, image, sim, samples=4000)
    estimate = sum(float(other()) for _ in range(20)) / 20
    # points between voxels see interpolated (smoother) values: close to, not equal to, the voxel loss
    assert estimate == pytest.approx(float(sim(shifted, image)), abs=0.05)


def test_register_affine_errors():
    image = torch.rand(1, 1, 20, 20)
    with pytest.raises(ValueError, match=r"register_affine: argument 'init' is singular"):
        register_affine(image, image, init=torch.tensor([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]]))
    singular = torch.eye(3)
    singular[0, 0] = 0.0
    with pytest.raises(ValueError, match=r"argument 'moving_affine' is singular"):
        register_affine(image, image, moving_affine=singular)
    with pytest.raises(ValueError, match=r"argument 'fixed_affine' must be a voxel-to-world matrix"):
        register_affine(image, image, fixed_affine=np.eye(5))
    with pytest.raises(ValueError, match=r"argument 'transform' must be one of .*'rigid'"):
        register_affine(image, image, transform="rigidd")
    with pytest.raises(ValueError, match=r"argument 'loss' must be one of"):
        register_affine(image, image, loss="ssd")
    with pytest.raises(ValueError, match=r"argument 'iterations' must be an int or have one entry per level"):
        register_affine(image, image, levels=2, iterations=(10, 10, 10))
    with pytest.raises(ValueError, match=r"2 spatial dims but 'fixed' has 3"):
        register_affine(image, torch.rand(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"argument 'init' contains a reflection"):
        register_affine(image, image, transform="rigid", init=torch.tensor([[-1.0, 0, 19], [0, 1, 0]]))
    with pytest.raises(ValueError, match=r"argument 'lr' must be a positive"):
        register_affine(image, image, lr=0.0)
    with pytest.raises(ValueError, match=r"argument 'samples'"):
        register_affine(image, image, samples=0)
    with pytest.raises(TypeError, match=r"argument 'moving' must be a torch.Tensor"):
        register_affine(np.zeros((1, 1, 8, 8)), image)


# --------------------------------------------------------------------------------------------
# dense


def _smooth_field(shape, seed, magnitude, spacing=16):
    gen = torch.Generator().manual_seed(seed)
    control = torch.randn(1, len(shape), *control_grid_shape(shape, spacing), generator=gen)
    disp = bspline_disp(control, spacing, shape)
    return disp * (magnitude / disp.norm(dim=1).mean())


def _deformed_pair(shape, seed, magnitude):
    """moving = texture, fixed = warp(moving, truth): registration should find ``truth``."""
    moving = _texture(shape, seed)
    truth = _smooth_field(shape, seed, magnitude)
    return moving, spatial.warp(moving, truth), truth


def _interior(field, margin=4):
    return field[(slice(None), slice(None), *[slice(margin, -margin)] * (field.dim() - 2))]


@pytest.mark.parametrize("velocity", [False, True], ids=["disp", "velocity"])
def test_register_dense_recovers_smooth_warp(velocity):
    shape = (64, 64)
    moving, fixed, truth = _deformed_pair(shape, seed=4, magnitude=2.0)
    result = register_dense(moving, fixed, loss="ncc", weight=1.0, velocity=velocity, levels=2)
    assert losses.ncc_loss(result.moved, fixed) < losses.ncc_loss(moving, fixed) - 0.1
    assert losses.mse_loss(result.moved, fixed) < 0.05 * losses.mse_loss(moving, fixed)
    error = _interior((result.disp - truth).norm(dim=1, keepdim=True)).mean()
    assert error < 0.3 * _interior(truth.norm(dim=1, keepdim=True)).mean()
    # an integrated velocity is a diffeomorphism: no folding at all; a displacement may fold a little
    folding = metrics.folding_fraction(result.disp).item()
    assert (folding == 0.0) if velocity else (folding < 0.5), folding
    torch.testing.assert_close(result.moved, spatial.warp(moving, result.disp))
    assert (result.velocity is not None) == velocity
    if velocity:
        torch.testing.assert_close(result.disp, spatial.integrate(result.velocity, 7))


def test_register_dense_velocity_does_not_fold_where_displacement_does():
    # a large deformation with little regularisation: the displacement optimisation folds, the
    # velocity one must not fold at all (0 %, not "under 0.5 %")
    moving, fixed, _ = _deformed_pair((64, 64), seed=4, magnitude=3.0)
    folding = {}
    for velocity in (False, True):
        result = register_dense(moving, fixed, loss="mse", weight=0.01, velocity=velocity, levels=2)
        assert losses.mse_loss(result.moved, fixed) < 0.2 * losses.mse_loss(moving, fixed)
        folding[velocity] = metrics.folding_fraction(result.disp).item()
    assert folding[False] > 0.5  # measured 1.05 %
    assert folding[True] == 0.0


def test_register_dense_3d_smoke_and_init():
    shape = (24, 24, 24)
    moving, fixed, truth = _deformed_pair(shape, seed=2, magnitude=1.0)
    start = register_dense(moving, fixed, init_disp=truth, iterations=0, levels=1)
    torch.testing.assert_close(start.disp, truth)  # zero iterations keep the start exactly
    result = register_dense(moving, fixed, loss="mse", weight=0.01, levels=1, iterations=40, lr=0.2)
    assert losses.mse_loss(result.moved, fixed) < 0.5 * losses.mse_loss(moving, fixed)
    assert result.disp.shape == (1, 3, *shape)


@pytest.mark.parametrize("int_steps", [0, 4], ids=["disp", "diffeomorphic"])
def test_refine_network_prediction_leaves_model_untouched(int_steps):
    torch.manual_seed(0)
    model = VxmDense(2, enc=(4, 4), dec=(4, 4, 4), int_steps=int_steps)
    model.train()
    with torch.no_grad():  # a non-trivial prediction
        model.flow.weight.normal_(0.0, 0.05)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moving, fixed, _ = _deformed_pair((32, 32), seed=6, magnitude=1.5)
    with torch.no_grad():
        predicted = model(moving, fixed)
    result = refine_network_prediction(model, moving, fixed, iterations=30, loss="mse", weight=0.01)
    assert model.training is True
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert losses.mse_loss(result.moved, fixed) < losses.mse_loss(predicted.moved, fixed)
    assert (result.velocity is not None) == (int_steps > 0)


def test_register_dense_errors():
    image = torch.rand(1, 1, 20, 20)
    field = torch.zeros(1, 2, 20, 20)
    with pytest.raises(ValueError, match=r"'init_disp' cannot start a velocity optimisation"):
        register_dense(image, image, velocity=True, init_disp=field)
    with pytest.raises(ValueError, match=r"argument 'regulariser' must be one of \['grad', 'bending'\]"):
        register_dense(image, image, regulariser="l2")
    with pytest.raises(ValueError, match=r"'moving' and 'fixed' must have the same channels and spatial"):
        register_dense(image, torch.rand(1, 1, 20, 22))
    with pytest.raises(ValueError, match=r"argument 'init_disp' must have spatial shape \(20, 20\)"):
        register_dense(image, image, init_disp=torch.zeros(1, 2, 10, 10))
    with pytest.raises(ValueError, match=r"argument 'weight' must be a finite number >= 0"):
        register_dense(image, image, weight=-1.0)
    with pytest.raises(TypeError, match=r"argument 'model' must be a torch.nn.Module"):
        refine_network_prediction(lambda m, f: m, image, image)
    with pytest.raises(ValueError, match=r"are taken from the network's output"):
        refine_network_prediction(VxmDense(2, enc=(4,), dec=(4,)), image, image, init_disp=field)


# --------------------------------------------------------------------------------------------
# B-spline FFD


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((37, 50), 4), ((64, 64), 8), ((20, 21, 19), (3, 5, 2)), ((9, 10), 1)],
)
def test_bspline_disp_constant_and_linear_grids(shape, spacing):
    ndim = len(shape)
    grid = control_grid_shape(shape, spacing)
    steps = [spacing] * ndim if isinstance(spacing, int) else list(spacing)
    constant = torch.full((1, ndim, *grid), 2.5, dtype=torch.float64)
    torch.testing.assert_close(bspline_disp(constant, spacing, shape), torch.full((1, ndim, *shape), 2.5).double())
    # control point j of axis k sits at voxel (j - 1) * spacing_k: a linear grid is a linear field
    slope = torch.tensor([[0.3, -0.1, 0.2], [0.05, 0.2, -0.3], [0.1, 0.1, 0.1]])[:ndim, :ndim].double()
    knots = spatial.identity_grid(grid, dtype=torch.float64)
    knots = (knots - 1) * torch.tensor(steps, dtype=torch.float64).view(ndim, *[1] * ndim)
    control = torch.einsum("ij,j...->i...", slope, knots)[None] + 1.0
    expected = torch.einsum("ij,j...->i...", slope, spatial.identity_grid(shape, dtype=torch.float64))
    torch.testing.assert_close(bspline_disp(control, spacing, shape), expected[None] + 1.0)
    assert losses.bending_loss(bspline_disp(control, spacing, shape)).abs() < 1e-20


@pytest.mark.parametrize(("shape", "spacing"), [((37, 50), 4), ((20, 21, 19), (3, 5, 2))])
def test_refine_control_points_is_exact(shape, spacing):
    ndim = len(shape)
    steps = [spacing] * ndim if isinstance(spacing, int) else list(spacing)
    coarse_steps = [2 * s for s in steps]
    coarse = torch.randn(2, ndim, *control_grid_shape(shape, coarse_steps), dtype=torch.float64)
    fine = refine_control_points(coarse, spacing, shape)
    assert list(fine.shape[2:]) == control_grid_shape(shape, spacing)
    torch.testing.assert_close(bspline_disp(fine, spacing, shape), bspline_disp(coarse, coarse_steps, shape))


def test_bspline_disp_gradcheck():
    control = torch.randn(1, 2, *control_grid_shape((9, 7), 3), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: bspline_disp(c, 3, (9, 7)), (control,))


def test_register_ffd_recovers_known_deformation():
    shape = (64, 64)
    moving, fixed, truth = _deformed_pair(shape, seed=8, magnitude=2.0)
    result = register_ffd(moving, fixed, spacing=8, loss="ncc", weight=0.1, levels=2)
    magnitude = _interior(truth.norm(dim=1, keepdim=True)).mean()
    error = _interior((result.disp - truth).norm(dim=1, keepdim=True)).mean()
    assert error < 0.05 * magnitude, f"field error {error:.3f} vs magnitude {magnitude:.3f}"
    torch.testing.assert_close(result.disp, bspline_disp(result.control_points, 8, shape))
    torch.testing.assert_close(result.moved, spatial.warp(moving, result.disp))
    assert metrics.folding_fraction(result.disp).item() == 0.0


def test_register_ffd_3d_smoke():
    shape = (24, 24, 24)
    moving, fixed, truth = _deformed_pair(shape, seed=3, magnitude=1.0)
    result = register_ffd(moving, fixed, spacing=6, loss="mse", levels=2, iterations=20, lr=0.3)
    assert result.control_points.shape == (1, 3, *control_grid_shape(shape, 6))
    assert losses.mse_loss(result.moved, fixed) < 0.5 * losses.mse_loss(moving, fixed)


def test_ffd_errors():
    image = torch.rand(1, 1, 20, 20)
    with pytest.raises(ValueError, match=r"argument 'spacing' must have 2 entries"):
        register_ffd(image, image, spacing=(4, 4, 4))
    with pytest.raises(ValueError, match=r"argument 'spacing' must be an integer >= 1"):
        register_ffd(image, image, spacing=0)
    with pytest.raises(ValueError, match=r"'control_points' must have spatial shape \(8, 8\)"):
        bspline_disp(torch.zeros(1, 2, 5, 5), 4, (20, 20))
    with pytest.raises(ValueError, match=r"'init_control_points' must have spatial shape"):
        register_ffd(image, image, spacing=4, levels=1, init_control_points=torch.zeros(1, 2, 3, 3))


# --------------------------------------------------------------------------------------------
# landmarks


def test_tre_known_answers():
    fixed = [[10.0, 10.0], [5.0, 20.0], [0.0, 0.0]]
    moving = [[13.0, 14.0], [5.0, 20.0], [3.0, 4.0]]
    torch.testing.assert_close(tre(fixed, moving), torch.tensor([5.0, 0.0, 5.0]).double())
    shift = torch.zeros(1, 2, 32, 32)
    shift[:, 0], shift[:, 1] = 3.0, 4.0
    torch.testing.assert_close(tre(fixed, [[13.0, 14.0], [8.0, 24.0], [3.0, 4.0]], shift), torch.zeros(3).double())
    torch.testing.assert_close(
        tre([[0.0, 0.0]], [[3.0, 4.0]], spacing=(2.0, 0.5)), torch.tensor([math.sqrt(36 + 4)]).double()
    )
    # a linear field is sampled exactly at fractional points (linear interpolation)
    grid = spatial.identity_grid((16, 18, 20), dtype=torch.float64)
    linear = torch.stack([0.1 * grid[1], -0.2 * grid[0], 0.05 * grid[2]])
    points = torch.tensor([[3.3, 7.25, 11.5], [0.0, 17.0, 19.0]], dtype=torch.float64)
    mapped = points + torch.stack([0.1 * points[:, 1], -0.2 * points[:, 0], 0.05 * points[:, 2]], dim=1)
    torch.testing.assert_close(tre(points, mapped, linear), torch.zeros(2).double())


@pytest.mark.parametrize("ndim", [2, 3])
def test_fit_tps_interpolates_and_reproduces_affine(ndim):
    gen = torch.Generator().manual_seed(ndim)
    source = 30 * torch.rand(12, ndim, generator=gen, dtype=torch.float64)
    target = source + torch.randn(12, ndim, generator=gen, dtype=torch.float64)
    spline = fit_tps(source, target)
    torch.testing.assert_close(spline.transform(source), target)
    # affine-related points: the radial part vanishes and the affine is reproduced anywhere
    matrix = torch.cat(
        [
            torch.eye(ndim).double() + 0.1 * torch.randn(ndim, ndim, generator=gen).double(),
            torch.randn(ndim, 1, generator=gen).double(),
        ],
        1,
    )
    affine_target = source @ matrix[:, :ndim].T + matrix[:, ndim]
    spline = fit_tps(source, affine_target)
    assert spline.weights.abs().max() < 1e-8
    others = 30 * torch.rand(5, ndim, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(spline.transform(others), others @ matrix[:, :ndim].T + matrix[:, ndim])
    torch.testing.assert_close(fit_affine(source, affine_target), matrix)
    # the dense field agrees with the point map: disp(x) = f(x) - x
    shape = (8, 9) if ndim == 2 else (5, 6, 7)
    disp = spline.to_disp(shape, dtype=torch.float64, chunk=17)
    expected = spatial.affine_to_disp(matrix[None], shape)
    torch.testing.assert_close(disp, expected)
    # regularisation smooths: landmarks are no longer hit exactly but the affine still is
    smooth = fit_tps(source, target, regularisation=1e3)
    assert (smooth.transform(source) - target).abs().max() > 1e-3


def test_tps_field_maps_fixed_landmarks_to_moving_ones():
    fixed = torch.tensor([[5.0, 5.0], [5.0, 25.0], [25.0, 5.0], [25.0, 25.0], [15.0, 12.0]])
    moving = fixed + torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.5], [0.5, 0.5], [2.0, -1.0]])
    disp = fit_tps(fixed, moving).to_disp((32, 32))
    assert tre(fixed, moving, disp).max() < 1e-4
    assert tre(fixed, moving).mean() > 1.0


def test_landmark_errors():
    square = [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match=r"fit_tps: argument 'source' is empty"):
        fit_tps(np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"tre: argument 'points_fixed' is empty"):
        tre([], [])
    with pytest.raises(ValueError, match=r"must hold the same number of points .* got 3 and 2"):
        tre(square, square[:2])
    with pytest.raises(ValueError, match=r"must have shape \(N, ndim\) with ndim 2 or 3, got \(3, 4\)"):
        fit_tps(np.zeros((3, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"must have the same dimension, got 2 and 3"):
        fit_tps(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"argument 'source' needs at least 3 points for a 2D fit, got 2"):
        fit_tps(square[:2], square[:2])
    with pytest.raises(ValueError, match=r"points of argument 'source' are collinear"):
        fit_tps([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], square + [[1.0, 1.0]])
    with pytest.raises(ValueError, match=r"coplanar"):
        fit_affine(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0.0]]), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"duplicate points \(indices 0 and 3\)"):
        fit_tps(square + [[0.0, 0.0]], square + [[0.5, 0.0]])
    with pytest.raises(ValueError, match=r"argument 'regularisation' must be a finite number >= 0"):
        fit_tps(square, square, regularisation=-1.0)
    with pytest.raises(ValueError, match=r"argument 'disp' is a 3D field but the points have 2"):
        tre(square, square, torch.zeros(1, 3, 4, 4, 4))
    with pytest.raises(ValueError, match=r"argument 'disp' must hold one field"):
        tre(square, square, torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"argument 'points' must have 2 coordinates"):
        fit_tps(square, square).transform([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match=r"argument 'points_fixed' contains NaN"):
        tre([[math.nan, 0.0]], [[0.0, 0.0]])


def test_public_api():
    expected = {
        "register_affine",
        "register_dense",
        "register_ffd",
        "refine_network_prediction",
        "moments_init",
        "centre_of_mass",
        "matrix_to_world",
        "bspline_disp",
        "control_grid_shape",
        "refine_control_points",
        "tre",
        "fit_tps",
        "fit_affine",
        "AffineResult",
        "DenseResult",
        "FFDResult",
        "ThinPlateSpline",
    }
    assert expected <= set(optimize.__all__)
    assert all(hasattr(optimize, name) for name in optimize.__all__)
    for result in (optimize.AffineResult, optimize.DenseResult, optimize.FFDResult):
        assert "loss_history" in result._fields


def test_register_affine_batch_of_pairs_is_solved_pair_by_pair():
    shape = (64, 64)
    truths = [
        _about_centre(_rotation(math.radians(a), 2), torch.tensor(s).double(), shape)
        for a, s in ((6.0, [2.0, -1.0]), (-4.0, [-1.5, 2.5]))
    ]
    pairs = [_transformed_pair(shape, seed=20 + k, matrix=t) for k, t in enumerate(truths)]
    moving = torch.cat([p[0] for p in pairs])
    fixed = torch.cat([p[1] for p in pairs])
    result = register_affine(moving, fixed, transform="rigid", loss="mse")
    assert result.matrix_voxel.shape == (2, 2, 3) and result.matrix_world.shape == (2, 3, 3)
    for k, truth in enumerate(truths):
        assert _mean_disp_error(result.matrix_voxel[k], truth, shape) < 0.1


def test_adam_matches_torch_optim_adam_step_for_step():
    """The optimisers' own Adam (no torch.optim import) makes torch.optim.Adam's updates, lr changes included."""
    from morphreg.optimize._common import Adam

    gen = torch.Generator().manual_seed(0)
    target = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    ours = [torch.zeros(3, 4, dtype=torch.float64, requires_grad=True), torch.ones(2, dtype=torch.float64,
                                                                                   requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_(True) for p in ours]
    mine, reference = Adam(ours, lr=0.1), torch.optim.Adam(theirs, lr=0.1, foreach=False)
    for step in range(40):
        for params, opt in ((ours, mine), (theirs, reference)):
            opt.zero_grad()
            ((params[0] - target) ** 4).sum().add(params[1].pow(2).sum() * (step % 3)).backward()
            opt.step()
        lr = 0.1 * (1 + math.cos(step / 7)) / 2 + 1e-3
        mine.lr = lr
        reference.param_groups[0]["lr"] = lr
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    assert not torch.allclose(ours[0], torch.zeros_like(ours[0]))
