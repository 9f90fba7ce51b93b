"""A 3^n convolution of ``[nearest-upsampled low-resolution features, skip features]``, at low resolution.

The U-Net's decoder upsamples by 2 (nearest) and convolves the result, concatenated with a skip
connection, with a 3^n kernel. Along one axis, an output voxel at ``2i + a`` sees upsampled voxels
``2i + a - 1 .. 2i + a + 1``, i.e. low-resolution voxels ``i - 1, i`` (phase ``a = 0``, taps
``w0, w1 + w2``) or ``i, i + 1`` (``a = 1``, taps ``w0 + w1, w2``). So each of the 2^n output
phases is a 2^n-tap convolution of the low-resolution features: 8 taps per output voxel instead
of 27 in 3D (4 instead of 9 in 2D), with the same weights, exact up to float rounding. All 2^n
phase kernels are stacked into one convolution over the padded low-resolution features (one op,
not 2^n: fewer small ops, which is what costs most at 2 threads on a loaded machine). The skip
channels are convolved at full resolution as before, and the phases are added into that output
in place (channels-last layout, where a phase is a strided view of it).

On the 3D VxmDense's first full-resolution layer (48 -> 32 channels at 96 x 112 x 128, one
thread) this took the layer from 1.46 s to 0.84 s forward, 8.5 s to 5.8 s forward + backward.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

#: ``_TAPS[a]``: the (2 low-resolution taps x 3 original taps) sums of one axis, for output phase ``a``.
_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


def channels_last(ndim: int) -> torch.memory_format:
    """The channels-last memory format for ``ndim`` spatial dimensions."""
    return torch.channels_last if ndim == 2 else torch.channels_last_3d


def _phases(ndim: int) -> list[tuple[int, ...]]:
    return list(itertools.product((0, 1), repeat=ndim))


#: ``einsum`` equations contracting each 3-tap axis with ``_TAPS``: ``(O, I, 3^n)`` -> ``(2, .., 2, O, I, 2^n)``.
_PHASE_EQUATIONS = {2: "oiKL,aXK,bYL->aboiXY", 3: "oiKLM,aXK,bYL,cZM->abcoiXYZ"}


def _phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """``(O, I, 3, ..., 3)`` -> ``(2^n * O, I, 2, ..., 2)``: the kernel of every output phase, stacked.

    Phase ``p`` (in :func:`_phases` order) owns output channels ``p*O .. (p+1)*O - 1``; one
    ``einsum`` builds them all (one op instead of ``n`` tensordots per phase).
    """
    ndim = weight.dim() - 2
    taps = _TAPS.to(weight.device, weight.dtype)
    kernels = torch.einsum(_PHASE_EQUATIONS[ndim], weight, *([taps] * ndim))
    return kernels.reshape(-1, *weight.shape[1:2], *([2] * ndim))


def _interleaved(t: torch.Tensor, low_shape: torch.Size) -> torch.Tensor:
    """View of a channels-last ``(B, C, 2*L1, ..., 2*Ln)`` tensor as ``(B, L1, 2, ..., Ln, 2, C)`` (no copy)."""
    return t.movedim(1, -1).view(t.shape[0], *[x for n in low_shape for x in (n, 2)], t.shape[1])


def _phase_view(stacked: torch.Tensor, channels: int) -> torch.Tensor:
    """Every phase of the channels-last stacked phase outputs as one strided view, shaped like :func:`_interleaved`.

    ``stacked``: ``(B, 2^n * C, L1 + 1, ..., Ln + 1)``, channels-last. Returns ``(B, L1, 2, ..., Ln, 2, C)``
    with ``[b, i1, a1, ..., in, an, c] = stacked[b, p(a) * C + c, i1 + a1, ..., in + an]``, ``p(a)``
    the phase's index in :func:`_phases` order: the offset is linear in every index, so no copy.
    """
    ndim = stacked.dim() - 2
    assert stacked.stride(1) == 1, "stacked phase outputs must be channels-last"
    low_shape = [n - 1 for n in stacked.shape[2:]]
    spatial_strides = stacked.stride()[2:]
    sizes, strides = [stacked.shape[0]], [stacked.stride(0)]
    for axis, (n, stride) in enumerate(zip(low_shape, spatial_strides)):
        sizes += [n, 2]
        strides += [stride, stride + 2 ** (ndim - 1 - axis) * channels]
    return stacked.as_strided(sizes + [channels], strides + [1])


class _AddPhases(torch.autograd.Function):
    """``out[..., 2i + a, ...] += stacked[phase a][..., i + a, ...]``, in place and in one op (channels-last ``out``).

    ``stacked`` is the one convolution of every phase kernel over the padded low-resolution
    features, ``(B, 2^n * O, L1 + 1, ..., Ln + 1)``, channels-last. The backward hands it a channels-last
    contiguous gradient: a strided one makes the convolution's backward take its slow path.
    """

    @staticmethod
    def forward(ctx, out: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        low_shape = torch.Size(n - 1 for n in stacked.shape[2:])
        _interleaved(out, low_shape).add_(_phase_view(stacked, out.shape[1]))
        ctx.mark_dirty(out)
        ctx.low_shape, ctx.stacked_shape = low_shape, stacked.shape
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        ndim = len(ctx.low_shape)
        grad = grad.contiguous(memory_format=channels_last(ndim))
        grad_stacked = grad.new_zeros(ctx.stacked_shape).contiguous(memory_format=channels_last(ndim))
        _phase_view(grad_stacked, grad.shape[1]).copy_(_interleaved(grad, ctx.low_shape))
        return grad, grad_stacked


def conv_upsampled(conv: nn.Module, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``conv(cat([nearest_upsample_x2(low), skip], dim=1))`` without upsampling ``low``.

    Args:
        conv: a ``Conv2d``/``Conv3d`` with kernel 3, stride 1, padding 1 and ``C + S`` input channels.
        low: ``(B, C, L1, ..., Ln)`` features to upsample.
        skip: ``(B, S, 2*L1, ..., 2*Ln)`` skip features.

    Returns:
        ``(B, O, 2*L1, ..., 2*Ln)``, channels-last.
    """
    ndim = low.dim() - 2
    channels = low.shape[1]
    convolve = getattr(F, f"conv{ndim}d")
    phase_kernels, skip_weight = _split_weights(conv, channels)
    out = convolve(skip, skip_weight, conv.bias, padding=1).contiguous(memory_format=channels_last(ndim))
    padded = F.pad(low, (1, 1) * ndim)
    stacked = convolve(padded, phase_kernels.to(out.dtype))
    return _AddPhases.apply(out, stacked.contiguous(memory_format=channels_last(ndim)))


def _split_weights(conv: nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(:func:`_phase_kernels` of ``conv.weight[:, :channels]``, ``conv.weight[:, channels:]`` contiguous).

    Without autograd (inference) both are kept on ``conv`` and reused while the weights are
    unchanged, keyed by the weight's storage and version counter (bumped by every in-place update:
    an optimiser step, ``load_state_dict``); slicing a channels-last weight copies it, so this saves
    two ops per layer as well as the kernel sums. With autograd they are rebuilt every call so that
    the gradient reaches ``conv.weight``.
    """
    weight = conv.weight
    if torch.is_grad_enabled() and weight.requires_grad:
        with torch.autocast(device_type=weight.device.type, enabled=False):  # the tap sums in the weights' precision
            return _phase_kernels(weight[:, :channels]), weight[:, channels:]
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, channels)
    cached = getattr(conv, "_phase_kernel_cache", None)
    if cached is None or cached[0] != key:
        with torch.no_grad(), torch.autocast(device_type=weight.device.type, enabled=False):
            skip_weight = weight[:, channels:].contiguous(memory_format=channels_last(weight.dim() - 2))
            cached = (key, (_phase_kernels(weight[:, :channels]), skip_weight))
        conv._phase_kernel_cache = cached
    return cached[1]
