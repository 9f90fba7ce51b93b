"""Separable filters, the cached-grid warper and the local NCC force of the greedy method."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from morphreg import spatial
from morphreg.optimize._filters import box_sum, gaussian_blur
from morphreg.optimize.greedy import LocalNCC, _largest_length


@pytest.mark.parametrize("shape, sigma", [((1, 2, 20, 24), 1.0), ((1, 3, 12, 14, 16), 0.5), ((2, 1, 9, 10, 11), 1.5)])
def test_gaussian_blur_matches_scipy(shape, sigma):
    torch.manual_seed(0)
    image = torch.randn(shape, dtype=torch.float64)
    ndim = len(shape) - 2
    ours = gaussian_blur(image, [sigma] * ndim)
    # scipy's radius is int(truncate * sigma + 0.5): with truncate 3 the same taps as ceil(3 sigma) here
    expected = ndimage.gaussian_filter(image.numpy(), [0, 0] + [sigma] * ndim, mode="nearest", truncate=3.0)
    assert torch.allclose(ours, torch.from_numpy(expected), atol=1e-12)


def test_gaussian_blur_skips_zero_sigma_and_keeps_gradients():
    image = torch.randn(1, 1, 8, 9, requires_grad=True)
    out = gaussian_blur(image, [0.0, 1.0])
    expected = ndimage.gaussian_filter1d(image.detach().numpy(), 1.0, axis=3, mode="nearest", truncate=3.0)
    assert np.allclose(out.detach().numpy(), expected, atol=1e-6)
    small = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gaussian_blur(x, [0.7, 1.0]), (small,))


@pytest.mark.parametrize("channelwise", [True, False])
def test_large_tensors_filtered_channel_by_channel_give_the_same_result(monkeypatch, channelwise):
    """The channel-at-a-time path of large tensors (made to apply here) = scipy, box and blur."""
    from morphreg.optimize import _filters

    monkeypatch.setattr(_filters, "_CHANNELWISE", 0 if channelwise else 10**12)
    image = torch.randint(0, 100, (2, 3, 9, 10, 11)).double()
    box = ndimage.uniform_filter(image.numpy(), size=(1, 1, 7, 7, 7), mode="constant") * 7**3
    assert torch.equal(box_sum(image, 3), torch.from_numpy(np.round(box)))
    blur = ndimage.gaussian_filter(image.numpy(), [0, 0, 1.0, 0.5, 1.5], mode="nearest", truncate=3.0)
    assert torch.allclose(gaussian_blur(image, [1.0, 0.5, 1.5]), torch.from_numpy(blur), atol=1e-10)


@pytest.mark.parametrize("radius", [1, 2, 3, 4, 6])
def test_box_sum_is_exact_for_integers(radius):
    image = torch.randint(0, 1000, (1, 2, 7, 8, 9)).double()
    width = 2 * radius + 1
    expected = ndimage.uniform_filter(image.numpy(), size=(1, 1, width, width, width), mode="constant") * width**3
    assert torch.equal(box_sum(image, radius), torch.from_numpy(np.round(expected)))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_grid_warper_equals_warp(ndim, padding):
    torch.manual_seed(1)
    shape = (13, 17, 11)[:ndim]
    values = torch.randn(2, 3, *shape)
    disp = 3 * torch.randn(2, ndim, *shape)
    warper = spatial.GridWarper(shape, padding=padding)
    assert torch.allclose(warper(values, disp), spatial.warp(values, disp, padding=padding), atol=1e-5)


def test_local_ncc_matches_ncc_loss_in_float64_and_is_zero_where_flat():
    from morphreg import losses

    torch.manual_seed(2)
    fixed = torch.rand(1, 1, 16, 18, 20)
    moved = (fixed + 0.1 * torch.randn_like(fixed)).clamp(0, 1)
    moved[..., :8] = 0.5  # a flat region: no information, no force
    force, cc = LocalNCC(fixed, 2).force(moved)
    assert cc == pytest.approx(-float(losses.ncc_loss(moved.double(), fixed.double(), window=5)), rel=1e-5)
    assert force.shape == (1, 3, 16, 18, 20)
    assert float(force[..., :5].abs().max()) == 0.0


def test_largest_length_per_batch_item():
    field = torch.randn(3, 3, 5, 6, 7)
    expected = torch.linalg.vector_norm(field, dim=1).flatten(1).amax(1)
    assert torch.allclose(_largest_length(field).flatten(), expected)
    assert _largest_length(field).shape == (3, 1, 1, 1, 1)


def test_local_ncc_ignores_texture_below_the_stabiliser():
    # faint independent noise (std 3e-4 on [0, 1] images) in both images: no structure to align,
    # and its force must stay negligible next to the force of real texture
    torch.manual_seed(3)
    fixed = torch.rand(1, 1, 16, 18, 20)
    moved = (fixed + 0.1 * torch.randn_like(fixed)).clamp(0, 1)
    for image in (fixed, moved):
        image[..., :8] = 0.5 + 3e-4 * torch.randn_like(image[..., :8])
    force = LocalNCC(fixed, 2).force(moved)[0]
    assert float(force[..., :5].abs().max()) < 0.02 * float(force[..., 12:].abs().max())


def test_reuse_freed_memory_applies_on_linux_glibc_only(monkeypatch):
    import ctypes
    import platform
    import sys

    import morphreg

    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert morphreg.reuse_freed_memory() is True
    monkeypatch.setattr(sys, "platform", "darwin")
    assert morphreg.reuse_freed_memory() is False  # off Linux: nothing to do
    monkeypatch.setattr(sys, "platform", "linux")

    def no_libc(*args, **kwargs):
        raise OSError("no libc")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert morphreg.reuse_freed_memory() is False  # musl and others: no mallopt


@pytest.mark.parametrize("shape, radius", [((7, 5), 2), ((3, 9, 4), 4), ((1, 6), 1)])
def test_window_counts_is_the_box_sum_of_ones(shape, radius):
    from morphreg.optimize._filters import box_sum, window_counts

    expected = box_sum(torch.ones(1, 1, *shape, dtype=torch.float64), radius)[:, 0]
    assert torch.equal(window_counts(shape, radius, dtype=torch.float64), expected)
