"""Known answers for the grid convention, warping, composition, integration and Jacobians."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from synthetic import smooth_image

from morphreg import spatial
from morphreg.models import SpatialTransformer, VecInt

SHAPES = {2: (12, 15), 3: (8, 9, 11)}


@pytest.mark.parametrize("ndim", [2, 3])
def test_identity_grid_is_ij_voxel_coordinates(ndim):
    shape = SHAPES[ndim]
    grid = spatial.identity_grid(shape)
    assert grid.shape == (ndim, *shape)
    for k in range(ndim):
        index = [0] * ndim
        index[k] = shape[k] - 1
        assert grid[(k, *index)].item() == shape[k] - 1
        assert grid[(k, *[0] * ndim)].item() == 0


@pytest.mark.parametrize("ndim", [2, 3])
def test_zero_field_is_exact_identity(ndim):
    image = torch.rand(2, 3, *SHAPES[ndim], dtype=torch.float64)
    disp = torch.zeros(2, ndim, *SHAPES[ndim], dtype=torch.float64)
    # exact up to the round-off of grid_sample's coordinate normalisation
    assert (spatial.warp(image, disp) - image).abs().max() < 1e-13
    assert (spatial.warp(image.float(), disp.float()) - image.float()).abs().max() < 1e-5
    labels = torch.randint(0, 40, (2, 1, *SHAPES[ndim]), dtype=torch.int32)
    assert torch.equal(spatial.warp(labels, disp, mode="nearest"), labels)


@pytest.mark.parametrize(("ndim", "axis"), [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)])
def test_integer_shift_moves_asymmetric_image_along_the_right_axis(ndim, axis):
    shape = SHAPES[ndim]
    image = torch.arange(math.prod(shape), dtype=torch.float32).reshape(1, 1, *shape)
    disp = torch.zeros(1, ndim, *shape)
    disp[:, axis] = 2.0  # moved(x) = image(x + 2 e_axis)
    moved = spatial.warp(image, disp, padding="zeros")
    sl_out = [slice(None)] * (ndim + 2)
    sl_in = [slice(None)] * (ndim + 2)
    sl_out[2 + axis] = slice(0, shape[axis] - 2)
    sl_in[2 + axis] = slice(2, None)
    assert torch.allclose(moved[tuple(sl_out)], image[tuple(sl_in)], atol=1e-4)
    tail = [slice(None)] * (ndim + 2)
    tail[2 + axis] = slice(shape[axis] - 2, None)
    assert torch.all(moved[tuple(tail)] == 0)


def test_nearest_keeps_integer_dtype_and_values():
    labels = torch.randint(0, 5, (1, 1, 10, 10), dtype=torch.uint8)
    disp = torch.randn(1, 2, 10, 10)
    moved = spatial.warp(labels, disp, mode="nearest")
    assert moved.dtype == torch.uint8
    assert set(moved.unique().tolist()) <= set(labels.unique().tolist())


def test_half_voxel_shift_interpolates_linearly():
    image = torch.tensor([[0.0, 2.0, 4.0, 6.0]]).view(1, 1, 1, 4).expand(1, 1, 3, 4).contiguous()
    disp = torch.zeros(1, 2, 3, 4)
    disp[:, 1] = 0.5
    moved = spatial.warp(image, disp)
    assert torch.allclose(moved[0, 0, 0, :3], torch.tensor([1.0, 3.0, 5.0]))


def test_warp_broadcasts_single_field_over_batch():
    image = torch.rand(3, 1, 9, 9)
    disp = torch.randn(1, 2, 9, 9)
    out = spatial.warp(image, disp)
    assert out.shape == (3, 1, 9, 9)
    assert torch.allclose(out[2:], spatial.warp(image[2:], disp))


@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_gradcheck_float64(ndim):
    shape = (5, 6) if ndim == 2 else (4, 5, 4)
    image = torch.rand(1, 1, *shape, dtype=torch.float64, requires_grad=True)
    # keep samples away from integer knots where linear interpolation has kinks
    disp = (0.3 + 0.2 * torch.rand(1, ndim, *shape, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(spatial.warp, (image, disp), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_module_twins_agree_with_functions(ndim):
    image = smooth_image(SHAPES[ndim])
    disp = torch.randn(1, ndim, *SHAPES[ndim])
    assert torch.equal(SpatialTransformer()(image, disp), spatial.warp(image, disp))
    assert torch.equal(VecInt(5)(0.3 * disp), spatial.integrate(0.3 * disp, 5))


def _linear_map_field(matrix: torch.Tensor, offset: torch.Tensor, shape) -> torch.Tensor:
    """``(1, ndim, *shape)`` float64 displacement of the voxel map ``x -> matrix @ x + offset``,
    built by hand from voxel indices (no morphreg code)."""
    ndim = len(shape)
    index = torch.from_numpy(np.indices(shape, dtype=np.float64).reshape(ndim, -1))
    mapped = matrix.double() @ index + offset.double().view(ndim, 1)
    return (mapped - index).reshape(1, ndim, *shape)


def _maps_inside(matrix: torch.Tensor, offset: torch.Tensor, shape, margin: float = 0.0) -> torch.Tensor:
    """``(*shape)`` bool: voxels whose image under ``x -> matrix @ x + offset`` lies in the grid."""
    ndim = len(shape)
    index = torch.from_numpy(np.indices(shape, dtype=np.float64).reshape(ndim, -1))
    mapped = matrix.double() @ index + offset.double().view(ndim, 1)
    upper = torch.tensor(shape, dtype=torch.float64).view(ndim, 1) - 1
    return ((mapped >= margin) & (mapped <= upper - margin)).all(0).reshape(shape)


@pytest.mark.parametrize("ndim", [2, 3])
def test_compose_of_linear_maps_is_their_product(ndim):
    # pull-back: warp(warp(img, first), second)(x) = img(phi_1(phi_2(x))), so compose(first, second)
    # is the displacement of phi_1 o phi_2: x -> M1 (M2 x + t2) + t1 (exact for linear fields
    # wherever phi_2(x) stays in the grid; border padding elsewhere)
    shape = (24, 28) if ndim == 2 else (14, 16, 18)
    gen = torch.Generator().manual_seed(5)
    m1 = torch.eye(ndim, dtype=torch.float64) + 0.15 * torch.randn(ndim, ndim, generator=gen, dtype=torch.float64)
    m2 = torch.eye(ndim, dtype=torch.float64) + 0.15 * torch.randn(ndim, ndim, generator=gen, dtype=torch.float64)
    t1 = 1.5 * torch.randn(ndim, generator=gen, dtype=torch.float64)
    t2 = 1.5 * torch.randn(ndim, generator=gen, dtype=torch.float64)
    first, second = _linear_map_field(m1, t1, shape), _linear_map_field(m2, t2, shape)
    composed = spatial.compose(first, second)
    expected = _linear_map_field(m1 @ m2, m1 @ t2 + t1, shape)
    inside = _maps_inside(m2, t2, shape)
    assert inside.float().mean() > 0.4
    error = (composed - expected).abs().amax(1)[0]
    assert error[inside].max() < 1e-9
    # what a wrong composition would give is far from it: the sum, or the other order
    assert (first + second - expected).abs().amax(1)[0][inside].max() > 0.5
    wrong_order = _linear_map_field(m2 @ m1, m2 @ t1 + t2, shape)
    assert (wrong_order - expected).abs().amax(1)[0][inside].max() > 0.5
    # constant fields (translations) simply add
    a, b = torch.zeros(1, ndim, *shape), torch.zeros(1, ndim, *shape)
    a[:, 0], b[:, -1] = 1.5, -0.75
    assert torch.allclose(spatial.compose(a, b), a + b, atol=1e-6)


def test_compose_order_matches_sequential_warping():
    shape = (32, 32)
    image = smooth_image(shape)
    first = 2.0 * smooth_image(shape, seed=1).expand(1, 2, *shape).contiguous()
    second = torch.zeros(1, 2, *shape)
    second[:, 0] = 3.0  # translation
    sequential = spatial.warp(spatial.warp(image, first), second)
    composed = spatial.warp(image, spatial.compose(first, second))
    interior = (slice(None), slice(None), slice(4, 24), slice(4, 28))
    assert torch.allclose(sequential[interior], composed[interior], atol=2e-3)
    wrong = spatial.warp(image, spatial.compose(second, first))
    assert (wrong[interior] - sequential[interior]).abs().max() > 1e-2


@pytest.mark.parametrize("ndim", [2, 3])
def test_integrate_zero_and_constant(ndim):
    shape = SHAPES[ndim]
    zero = torch.zeros(1, ndim, *shape)
    assert torch.equal(spatial.integrate(zero, 7), zero)
    const = torch.zeros(1, ndim, *shape)
    const[:, 0] = 1.25
    const[:, 1] = -0.5
    assert torch.allclose(spatial.integrate(const, 7), const, atol=1e-5)
    assert torch.equal(spatial.integrate(const, 0), const)


LINEAR_VELOCITY = {  # generators with rotation, shear and expansion: exp(A) is far from I + A
    2: [[0.1, -0.6], [0.5, -0.2]],
    3: [[0.1, -0.5, 0.2], [0.4, -0.1, 0.1], [-0.2, 0.3, 0.05]],
}


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("steps", [1, 3, 7])
def test_integrate_linear_velocity_known_answer(ndim, steps):
    # v(x) = A (x - c): each squaring composes a linear map with itself, exactly under linear
    # interpolation, so integrate(v, s) = ((I + A / 2**s) ** (2**s) - I)(x - c) inside the grid;
    # as s grows this is the flow of v, expm(A) - I, up to the discretisation error stated below.
    shape = (40, 40) if ndim == 2 else (26, 26, 26)
    a = torch.tensor(LINEAR_VELOCITY[ndim], dtype=torch.float64)
    centre = (torch.tensor(shape, dtype=torch.float64) - 1) / 2
    eye = torch.eye(ndim, dtype=torch.float64)
    velocity = _linear_map_field(eye + a, -a @ centre, shape)

    def about_centre(matrix):
        return _linear_map_field(matrix, centre - matrix @ centre, shape)

    result = spatial.integrate(velocity, steps)
    expected = about_centre(torch.linalg.matrix_power(eye + a / 2**steps, 2**steps))
    flow = about_centre(torch.linalg.matrix_exp(a))
    # voxels whose trajectory stays well inside the grid
    radius = (spatial.identity_grid(shape, dtype=torch.float64) - centre.view(ndim, *[1] * ndim)).norm(dim=0)
    near = radius < 0.45 * (min(shape) - 1) / math.exp(torch.linalg.matrix_norm(a, ord=2).item())
    assert near.sum() > 50
    error = (result - expected).norm(dim=1)[0][near]
    assert error.max() < 1e-9
    # the identity function (or one squaring too few) is far from the answer
    assert (velocity - expected).norm(dim=1)[0][near].max() > 0.2
    fewer = about_centre(torch.linalg.matrix_power(eye + a / 2**steps, 2 ** (steps - 1)))
    assert (fewer - expected).norm(dim=1)[0][near].max() > 0.2
    if steps == 7:  # 7 squarings approximate the flow within 0.03 voxel here (|A|^2 / 2**8 * r)
        assert (result - flow).norm(dim=1)[0][near].max() < 0.03


def test_integrate_gives_inverse_for_negated_velocity():
    shape = (40, 40)
    velocity = 3.0 * (smooth_image(shape, seed=2) - 0.2).expand(1, 2, *shape).contiguous()
    velocity[:, 1] *= -1
    forward = spatial.integrate(velocity, 7)
    backward = spatial.integrate(-velocity, 7)
    roundtrip = spatial.compose(forward, backward)
    interior = (slice(None), slice(None), slice(6, 34), slice(6, 34))
    assert forward.abs().max() > 1.0
    # interpolation error only: max < 3 % and mean < 0.2 % of the 3-voxel deformation
    assert roundtrip[interior].abs().max() < 0.1
    assert roundtrip[interior].abs().mean() < 0.006


@pytest.mark.parametrize("ndim", [2, 3])
def test_resize_rescales_vectors(ndim):
    shape = [9] * ndim
    disp = torch.zeros(1, ndim, *shape)
    disp[:, 0] = 1.0
    up = spatial.resize(disp, size=[17] * ndim)
    assert up.shape == (1, ndim, *[17] * ndim)
    assert torch.allclose(up[:, 0], torch.full_like(up[:, 0], 2.0))
    assert torch.allclose(up[:, 1:], torch.zeros_like(up[:, 1:]))
    back = spatial.resize(up, scale_factor=0.5)
    assert back.shape == disp.shape
    assert torch.allclose(back, disp, atol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
def test_affine_to_disp_and_analytic_jacobian(ndim):
    shape = SHAPES[ndim]
    gen = torch.Generator().manual_seed(3)
    linear = torch.eye(ndim) + 0.2 * torch.randn(ndim, ndim, generator=gen, dtype=torch.float32)
    translation = torch.randn(ndim, 1, generator=gen)
    matrix = torch.cat([linear, translation], dim=1)
    disp = spatial.affine_to_disp(matrix, shape)
    # the displacement at voxel x is A x + t - x
    x = torch.tensor([s - 2 for s in shape], dtype=torch.float32)
    expected = linear @ x + translation[:, 0] - x
    assert torch.allclose(disp[(0, slice(None), *[s - 2 for s in shape])], expected, atol=1e-5)
    det = spatial.jacobian_det(disp)
    assert det.shape == (1, *shape)
    assert torch.allclose(det, torch.full_like(det, torch.linalg.det(linear).item()), atol=1e-4)


def test_jacobian_det_of_analytic_nonlinear_field():
    # u_0 = 0.01 * x0^2  -> d(x0 + u0)/dx0 = 1 + 0.02 x0, exact with central differences inside
    shape = (20, 10)
    grid = spatial.identity_grid(shape, dtype=torch.float64)
    disp = torch.zeros(1, 2, *shape, dtype=torch.float64)
    disp[0, 0] = 0.01 * grid[0] ** 2
    det = spatial.jacobian_det(disp)[0]
    assert torch.allclose(det[1:-1], 1 + 0.02 * grid[0][1:-1], atol=1e-12)


def test_folding_field_has_negative_determinant():
    shape = (16, 16)
    disp = torch.zeros(1, 2, *shape)
    disp[0, 0] = -1.5 * spatial.identity_grid(shape)[0]  # x0 -> -0.5 x0: orientation flipped
    assert (spatial.jacobian_det(disp) < 0).all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: spatial.warp(torch.rand(4, 4), torch.zeros(1, 2, 4, 4)), "argument 'image'.*shape"),
        (lambda: spatial.warp(torch.rand(1, 1, 4, 4), torch.zeros(1, 3, 4, 4)), "argument 'disp'"),
        (lambda: spatial.warp(torch.rand(1, 1, 4, 4), torch.zeros(1, 2, 5, 4)), "spatial shape"),
        (lambda: spatial.warp(torch.ones(1, 1, 4, 4, dtype=torch.int64), torch.zeros(1, 2, 4, 4)), "mode='nearest'"),
        (lambda: spatial.warp(torch.rand(1, 1, 4, 4), torch.zeros(1, 2, 4, 4), mode="cubic"), "'mode' must be one of"),
        (lambda: spatial.warp(torch.rand(2, 1, 4, 4), torch.zeros(3, 2, 4, 4)), "batch sizes"),
        (lambda: spatial.warp("x", torch.zeros(1, 2, 4, 4)), "must be a torch.Tensor"),
        (lambda: spatial.integrate(torch.zeros(1, 2, 4, 4), steps=-1), "'steps'"),
        (lambda: spatial.resize(torch.zeros(1, 2, 4, 4)), "exactly one"),
        (lambda: spatial.affine_to_disp(torch.zeros(2, 3), (4, 4)), "singular"),
        (lambda: spatial.affine_to_disp(torch.eye(3)[:2, :2], (4, 4)), "must have shape"),
        (lambda: spatial.jacobian_det(torch.zeros(1, 2, 1, 4)), ">= 2"),
    ],
)
def test_error_messages_name_the_argument(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


@pytest.mark.parametrize("ndim", [2, 3])
def test_sample_is_exact_for_a_linear_image_and_clamps_at_the_border(ndim):
    shape = (6, 5, 4)[:ndim]
    grid = spatial.identity_grid(shape, dtype=torch.float64)
    slopes = (2.0, -3.0, 0.5)[:ndim]
    image = (1.0 + sum(s * g for s, g in zip(slopes, grid))).view(1, 1, *shape)
    image = torch.cat([image, 2 * image], dim=1)  # two channels
    points = torch.tensor([[0.25, 1.5, 2.75], [3.1, 0.0, 1.9], [4.99, 3.2, 0.01]], dtype=torch.float64)[:, :ndim]
    coords = points.T.unsqueeze(0)  # (1, ndim, N)
    values = spatial.sample(image, coords)
    expected = 1.0 + points @ torch.tensor(slopes, dtype=torch.float64)
    assert values.shape == (1, 2, 3)
    assert torch.allclose(values[0, 0], expected, atol=1e-12)
    assert torch.allclose(values[0, 1], 2 * expected, atol=1e-12)
    # outside the grid: border values (the coordinate clamped to the last voxel)
    outside = torch.full((1, ndim, 1), -7.0, dtype=torch.float64)
    outside[0, 0, 0] = 40.0
    clamped = torch.zeros(ndim, dtype=torch.float64)
    clamped[0] = shape[0] - 1
    assert torch.allclose(spatial.sample(image, outside)[0, 0, 0], 1.0 + clamped @ torch.tensor(slopes, dtype=torch.float64))
    assert spatial.sample(image, outside, padding="zeros")[0, 0, 0] == 0.0


def test_sample_agrees_with_warp_and_keeps_the_points_shape():
    image = torch.rand(2, 1, 9, 7, 8)
    disp = torch.randn(2, 3, 9, 7, 8)
    coords = spatial.identity_grid((9, 7, 8)).unsqueeze(0) + disp
    assert torch.allclose(spatial.sample(image, coords), spatial.warp(image, disp), atol=1e-6)
    nearest = spatial.sample(image, coords[:1, :, :3, :2, 0], mode="nearest")  # batch 1 broadcasts
    assert nearest.shape == (2, 1, 3, 2)
    assert torch.equal(nearest, spatial.warp(image, disp[:1].expand(2, -1, -1, -1, -1), mode="nearest")[:, :, :3, :2, 0])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: spatial.sample(torch.rand(1, 1, 4, 4), torch.zeros(1, 3, 5)), r"'coords' must be .*\(B, 2, \*out\)"),
        (lambda: spatial.sample(torch.rand(1, 1, 4, 4), torch.zeros(1, 2, 5, dtype=torch.long)), "floating-point"),
        (lambda: spatial.sample(torch.rand(2, 1, 4, 4), torch.zeros(3, 2, 5)), "batch sizes"),
        (lambda: spatial.sample(torch.rand(1, 1, 4, 4), torch.zeros(1, 2, 5), mode="cubic"), "'mode' must be one of"),
        (lambda: spatial.sample(torch.rand(1, 4, 4), torch.zeros(1, 2, 5)), "argument 'image'"),
    ],
)
def test_sample_error_messages_name_the_argument(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("depth", [12, 13])
def test_3d_sampling_cut_into_slabs_for_threads_is_exact(monkeypatch, channels, depth):
    """Without autograd a batch-1 3D grid is sampled as one slab per thread (torch's 3D kernel runs
    one thread per batch element): bit for bit the single call, odd depths in one piece."""
    from morphreg import spatial as sp

    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, channels, depth, 9, 10, generator=gen)
    disp = torch.randn(1, 3, depth, 9, 10, generator=gen) * 2
    whole = sp.warp(image, disp)
    threads = torch.get_num_threads()
    monkeypatch.setattr(sp, "_SPLIT_3D_POINTS", 0)
    calls = []
    original = sp.F.grid_sample
    monkeypatch.setattr(sp.F, "grid_sample", lambda values, grid, **kw: calls.append(grid.shape[0]) or
                        original(values, grid, **kw))
    try:
        torch.set_num_threads(2)
        sliced = sp.warp(image, disp)
        warper = sp.GridWarper(disp.shape[2:])(image, disp)
    finally:
        torch.set_num_threads(threads)
    assert calls == ([2, 2] if depth % 2 == 0 else [1, 1])
    assert torch.equal(sliced, whole)
    torch.testing.assert_close(warper, whole, rtol=0, atol=1e-5)
