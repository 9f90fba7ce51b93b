"""A 3^n convolution of ``[nearest-upsampled low-resolution features, skip features]``, at low resolution.

The U-Net's decoder upsamples by 2 (nearest) and convolves the result, concatenated with a skip
connection, with a 3^n kernel. Along one axis, an output voxel at ``2i + a`` sees upsampled voxels
``2i + a - 1 .. 2i + a + 1``, i.e. low-resolution voxels ``i - 1, i`` (phase ``a = 0``, taps
``w0, w1 + w2``) or ``i, i + 1`` (``a = 1``, taps ``w0 + w1, w2``): 2^n taps per output voxel
instead of 3^n, with the same weights, exact up to float rounding.

Those sums are one *transposed* convolution of the low-resolution features, stride 2, padding 1,
with a 4^n kernel: low voxel ``j`` reaches output ``o`` through tap ``k = o - 2j + 1``, so along
one axis taps ``k = 3, 2, 1, 0`` are the phase sums ``w0``, ``w0 + w1``, ``w1 + w2``, ``w2``
(:data:`_TAPS`). One library op writes every phase at its place in the full-resolution output, in
the layout of its input, and its backward is one convolution: no phase interleaving, padding,
strided add or zero-filled gradient buffer. An earlier version stacked the 2^n phase kernels
into one convolution and added its phases in through a strided view; on the VxmDense's first
full-resolution layer (48 -> 32 channels, one thread, process CPU time, loaded machine) the
transposed convolution took forward + backward from 1.57 s to 1.10 s in 3D (96 x 112 x 128) and
the forward from 3.9 ms to 2.8 ms in 2D (160 x 192); the whole network: ``docs/results/core.md``.
The skip channels are convolved at full resolution as before, and the transposed convolution's
output is added in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dispatch import channels_last, convolve

__all__ = ["channels_last", "conv_upsampled", "transposed_kernel"]

#: ``_TAPS[k]``: transposed-convolution tap ``k`` of one axis as a sum of the 3 original taps.
_TAPS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])

#: ``einsum`` equations contracting each 3-tap axis with ``_TAPS``: ``(O, C, 3^n)`` -> ``(C, O, 4^n)``.
_EQUATIONS = {2: "ocKL,XK,YL->coXY", 3: "ocKLM,XK,YL,ZM->coXYZ"}


def transposed_kernel(weight: torch.Tensor) -> torch.Tensor:
    """``(O, C, 3, ..., 3)`` -> ``(C, O, 4, ..., 4)``: the transposed-convolution kernel of the upsampled part.

    ``conv_transpose(low, transposed_kernel(w), stride=2, padding=1)`` equals
    ``conv(nearest_upsample_x2(low), w, padding=1)`` (no bias), up to float rounding.
    """
    ndim = weight.dim() - 2
    taps = _TAPS.to(weight.device, weight.dtype)
    return torch.einsum(_EQUATIONS[ndim], weight, *([taps] * ndim))


def conv_upsampled(conv: nn.Module, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``conv(cat([nearest_upsample_x2(low), skip], dim=1))`` without upsampling ``low``.

    Args:
        conv: a ``Conv2d``/``Conv3d`` with kernel 3, stride 1, padding 1 and ``C + S`` input channels.
        low: ``(B, C, L1, ..., Ln)`` features to upsample.
        skip: ``(B, S, 2*L1, ..., 2*Ln)`` skip features.

    Returns:
        ``(B, O, 2*L1, ..., 2*Ln)``, in the memory layout of the skip convolution's output.
    """
    ndim = low.dim() - 2
    kernel, skip_weight = _split_weights(conv, low.shape[1])
    out = convolve(skip, skip_weight, conv.bias, padding=1)
    return out.add_(getattr(F, f"conv_transpose{ndim}d")(low, kernel.to(out.dtype), stride=2, padding=1))


def _split_weights(conv: nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(:func:`transposed_kernel` of ``conv.weight[:, :channels]``, ``conv.weight[:, channels:]``).

    Without autograd (inference) both are kept on ``conv``, in the weight's memory layout (a
    convolution given a kernel in another layout than its input converts it on every call), and
    reused while the weights are unchanged, keyed by the weight's storage and version counter
    (bumped by every in-place update: an optimiser step, ``load_state_dict``). With autograd they
    are rebuilt every call so that the gradient reaches ``conv.weight``.
    """
    weight = conv.weight
    if torch.is_grad_enabled() and weight.requires_grad:
        with torch.autocast(device_type=weight.device.type, enabled=False):  # the tap sums in the weights' precision
            return transposed_kernel(weight[:, :channels]), weight[:, channels:]
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, channels)
    cached = getattr(conv, "_transposed_kernel_cache", None)
    if cached is None or cached[0] != key:
        layout = channels_last(weight.dim() - 2) if weight.is_contiguous(
            memory_format=channels_last(weight.dim() - 2)) and not weight.is_contiguous() else torch.contiguous_format
        with torch.no_grad(), torch.autocast(device_type=weight.device.type, enabled=False):
            cached = (key, (transposed_kernel(weight[:, :channels]).contiguous(memory_format=layout),
                            weight[:, channels:].contiguous(memory_format=layout)))
        conv._transposed_kernel_cache = cached
    return cached[1]
