"""VxmDense: the VoxelMorph registration network (displacement or diffeomorphic, 2D or 3D)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from .. import spatial
from .._checks import check_choice, check_pair, check_positive_int
from .checkpoint import SavableModel
from .dispatch import memory_format
from .layers import UNet, check_levels, conv_class, crop_to, pad_to_multiple

#: Arithmetic of the U-Net at inference (:meth:`VxmDense.set_precision`).
PRECISIONS = ("float32", "bf16")


class RegistrationOutput(NamedTuple):
    """What a registration network returns (the same fields whatever its flags).

    Attributes:
        moved: ``(B, C, *spatial)`` moving image warped to the fixed one.
        disp: ``(B, ndim, *spatial)`` full-resolution displacement in voxels;
            ``spatial.warp(moving, disp)`` gives ``moved``.
        velocity: ``(B, ndim, *s)`` the stationary velocity field (at ``1/int_downsize``
            resolution) for diffeomorphic models, else ``None``.
        inverse_disp: ``(B, ndim, *spatial)`` displacement of the inverse transform
            (diffeomorphic models only, else ``None``).
        moved_fixed: ``(B, C, *spatial)`` fixed image warped to the moving one by
            ``inverse_disp`` when ``bidir=True``, else ``None``.
        matrix: ``(B, ndim, ndim + 1)`` voxel affine (fixed voxel -> moving voxel) for affine
            models, else ``None``.
        stage_disps: the ``(B, ndim, *spatial)`` displacement of each stage of a cascade, first
            stage first (their composition is ``disp``), else ``None``.
        velocity_stats: ``(mean, log_variance)`` of the velocity posterior, each
            ``(B, ndim, *spatial)`` in voxels (log of voxels²), for probabilistic models, else ``None``.
    """

    moved: torch.Tensor
    disp: torch.Tensor
    velocity: torch.Tensor | None
    inverse_disp: torch.Tensor | None
    moved_fixed: torch.Tensor | None
    matrix: torch.Tensor | None = None
    stage_disps: tuple[torch.Tensor, ...] | None = None
    velocity_stats: tuple[torch.Tensor, torch.Tensor] | None = None


class VxmDense(SavableModel):
    """VoxelMorph ``g(m, f)``: a U-Net on the concatenated pair predicting a dense field.

    Args:
        ndim: 2 or 3 spatial dimensions.
        enc, dec: U-Net encoder and decoder widths (the paper's defaults).
        int_steps: 0 predicts a displacement; > 0 predicts a stationary velocity integrated
            by scaling and squaring with this many steps (the diffeomorphic variant), at most
            :data:`morphreg.spatial.MAX_INT_STEPS` (20).
        int_downsize: integrate at ``1/int_downsize`` resolution (1 or 2), then upsample.
        bidir: also warp the fixed image to the moving one (diffeomorphic models).
        in_channels: channels of each input image (1 for grey-level MRI).

    Any input size works: the pair is zero-padded to a multiple of ``2**len(enc)`` and the
    field cropped back. ``forward(moving, fixed)`` returns a :class:`RegistrationOutput`.
    """

    def __init__(
        self,
        ndim: int,
        enc: Sequence[int] = (16, 32, 32, 32),
        dec: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
        int_steps: int = 0,
        int_downsize: int = 1,
        bidir: bool = False,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        fn = "VxmDense"
        check_choice(fn, "ndim", ndim, (2, 3))
        check_positive_int(fn, "int_steps", int_steps, minimum=0, maximum=spatial.MAX_INT_STEPS)
        check_choice(fn, "int_downsize", int_downsize, (1, 2, 4))
        check_positive_int(fn, "in_channels", in_channels)
        if bidir and int_steps == 0:
            raise ValueError(
                f"{fn}: bidir=True needs a diffeomorphic model (int_steps > 0) to invert the field"
            )
        self._store_config(
            ndim=ndim,
            enc=tuple(enc),
            dec=tuple(dec),
            int_steps=int_steps,
            int_downsize=int_downsize,
            bidir=bidir,
            in_channels=in_channels,
        )
        self.ndim = ndim
        self.int_steps = int_steps
        self.int_downsize = int_downsize
        self.bidir = bidir
        self.in_channels = in_channels
        self.multiple = 2 ** len(enc)
        self.unet = UNet(ndim, 2 * in_channels, enc, dec)
        self.flow = conv_class(ndim)(self.unet.out_channels, ndim, 3, padding=1)
        if not self.flow.weight.is_meta:  # a meta skeleton (checkpoint checks) holds no values to draw
            nn.init.normal_(self.flow.weight, mean=0.0, std=1e-5)
        nn.init.zeros_(self.flow.bias)
        # the layout of weights and activations: chosen in morphreg.models.dispatch (channels-last)
        self.memory_format = memory_format(ndim)
        self.unet.to(memory_format=self.memory_format)
        self.flow.to(memory_format=self.memory_format)
        #: ``"float32"`` or ``"bf16"``: the U-Net's arithmetic (see :meth:`set_precision`)
        self.precision = "float32"

    def _check_inputs(self, moving: torch.Tensor, fixed: torch.Tensor) -> None:
        fn = "VxmDense.forward"
        ndim = check_pair(fn, moving, fixed, match="shape", channels=self.in_channels)
        if ndim != self.ndim:
            raise ValueError(
                f"{fn}: this model is {self.ndim}D but 'moving' has {ndim} spatial dims "
                f"(shape {tuple(moving.shape)})"
            )

    def predict_field(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Raw network output: displacement or velocity ``(B, ndim, *padded)`` on the padded grid."""
        if hasattr(self.unet, "levels"):  # a VoxelMorph U-Net (TransMorph's Swin network pads by its patches)
            check_levels(type(self).__name__, self.unet.levels, moving.shape[2:])
        pair, _ = pad_to_multiple(torch.cat([moving, fixed], dim=1), self.multiple)
        field = self.flow(self.unet(pair.contiguous(memory_format=self.memory_format)))
        return field.contiguous()

    def set_precision(self, precision: str) -> None:
        """``"bf16"`` runs the U-Net under bfloat16 autocast (the field it predicts is cast back to
        float32 before integration and warping, which stay float32); ``"float32"`` (default) does not.

        A run-time setting, not saved with the model. Worth it where the hardware has bf16
        arithmetic (CUDA GPUs, CPUs with AVX512-BF16/AMX); elsewhere it is emulated and slower.
        """
        check_choice(f"{type(self).__name__}.set_precision", "precision", precision, PRECISIONS)
        self.precision = precision

    def _field(self, moving: torch.Tensor, fixed: torch.Tensor, *condition: Any) -> torch.Tensor:
        """:meth:`predict_field` in the model's :attr:`precision`, returned as float32 or as the inputs."""
        if self.precision == "float32":
            return self.predict_field(moving, fixed, *condition)
        with torch.autocast(device_type=moving.device.type, dtype=torch.bfloat16):
            field = self.predict_field(moving, fixed, *condition)
        return field.to(moving.dtype)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        """Register ``moving`` to ``fixed``.

        Args:
            moving, fixed: ``(B, in_channels, *spatial)``, same shape.

        Returns:
            :class:`RegistrationOutput`.
        """
        self._check_inputs(moving, fixed)
        return self._output(moving, fixed, self._field(moving, fixed))

    def _output(self, moving: torch.Tensor, fixed: torch.Tensor, field: torch.Tensor) -> RegistrationOutput:
        """Integrate (diffeomorphic), crop and warp the raw network ``field`` on the padded grid."""
        shape = list(moving.shape[2:])
        padded = list(field.shape[2:])
        velocity = inverse_disp = moved_fixed = None
        if self.int_steps > 0:
            velocity = field
            if self.int_downsize > 1:
                velocity = spatial.resize(field, scale_factor=1.0 / self.int_downsize)
            disp = self._exp(velocity, padded)
            if self.bidir:
                inverse_disp = crop_to(self._exp(-velocity, padded), shape)
        else:
            disp = field
        disp = crop_to(disp, shape)
        moved = spatial.warp(moving, disp)
        if self.bidir and inverse_disp is not None:
            moved_fixed = spatial.warp(fixed, inverse_disp)
        return RegistrationOutput(moved, disp, velocity, inverse_disp, moved_fixed)

    def _exp(self, velocity: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        disp = spatial.integrate(velocity, self.int_steps)
        return spatial.resize(disp, size=size)
