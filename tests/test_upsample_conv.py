"""The decoder's convolution after nearest upsampling, computed at low resolution (models/upsample_conv.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("low_shape", [(5, 7), (3, 4, 5)])
def test_conv_after_upsampling_is_computed_exactly_at_low_resolution(low_shape):
    """conv(cat([nearest x2 upsample(low), skip])) at low resolution: the same output and gradients."""
    from morphreg.models.upsample_conv import conv_upsampled

    torch.manual_seed(0)
    ndim = len(low_shape)
    conv = getattr(torch.nn, f"Conv{ndim}d")(6 + 3, 4, 3, padding=1)
    low = torch.randn(2, 6, *low_shape, requires_grad=True)
    skip = torch.randn(2, 3, *[2 * n for n in low_shape], requires_grad=True)
    upsampled = torch.nn.functional.interpolate(low, scale_factor=2.0, mode="nearest")
    expected = conv(torch.cat([upsampled, skip], dim=1))
    target = torch.randn_like(expected)
    grads_expected = torch.autograd.grad((expected * target).sum(), [low, skip, conv.weight, conv.bias])
    got = conv_upsampled(conv, low, skip)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad((got * target).sum(), [low, skip, conv.weight, conv.bias])
    for g, e in zip(grads, grads_expected):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-5)


def test_inference_reuses_phase_kernels_until_the_weights_change():
    """Without autograd the phase kernels are cached on the conv; an in-place weight update refreshes them."""
    from morphreg.models.upsample_conv import conv_upsampled

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6 + 3, 4, 3, padding=1)
    low, skip = torch.randn(1, 6, 5, 7), torch.randn(1, 3, 10, 14)

    def reference():
        upsampled = torch.nn.functional.interpolate(low, scale_factor=2.0, mode="nearest")
        return conv(torch.cat([upsampled, skip], dim=1))

    with torch.inference_mode():
        torch.testing.assert_close(conv_upsampled(conv, low, skip), reference(), atol=1e-5, rtol=1e-5)
        first = conv._transposed_kernel_cache[1][0]
        conv_upsampled(conv, low, skip)
        assert conv._transposed_kernel_cache[1][0] is first  # reused
    with torch.no_grad():
        conv.weight.mul_(-2.0)  # an optimiser step or load_state_dict writes in place
    with torch.inference_mode():
        torch.testing.assert_close(conv_upsampled(conv, low, skip), reference(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_cached_kernels_keep_the_weight_layout(ndim):
    """A channels-last conv caches channels-last kernels (else every inference call converts them), contiguous too."""
    from morphreg.models.upsample_conv import channels_last, conv_upsampled

    torch.manual_seed(0)
    for layout in (channels_last(ndim), torch.contiguous_format):
        conv = getattr(torch.nn, f"Conv{ndim}d")(6 + 3, 4, 3, padding=1).to(memory_format=layout)
        low = torch.randn(1, 6, *[4] * ndim).contiguous(memory_format=layout)
        skip = torch.randn(1, 3, *[8] * ndim).contiguous(memory_format=layout)
        with torch.inference_mode():
            conv_upsampled(conv, low, skip)
        kernel, skip_weight = conv._transposed_kernel_cache[1]
        assert kernel.shape == (6, 4, *[4] * ndim) and skip_weight.shape == (4, 3, *[3] * ndim)
        assert kernel.is_contiguous(memory_format=layout) and skip_weight.is_contiguous(memory_format=layout)
