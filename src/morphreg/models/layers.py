"""Building blocks shared by the networks (dimension-generic: ndim picks Conv2d/Conv3d)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import spatial
from .dispatch import channels_last, conv_class, upsample_first  # noqa: F401  (channels_last, conv_class: re-exported)
from .upsample_conv import conv_upsampled


class ConvBlock(nn.Sequential):
    """3^ndim convolution (stride 1 or 2), then LeakyReLU(0.2).

    The activation works in place on the convolution's fresh output: autograd keeps one tensor
    per block instead of two (-30 % memory kept for backward in a 3D training step, measured
    in ``benchmarks/bench_speed.py``).
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            conv_class(ndim)(in_channels, out_channels, 3, stride=stride, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        )


class UNet(nn.Module):
    """VoxelMorph's U-Net: conv + max-pool encoder, conv + nearest-upsample + skip decoder.

    With ``enc=(16,32,32,32)`` and ``dec=(32,32,32,32,32,16,16)`` this is the architecture of
    Balakrishnan et al. (2019): the first ``len(enc)`` decoder convs each upsample and concatenate
    the matching encoder output; the remaining ones run at full resolution.

    Input ``(B, in_channels, *spatial)`` with every spatial size divisible by ``2**len(enc)``;
    output ``(B, dec[-1], *spatial)``.
    """

    def __init__(
        self, ndim: int, in_channels: int, enc: Sequence[int], dec: Sequence[int]
    ) -> None:
        super().__init__()
        if len(dec) < len(enc):
            raise ValueError(
                f"UNet: 'dec' needs at least len(enc)={len(enc)} entries, got {len(dec)}"
            )
        self.levels = len(enc)
        self.encoder = nn.ModuleList()
        skip_channels = []
        prev = in_channels
        for nf in enc:
            self.encoder.append(ConvBlock(ndim, prev, nf))
            skip_channels.append(nf)
            prev = nf
        self.pool = getattr(nn, f"MaxPool{ndim}d")(2)
        self.decoder = nn.ModuleList()
        for level, nf in enumerate(dec[: len(enc)]):
            self.decoder.append(ConvBlock(ndim, prev, nf))
            prev = nf + skip_channels[-1 - level]
        self.remaining = nn.ModuleList()
        for nf in dec[len(enc) :]:
            self.remaining.append(ConvBlock(ndim, prev, nf))
            prev = nf
        self.out_channels = prev
        #: Compute each convolution after an upsampling at low resolution where that is faster (the
        #: default, :func:`morphreg.models.dispatch.upsample_first`; exact up to rounding). ``False``
        #: always upsamples then convolves, as the paper writes it (kept for benchmarks).
        self.upsample_at_low_resolution = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, lambda block, conv_out: block[1](conv_out))

    def run(self, x: torch.Tensor, finish: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The U-Net with ``finish(block, conv_output)`` after each block's convolution (activation, FiLM...).

        A convolution that follows an upsampling is computed at low resolution
        (:func:`~morphreg.models.upsample_conv.conv_upsampled`; the same weights and result) except
        where :func:`~morphreg.models.dispatch.upsample_first` says upsampling first is faster.
        """
        skips = []
        for block in self.encoder:
            x = finish(block, block[0](x))
            skips.append(x)
            x = self.pool(x)
        skip = None
        for block in [*self.decoder, *self.remaining]:
            if skip is None:
                conv_out = block[0](x)
            elif self.upsample_at_low_resolution and not upsample_first(skip):
                conv_out = conv_upsampled(block[0], x, skip)
            else:
                conv_out = block[0](torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], dim=1))
            x = finish(block, conv_out)
            skip = skips.pop() if skips else None
        if skip is not None:  # as many decoder as encoder convs: the output is [upsampled, skip]
            x = torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], dim=1)
        return x


class SpatialTransformer(nn.Module):
    """Module twin of :func:`morphreg.spatial.warp` (stores ``mode`` and ``padding``)."""

    def __init__(self, mode: str = "linear", padding: str = "border") -> None:
        super().__init__()
        self.mode = mode
        self.padding = padding

    def forward(self, image: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        return spatial.warp(image, disp, mode=self.mode, padding=self.padding)


class VecInt(nn.Module):
    """Module twin of :func:`morphreg.spatial.integrate` (scaling and squaring)."""

    def __init__(self, steps: int = 7) -> None:
        super().__init__()
        self.steps = steps

    def forward(self, velocity: torch.Tensor) -> torch.Tensor:
        return spatial.integrate(velocity, self.steps)


def max_levels(shape: Sequence[int]) -> int:
    """The most U-Net levels an input of spatial ``shape`` allows: ``L`` with ``2**L <= 2 * min(shape)``.

    A U-Net of ``L`` levels halves the image ``L`` times and so pads every axis to a multiple of
    ``2**L``; beyond this bound the smallest axis would more than double, its coarsest levels
    holding padding only, and the padded input grows as ``2**L`` per axis (20 levels: 10^6 voxels
    per axis, out of memory).
    """
    return (2 * max(min(int(n) for n in shape), 1)).bit_length() - 1


def check_levels(owner: str, levels: int, shape: Sequence[int], *, setting: bool = False) -> None:
    """Refuse a U-Net with more levels (``enc`` entries) than :func:`max_levels` allows for ``shape``.

    Args:
        owner: who asks (the message starts with it).
        levels: the U-Net's levels, ``len(enc)``.
        shape: the input's spatial shape.
        setting: ``enc`` is a setting still to choose (training: the message asks for fewer
            `` `enc` `` entries) rather than a trained network's config (the message asks for
            larger images).

    Raises:
        ValueError: naming ``enc``, its number of levels and the number the input allows.
    """
    allowed = max_levels(shape)
    if levels <= allowed:
        return
    shape = tuple(int(n) for n in shape)
    why = (f"each level halves the image, and the network pads every axis to a multiple of 2**{levels} = "
           f"{2 ** levels}")
    if setting:
        raise ValueError(f"{owner}: `enc` has {levels} levels, but an input of shape {shape} allows at most "
                         f"{allowed} ({why}); give at most {allowed} `enc` entries (and `dec` to match)")
    raise ValueError(f"{owner}: the network has {levels} levels (its config's enc), but an input of shape {shape} "
                     f"allows at most {allowed} ({why}); it needs images of at least {2 ** (levels - 1)} voxels "
                     "along every axis")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, list[int]]:
    """Zero-pad the spatial dims of ``(B, C, *spatial)`` at the end up to a multiple.

    Returns:
        The padded tensor and the original spatial shape (to crop back with :func:`crop_to`).
    """
    shape = list(x.shape[2:])
    pad: list[int] = []
    for s in reversed(shape):
        pad += [0, (-s) % multiple]
    if any(pad):
        x = F.pad(x, pad)
    return x, shape


def crop_to(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Crop the spatial dims of ``(B, C, *spatial)`` to ``shape`` (from the start)."""
    return x[(slice(None), slice(None), *[slice(0, s) for s in shape])]
