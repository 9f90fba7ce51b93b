"""Which memory layout, convolution implementation and decoder path the networks use, by shape and CPU.

The one place these choices are made; each rests on a measurement named here
(``python -m benchmarks.speed.bench_forward_load --write``, section "Choices", writes them to
``docs/results/forward_load.md``; CPU only, float32, batch 1).

* **Layout**: channels-last weights and activations (:func:`memory_format`). On the CPU measured
  (AVX-512, and the same CPU with oneDNN capped at AVX2), the whole VxmDense forward was
  1.75-2.1x faster channels-last than contiguous in 2D (64^2 to 256^2) and 1.55-1.9x in 3D (32^3
  to 96 x 112 x 128), never slower.
* **Convolution implementation** (:func:`convolve`, :class:`Conv2d`, :class:`Conv3d`). PyTorch
  sends a batch-1 3^n float32 convolution whose ``B * C * D1 * D2`` (the first four sizes) is at
  most 20480 to its generic im2col path instead of oneDNN. In 3D that rule catches every coarse
  U-Net level (32 channels at 12 x 14 x 16) and whole small volumes (16 channels at 32^3), where
  the generic path was 2.5-13x slower forward and 1.2-1.5x slower forward + backward. In 2D its
  forward was 1.2-1.8x slower at 15360 input elements (32 channels at 20 x 24), about as fast at
  7168 (0.96-1.24x) and faster at 3840 (0.7-0.9x), and its forward + backward about as fast
  (0.86-1.09x). So such 3D convolutions, and such 2D ones of more than :data:`GENERIC_2D_MAX`
  elements without autograd, call oneDNN directly (``torch.mkldnn_convolution``, the op PyTorch's
  own dispatch calls for larger inputs, with its autograd formula); PyTorch's choice stands
  everywhere else (other devices and dtypes, autocast, batches > 1, other kernels and strides,
  where oneDNN is unavailable or disabled).
* **Decoder path** (:func:`upsample_first`): a convolution after a nearest upsampling is computed
  at low resolution (:func:`morphreg.models.upsample_conv.conv_upsampled`) except at 2D levels
  whose skip input has at most :data:`SMALL_2D` elements: there upsampling first was faster at
  5 x 6 low-resolution voxels (1.15x) and about as fast at 10 x 12 (0.94-1.07x), while the
  low-resolution path was faster from 15 x 18 (1.1-1.2x) and in 3D from 6 x 7 x 8 (1.3-1.5x; a tie
  at 3 x 4 x 4). A whole 2D forward at 160 x 192 moves within noise either way.

The OpenMP wait policy, a process-wide choice made before torch is imported, is in
:mod:`morphreg._threads`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: PyTorch's bound (``B * C * D1 * D2``) at or below which a batch-1 3^n CPU convolution skips oneDNN.
TORCH_SMALL_CONV = 20480
#: 2D inputs with at most this many elements keep PyTorch's generic path (as fast or faster there).
GENERIC_2D_MAX = 8192
#: 2D decoder levels whose skip input has at most this many elements upsample first.
SMALL_2D = 16384


def channels_last(ndim: int) -> torch.memory_format:
    """The channels-last memory format for ``ndim`` spatial dimensions."""
    return torch.channels_last if ndim == 2 else torch.channels_last_3d


def memory_format(ndim: int) -> torch.memory_format:
    """The layout of the networks' weights and activations: channels-last (see the module docstring)."""
    return channels_last(ndim)


def _direct_onednn(x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, ...], dilation: tuple[int, ...],
                   groups: int) -> bool:
    """Whether ``convolve`` calls oneDNN itself where PyTorch would take its generic path (module docstring)."""
    ndim = x.dim() - 2
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if x.shape[0] != 1 or groups != 1 or any(s != 1 for s in stride) or any(d != 1 for d in dilation):
        return False
    if tuple(weight.shape[2:]) != (3,) * ndim or math.prod(x.shape[:4]) > TORCH_SMALL_CONV:
        return False  # PyTorch picks oneDNN itself (or another kernel size: not measured)
    if ndim == 2 and (x.numel() <= GENERIC_2D_MAX or (torch.is_grad_enabled() and (x.requires_grad or
                                                                                 weight.requires_grad))):
        return False  # 2D: tiny inputs, and training (forward + backward measured no faster)
    if torch.is_autocast_enabled("cpu") or not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    return True


def convolve(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int | tuple[int, ...],
             stride: int | tuple[int, ...] = 1, dilation: int | tuple[int, ...] = 1, groups: int = 1) -> torch.Tensor:
    """``F.conv{2,3}d(x, weight, bias, stride, padding, dilation, groups)``, on oneDNN where that was measured faster.

    Args:
        x: ``(B, C, *spatial)``.
        weight: ``(O, C / groups, *kernel)``.
        padding, stride, dilation: an int or one per spatial axis (zero padding).

    Returns:
        ``(B, O, *spatial_out)``, the same values as ``F.conv{n}d`` up to float rounding.
    """
    ndim = x.dim() - 2
    padding, stride, dilation = (_per_axis(v, ndim) for v in (padding, stride, dilation))
    if _direct_onednn(x, weight, stride, dilation, groups):
        return torch.mkldnn_convolution(x, weight, bias, padding, stride, dilation, groups)
    return getattr(F, f"conv{ndim}d")(x, weight, bias, stride, padding, dilation, groups)


def _per_axis(value: int | tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return (value,) * ndim if isinstance(value, int) else tuple(value)


class _Routed:
    """Mixin for ``nn.Conv2d``/``nn.Conv3d``: the convolution goes through :func:`convolve` (same parameters)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor,  # noqa: A002  (torch's name)
                      bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super()._conv_forward(input, weight, bias)  # type: ignore[misc]
        return convolve(input, weight, bias, self.padding, self.stride, self.dilation, self.groups)


class Conv2d(_Routed, nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state dict) whose convolution goes through :func:`convolve`."""


class Conv3d(_Routed, nn.Conv3d):
    """``nn.Conv3d`` (same parameters and state dict) whose convolution goes through :func:`convolve`."""


def conv_class(ndim: int) -> type[nn.Module]:
    """:class:`Conv2d` or :class:`Conv3d` for ``ndim`` spatial dimensions."""
    return {2: Conv2d, 3: Conv3d}[ndim]


def upsample_first(skip: torch.Tensor) -> bool:
    """Whether the decoder convolution after an upsampling, with skip input ``(B, S, *spatial)``, upsamples first.

    True for small 2D levels (see the module docstring).
    """
    return skip.dim() == 4 and skip.numel() <= SMALL_2D
