"""Layout, convolution implementation and decoder path choices (models/dispatch.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from morphreg.models import dispatch


def _slow_path_ops(call) -> set[str]:
    from torch.profiler import profile

    with profile() as prof:
        call()
    return {e.name for e in prof.events() if "slow_conv" in e.name or "thnn" in e.name}


@pytest.mark.parametrize("shape", [(1, 32, 12, 14, 16), (1, 16, 16, 16, 16), (1, 32, 16, 18)])
def test_small_convolutions_call_onednn_with_the_same_values_and_gradients(shape):
    """Where PyTorch would take its generic im2col path (slower there), convolve calls oneDNN: same result.

    3D with and without autograd; 2D in inference only (its forward + backward was no faster).
    """
    torch.manual_seed(0)
    ndim = len(shape) - 2
    fmt = dispatch.channels_last(ndim)
    x = torch.randn(shape).contiguous(memory_format=fmt)
    w = torch.randn(8, shape[1], *[3] * ndim).contiguous(memory_format=fmt)
    b = torch.randn(8)
    conv = getattr(F, f"conv{ndim}d")
    with torch.inference_mode():
        assert _slow_path_ops(lambda: dispatch.convolve(x, w, b, padding=1)) == set()
        assert _slow_path_ops(lambda: conv(x, w, b, padding=1))  # what it replaces
        torch.testing.assert_close(dispatch.convolve(x, w, b, padding=1), conv(x, w, b, padding=1),
                                   atol=1e-4, rtol=1e-5)
    x, w, b = (t.clone().requires_grad_(True) for t in (x, w, b))
    routed = _slow_path_ops(lambda: dispatch.convolve(x, w, b, padding=1)) == set()
    assert routed == (ndim == 3)
    got, expected = dispatch.convolve(x, w, b, padding=1), conv(x, w, b, padding=1)
    target = torch.randn_like(expected)
    grads = torch.autograd.grad((got * target).sum(), [x, w, b])
    grads_expected = torch.autograd.grad((expected * target).sum(), [x, w, b])
    for g, e in zip(grads, grads_expected):
        torch.testing.assert_close(g, e, atol=1e-3, rtol=1e-4)


def test_pytorch_keeps_its_choice_elsewhere():
    """Tiny 2D inputs, batches > 1, float64, strides and autocast keep F.conv's own dispatch."""
    w3, w2 = torch.randn(4, 32, 3, 3, 3), torch.randn(4, 32, 3, 3)
    ones = (1, 1, 1)
    assert not dispatch._direct_onednn(torch.randn(1, 32, 10, 12), w2, (1, 1), (1, 1), 1)  # measured faster there
    assert not dispatch._direct_onednn(torch.randn(1, 32, 14, 16), w2, (1, 1), (1, 1), 1)  # as fast there
    assert not dispatch._direct_onednn(torch.randn(2, 32, 6, 7, 8), w3, ones, ones, 1)
    assert not dispatch._direct_onednn(torch.randn(1, 32, 6, 7, 8).double(), w3.double(), ones, ones, 1)
    assert not dispatch._direct_onednn(torch.randn(1, 32, 6, 7, 8), w3, (2, 2, 2), ones, 1)
    assert not dispatch._direct_onednn(torch.randn(1, 32, 96, 112, 128), w3, ones, ones, 1)  # PyTorch picks oneDNN
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not dispatch._direct_onednn(torch.randn(1, 32, 6, 7, 8), w3, ones, ones, 1)


def test_conv_modules_keep_the_state_dict_of_torch_convs():
    """Checkpoints written with nn.Conv3d load into dispatch.Conv3d and give the same output."""
    torch.manual_seed(0)
    plain = torch.nn.Conv3d(8, 4, 3, padding=1)
    routed = dispatch.Conv3d(8, 4, 3, padding=1)
    routed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 8, 6, 7, 8)
    torch.testing.assert_close(routed(x), plain(x), atol=1e-5, rtol=1e-5)
    assert isinstance(routed, torch.nn.Conv3d)


@pytest.mark.parametrize("shape", [(40, 48), (16, 16, 24)])
def test_unet_paths_agree_and_small_2d_levels_upsample_first(shape, monkeypatch):
    """The U-Net's automatic choice gives the paper's result; 2D's smallest levels upsample first, 3D's never."""
    from morphreg import VxmDense
    from morphreg.models import layers

    torch.manual_seed(0)
    model = VxmDense(len(shape)).eval()
    for p in model.parameters():  # non-trivial weights everywhere (the flow head starts near zero)
        torch.nn.init.normal_(p, std=0.1)
    calls = []
    real = layers.conv_upsampled
    monkeypatch.setattr(layers, "conv_upsampled", lambda conv, low, skip: calls.append(low.shape[2:]) or
                        real(conv, low, skip))
    m, f = torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)
    with torch.inference_mode():
        auto = model.predict_field(m, f)
        model.unet.upsample_at_low_resolution = False
        paper = model.predict_field(m, f)
    assert (auto - paper).abs().max() <= 1e-5 * paper.abs().max()  # float rounding through 8 layers
    levels = len(model.unet.encoder)
    if len(shape) == 2:
        assert 0 < len(calls) < levels  # the coarse levels upsampled first, the fine ones at low resolution
    else:
        assert len(calls) == levels
