"""Known answers, gradients, module twins and error paths of the losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from synthetic import smooth_image

from morphreg import losses, spatial

SHAPES = {2: (24, 28), 3: (12, 14, 16)}


def naive_ncc_loss(a, b, window):
    """Independent reference: dense box-filter convolution with explicit window sums."""
    ndim = a.dim() - 2
    conv = getattr(F, f"conv{ndim}d")
    kernel = torch.ones(1, 1, *[window] * ndim, dtype=a.dtype)

    def box(x):
        return conv(x, kernel, padding=window // 2)

    n = box(torch.ones_like(a))  # voxels of each window inside the image
    sa, sb = box(a), box(b)
    cross = box(a * b) - sa * sb / n
    var_a = (box(a * a) - sa * sa / n).clamp_min(0)
    var_b = (box(b * b) - sb * sb / n).clamp_min(0)
    return -torch.mean(cross * cross / (var_a * var_b + 1e-8 * n * n))


@pytest.mark.parametrize("ndim", [2, 3])
def test_ncc_matches_naive_dense_reference(ndim):
    a = torch.rand(2, 1, *SHAPES[ndim], dtype=torch.float64)
    b = torch.rand(2, 1, *SHAPES[ndim], dtype=torch.float64)
    assert torch.allclose(losses.ncc_loss(a, b, window=5), naive_ncc_loss(a, b, 5), atol=1e-10)


@pytest.mark.parametrize("ndim", [2, 3])
def test_ncc_identical_is_minimum_and_linear_invariant(ndim):
    a = torch.rand(1, 1, *SHAPES[ndim])
    best = losses.ncc_loss(a, a)
    assert best.item() == pytest.approx(-1.0, abs=1e-4)
    assert losses.ncc_loss(a, 3 * a + 1).item() == pytest.approx(best.item(), abs=1e-5)
    other = losses.ncc_loss(a, torch.rand_like(a))
    assert other > best + 0.5


@pytest.mark.parametrize("ndim", [2, 3])
def test_ncc_constant_regions_are_finite(ndim):
    a = torch.zeros(1, 1, *SHAPES[ndim], requires_grad=True)
    b = torch.ones(1, 1, *SHAPES[ndim])
    loss = losses.ncc_loss(a, b)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert torch.isfinite(a.grad).all()
    # large constant intensities (round-off could make variances negative)
    big = torch.full((1, 1, *SHAPES[ndim]), 1000.0)
    assert torch.isfinite(losses.ncc_loss(big, big + 0.0))


def test_mse_known_value_and_minimum():
    a = torch.zeros(1, 1, 4, 4)
    assert losses.mse_loss(a, a).item() == 0.0
    assert losses.mse_loss(a, a + 2).item() == pytest.approx(4.0)


def test_global_ncc_known_values():
    a = torch.rand(2, 1, 10, 10)
    assert losses.global_ncc_loss(a, 2 * a + 5).item() == pytest.approx(-1.0, abs=1e-5)
    assert losses.global_ncc_loss(a, -a).item() == pytest.approx(1.0, abs=1e-5)


def test_mi_identical_beats_shuffled_and_is_modality_agnostic():
    a = smooth_image((32, 32))
    inverted = 1.0 - a  # a different "modality" with a one-to-one intensity mapping
    shuffled = a.flatten()[torch.randperm(a.numel())].view_as(a)
    same = losses.mi_loss(a, a)
    assert losses.mi_loss(a, inverted).item() == pytest.approx(same.item(), abs=1e-4)
    assert losses.mi_loss(a, shuffled) > same + 0.5
    shifted = spatial.warp(a, torch.full((1, 2, 32, 32), 3.0))
    assert losses.mi_loss(a, shifted) > same


def test_dice_loss_known_values():
    labels = torch.randint(0, 3, (2, 10, 10))
    onehot = F.one_hot(labels, 3).movedim(-1, 1).float()
    assert losses.dice_loss(onehot, onehot).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.dice_loss(onehot, 1 - onehot).item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_grad_loss_known_answers(ndim):
    shape = SHAPES[ndim]
    const = torch.full((1, ndim, *shape), 3.0)
    assert losses.grad_loss(const).item() == 0.0
    ramp = spatial.identity_grid(shape)[None].clone() * 0.5  # every forward difference 0.5
    # each component varies along its own axis only: ndim of ndim*ndim difference maps are 0.5
    expected_l2 = sum((0.25 / ndim) for _ in range(ndim)) / ndim
    assert losses.grad_loss(ramp).item() == pytest.approx(expected_l2, rel=1e-3)
    assert losses.grad_loss(ramp, penalty="l1").item() == pytest.approx(0.5 / ndim, rel=1e-3)


@pytest.mark.parametrize("ndim", [2, 3])
def test_bending_of_linear_field_is_zero_and_of_quadratic_is_not(ndim):
    shape = SHAPES[ndim]
    gen = torch.Generator().manual_seed(0)
    matrix = torch.cat([torch.eye(ndim) + 0.3 * torch.randn(ndim, ndim, generator=gen),
                        torch.randn(ndim, 1, generator=gen)], 1)
    linear = spatial.affine_to_disp(matrix, shape)
    assert losses.bending_loss(linear).item() < 1e-8
    grid = spatial.identity_grid(shape)
    quadratic = torch.zeros(1, ndim, *shape)
    quadratic[0, 0] = 0.1 * grid[0] ** 2  # d2u/dx0^2 = 0.2 inside
    value = losses.bending_loss(quadratic).item()
    # (0.2)^2 inside, averaged over ndim components; the one-sided border rows lower it slightly
    assert 0.04 / ndim * 0.8 < value < 0.04 / ndim * 1.0001


@pytest.mark.parametrize(
    "fn",
    [
        lambda a, b: losses.ncc_loss(a, b, window=3),
        losses.mse_loss,
        losses.global_ncc_loss,
        lambda a, b: losses.mi_loss(a, b, bins=8),
    ],
)
def test_similarity_gradcheck_float64(fn):
    a = (0.1 + torch.rand(1, 1, 6, 7, dtype=torch.float64)).requires_grad_()
    b = torch.rand(1, 1, 6, 7, dtype=torch.float64)
    assert torch.autograd.gradcheck(fn, (a, b), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("fn", [losses.grad_loss, losses.bending_loss])
def test_regulariser_gradcheck_float64(fn):
    disp = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (disp,), eps=1e-6, atol=1e-6)


def test_modules_agree_with_functions():
    a, b = torch.rand(2, 1, 12, 12), torch.rand(2, 1, 12, 12)
    disp = torch.randn(2, 2, 12, 12)
    assert torch.equal(losses.NCCLoss(5)(a, b), losses.ncc_loss(a, b, window=5))
    assert torch.equal(losses.MSELoss()(a, b), losses.mse_loss(a, b))
    assert torch.equal(losses.GlobalNCCLoss()(a, b), losses.global_ncc_loss(a, b))
    assert torch.equal(losses.MILoss(16)(a[:, :1], b[:, :1]), losses.mi_loss(a, b, bins=16))
    assert torch.equal(losses.GradLoss("l1")(disp), losses.grad_loss(disp, "l1"))
    assert torch.equal(losses.BendingLoss()(disp), losses.bending_loss(disp))
    assert torch.equal(losses.DiceLoss()(a, b), losses.dice_loss(a, b))
    assert isinstance(losses.similarity_loss("ncc", window=7), losses.NCCLoss)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: losses.ncc_loss(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9)), "same shape"),
        (lambda: losses.ncc_loss(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), window=4), "odd"),
        (lambda: losses.mse_loss(torch.rand(8, 8), torch.rand(8, 8)), "argument 'a'"),
        (lambda: losses.mse_loss(torch.ones(1, 1, 8, 8, dtype=torch.int32),
                                 torch.ones(1, 1, 8, 8, dtype=torch.int32)), "floating-point"),
        (lambda: losses.mi_loss(torch.rand(1, 2, 8, 8), torch.rand(1, 2, 8, 8)), "1 channel"),
        (lambda: losses.grad_loss(torch.rand(1, 3, 8, 8)), "argument 'disp'"),
        (lambda: losses.grad_loss(torch.rand(1, 2, 8, 8), penalty="l3"), "'penalty' must be one of"),
        (lambda: losses.similarity_loss("ssim"), "'name' must be one of"),
    ],
)
def test_loss_errors_name_the_argument(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_grad_loss_does_not_scale_with_resolution():
    """MONAI #3485: the same physical deformation must cost the same at any resolution."""
    def field(n):
        x = torch.linspace(0, 1, n)
        grid = torch.stack(torch.meshgrid(x, x, indexing="ij"))
        physical = torch.stack([torch.sin(2 * torch.pi * grid[1]), torch.cos(2 * torch.pi * grid[0])])
        return (0.05 * physical * (n - 1))[None]  # 5 % of the extent, in voxels of this grid

    coarse, fine = losses.grad_loss(field(64)).item(), losses.grad_loss(field(128)).item()
    assert coarse == pytest.approx(fine, rel=0.02)


def test_loss_names_and_default_weights_have_one_home():
    assert losses.LOSSES == ("mse", "ncc", "gncc", "mi")
    assert set(losses.DEFAULT_WEIGHT) == set(losses.LOSSES)
    assert losses.DEFAULT_WEIGHT == {"ncc": 1.0, "mse": 0.01, "mi": 1.0, "gncc": 1.0}
    for name in losses.LOSSES:
        assert isinstance(losses.similarity_loss(name), torch.nn.Module)
    with pytest.raises(ValueError, match=r"similarity_loss: argument 'name' must be one of \['mse', 'ncc', 'gncc', 'mi'\]"):
        losses.similarity_loss("ssd")
    # the command line lists the losses without importing torch: its choices must not drift
    from morphreg.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    register_loss = next(a for a in sub["register"]._actions if a.dest == "loss")
    assert tuple(register_loss.choices) == losses.LOSSES
