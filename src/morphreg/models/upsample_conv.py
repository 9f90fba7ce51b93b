"""A 3^n convolution of ``[nearest-upsampled low-resolution features, skip features]``, at low resolution.

The U-Net's decoder upsamples by 2 (nearest) and convolves the result, concatenated with a skip
connection, with a 3^n kernel. Along one axis, an output voxel at ``2i + a`` sees upsampled voxels
``2i + a - 1 .. 2i + a + 1``, i.e. low-resolution voxels ``i - 1, i`` (phase ``a = 0``, taps
``w0, w1 + w2``) or ``i, i + 1`` (``a = 1``, taps ``w0 + w1, w2``). So each of the 2^n output
phases is a 2^n-tap convolution of the low-resolution features: 8 taps per output voxel instead
of 27 in 3D (4 instead of 9 in 2D), with the same weights, exact up to float rounding. The skip
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


def _phase_weight(weight: torch.Tensor, phase: tuple[int, ...]) -> torch.Tensor:
    """``(O, I, 3, ..., 3)`` -> the ``(O, I, 2, ..., 2)`` kernel of output ``phase``."""
    taps = _TAPS.to(weight.device, weight.dtype)
    for a in phase:  # contracts the first spatial axis and appends its 2 taps last: the axes come back in order
        weight = torch.tensordot(weight, taps[a], dims=([2], [1]))
    return weight


def _interleaved(t: torch.Tensor, low_shape: torch.Size) -> torch.Tensor:
    """View of a channels-last ``(B, C, 2*L1, ..., 2*Ln)`` tensor as ``(B, L1, 2, ..., Ln, 2, C)`` (no copy)."""
    return t.movedim(1, -1).view(t.shape[0], *[x for n in low_shape for x in (n, 2)], t.shape[1])


def _phase_index(phase: tuple[int, ...]) -> tuple:
    return (slice(None),) + tuple(x for a in phase for x in (slice(None), a))


class _AddPhases(torch.autograd.Function):
    """``out[..., 2i + a, ...] += phases[a][..., i, ...]`` in place, for every phase (channels-last ``out``).

    The backward hands each phase a channels-last contiguous gradient: a strided slice makes the
    convolution's backward take its slow path (measured: the layer's backward gained nothing).
    """

    @staticmethod
    def forward(ctx, out: torch.Tensor, *phases: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        low_shape = phases[0].shape[2:]
        view = _interleaved(out, low_shape)
        for phase, values in zip(_phases(len(low_shape)), phases):
            view[_phase_index(phase)] += values.movedim(1, -1)
        ctx.mark_dirty(out)
        ctx.low_shape = low_shape
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        ndim = len(ctx.low_shape)
        grad = grad.contiguous(memory_format=channels_last(ndim))
        view = _interleaved(grad, ctx.low_shape)
        return (grad, *(view[_phase_index(phase)].movedim(-1, 1).contiguous(memory_format=channels_last(ndim))
                        for phase in _phases(ndim)))


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
    weight = conv.weight
    out = convolve(skip, weight[:, channels:], conv.bias, padding=1).contiguous(memory_format=channels_last(ndim))
    padded = F.pad(low, (1, 1) * ndim)
    with torch.autocast(device_type=weight.device.type, enabled=False):  # the tap sums in the weights' precision
        kernels = [_phase_weight(weight[:, :channels], phase) for phase in _phases(ndim)]
    phases = []
    for phase, kernel in zip(_phases(ndim), kernels):
        window = (slice(None), slice(None)) + tuple(slice(a, a + n + 1) for a, n in zip(phase, low.shape[2:]))
        phases.append(convolve(padded[window], kernel.to(out.dtype)))
    return _AddPhases.apply(out, *phases)
